"""What the ``autofhe`` commands share: the parser classes, the common options, reading a
study from ``--storage`` / ``--study``, printing tables and records, and the advice printed
when a study has no feasible model.

Imports nothing heavy at module level: commands that do not train must run without torch.
"""

from __future__ import annotations

import argparse
import sys

from autofhe.errors import ParameterError

ONE_STUDY = "study name (default: the database's only study)"


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it is None / False or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Every parser (the command's and each subcommand's) takes ``--debug``: it may stand
    anywhere on the line, as the errors that suggest it assume."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,  # a subcommand's leaves the command's value alone
            help="show tracebacks on errors",
        )


def storage_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        default=None,
        help="SQLAlchemy URL (default: $AUTOFHE_STORAGE, else sqlite:///autofhe.db)",
    )


def format_arg(parser: argparse.ArgumentParser, machine: str) -> None:
    parser.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help=f"output; {machine}"
    )


def say(line: str) -> None:
    print(line, flush=True)


def quote(text: str) -> str:
    """``text`` as a shell word (study names and URLs are printed inside commands)."""
    import shlex

    return shlex.quote(text)


def check_seed(seed: int) -> int:
    if not 0 <= seed < 2**32:
        raise ParameterError(f"--seed {seed}: pass an integer from 0 to {2**32 - 1}.")
    return seed


def storage_url(args) -> str:
    from autofhe.search.store.locate import resolve_storage

    return resolve_storage(args.storage)


def load_study(args, autofhe_only: bool = True):
    """The study of ``--study`` (or the database's only one), read without creating anything;
    sets ``args.study``. ``autofhe_only``: a study autofhe did not make is refused."""
    from autofhe.search.store.locate import check_study_name
    from autofhe.search.store.locate import load_study as load

    study = load(storage_url(args), check_study_name(args.study), autofhe_only)
    args.study = study.study_name
    return study


def study_spec(url: str, name: str) -> dict:
    """The settings autofhe registered with study ``name`` ({} for a study it did not make)."""
    from autofhe.search.store.tables import ParetoStore

    return ParetoStore(url).study_spec(name) or {}


def print_table(rows: list[dict], out=None) -> None:
    out = out or sys.stdout
    if not rows:
        print("(no feasible trial yet)", file=out)
        return
    cols = list(rows[0])
    cells = [[("-" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), file=out)


def emit(records: list[dict], fmt: str, table=None) -> None:
    """``records`` on stdout as JSON, CSV (a header and a row each) or a table for people
    (``table``: records -> the rows to show)."""
    if fmt == "json":
        import json

        print(json.dumps(records, indent=2))
    elif fmt == "csv":
        import csv

        if records:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(records[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)
    else:
        print_table(table(records) if table else records)


def advice(study, spec: dict, argv: list[str] | None = None) -> list[str]:
    """Why a study has no feasible model, and what to do: ``argv`` (the search's command line)
    comes back with the limit relaxed; without it, the option to resume with. ``spec``: the
    study's settings (:func:`study_spec`)."""
    from autofhe.search.plan.spec import Spec
    from autofhe.search.price.feasibility import price_cap
    from autofhe.search.report import no_front_advice

    max_latency = price_cap(spec.get("max_latency"))
    max_key_size = spec.get("max_key_size", Spec().max_key_size)
    trials = study.get_trials(deepcopy=False)
    sentence, option, value = no_front_advice(trials, max_latency, max_key_size)
    if option is None:
        return [sentence]
    if argv is None:
        return [sentence, f"relax it: resume the search with {option} {value}"]
    return [sentence, f"relax it: {with_option(argv, option, value, study.study_name)}"]


def with_option(argv: list[str], option: str, value: str, name: str) -> str:
    """The command line ``argv`` (of ``autofhe``) with ``option`` set to ``value`` and the
    study named (so it resumes the same study)."""
    import shlex

    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == option:
            skip = True
        elif not word.startswith(option + "="):
            out.append(word)
    out += [option, value]
    if not any(w == "--study" or w.startswith("--study=") for w in argv):
        out += ["--study", name]
    return shlex.join(["autofhe", *out])
