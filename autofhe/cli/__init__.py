"""The ``autofhe`` command. Thin: parse arguments, call the library, print (the deployment
commands live in :mod:`autofhe.cli.deploy`).

Errors become one line on stderr and a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from autofhe.cli import deploy
from autofhe.errors import AutofheError, Interrupted, ParameterError, on_stop_signals
from autofhe.machine import available_cores

BUILTIN_SETS = ("breast_cancer", "wine", "digits", "iris")
#: trials of `autofhe demo` (and `make demo`)
DEMO_TRIALS = 8
#: what --metric accepts: autofhe.search.trial.rows.METRICS, listed here so that `--help` needs
#: no torch import (a test keeps the two equal)
METRIC_NAMES = (
    "accuracy",
    "balanced_accuracy",
    "f1",
    "roc_auc",
    "r2",
    "neg_mean_squared_error",
    "neg_mean_absolute_error",
)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it is None / False or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every parser (the command's and each subcommand's) takes ``--debug``: it may stand
    anywhere on the line, as the errors that suggest it assume."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,  # a subcommand's leaves the command's value alone
            help="show tracebacks on errors",
        )


def _cmd_demo(args: argparse.Namespace) -> int:
    """``autofhe search`` on a bundled dataset with the default search space (no spec), then
    the commands that take its front model to deployment."""
    search = ["search", "--data", f"sklearn:{args.dataset}", "--trials", str(args.trials)]
    search += ["--seed", str(args.seed)] + (["--storage", args.storage] if args.storage else [])
    print(f"demo: autofhe {' '.join(search)}", flush=True)
    parsed = build_parser().parse_args(search)
    parsed.argv = search  # the search's own command line (what its advice repeats)
    code = _cmd_search(parsed)
    if code == 0:
        url = _storage_url(args)
        X = f"d.load_{args.dataset}(return_X_y=True)[0][:5]"
        print(
            'rows:     python -c "import numpy, sklearn.datasets as d; '
            f"numpy.save('rows.npy', {X})\"   # features only\n"
            "predict:  autofhe predict --model model/ --data rows.npy --fhe execute\n"
            f"(running `autofhe demo` again adds {args.trials} trials to the same study in {url})"
        )
    return code


# -- search -----------------------------------------------------------------------------------


def _front_rows(study, front) -> list[dict]:
    from autofhe.search.report import display_rows, front_records

    return display_rows(front_records(study, front))


def _print_table(rows: list[dict], out=None) -> None:
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


def _remeasure(url: str, name: str) -> int:
    """Front models measured beside other processes, measured again if the machine is quiet
    now: how many (a bonus: a failure is a warning, the search's figures stand)."""
    from autofhe.search.front.remeasure import remeasure_front

    try:
        return remeasure_front(url, name, say=_say)
    except Interrupted:
        raise
    except Exception as exc:  # a missing artifact, the FHE runtime: the figures stand
        first = (str(exc).splitlines() or [""])[0]
        print(f"autofhe: warning: front models not measured again: {first}", file=sys.stderr)
        return 0


def _study_spec(url: str, name: str) -> dict:
    """The settings autofhe registered with study ``name`` ({} for a study it did not make)."""
    from autofhe.search.store.tables import ParetoStore

    return (ParetoStore(url).study_info(name) or {}).get("spec", {})


def _advice(study, spec: dict, argv: list[str] | None = None) -> list[str]:
    """Why a study has no feasible model, and what to do: ``argv`` (the search's command line)
    comes back with the limit relaxed; without it, the option to resume with. ``spec``: the
    study's settings (:func:`_study_spec`)."""
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
    return [sentence, f"relax it: {_with_option(argv, option, value, study.study_name)}"]


def _with_option(argv: list[str], option: str, value: str, name: str) -> str:
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


def _cmd_search(args: argparse.Namespace) -> int:
    from autofhe.data import load_dataset
    from autofhe.fhe.latency import load_cost_model
    from autofhe.search.front.pareto import pareto_front
    from autofhe.search.plan.spec import check_folds, load_spec
    from autofhe.search.record import TrialRecord
    from autofhe.search.run.study import (
        check_search_inputs,
        open_study,
        resolve_storage,
    )
    from autofhe.search.store.locate import check_study_name, check_writable
    from autofhe.units import parse_duration, parse_size

    # Everything the user gave is checked before the database is touched.
    url = resolve_storage(args.storage)
    check_writable(url)
    spec = load_spec(args.spec)
    if args.metric:
        spec.metric = args.metric
    if args.max_latency is not None:
        spec.max_latency = parse_duration(args.max_latency)
        spec.given.add("max_latency")
    if args.max_key_size is not None:
        spec.max_key_size = parse_size(args.max_key_size)
        spec.given.add("max_key_size")
    if args.folds is not None:
        spec.folds = check_folds(args.folds)
    timeout = parse_duration(args.timeout) if args.timeout else None
    if args.trials is not None and args.trials < 1:
        raise ParameterError(f"--trials {args.trials}: pass a positive number of trials.")
    cores = available_cores()
    most = 4 * cores
    if args.workers is None:
        args.workers = cores
    if not 1 <= args.workers <= most:
        raise ParameterError(
            f"--workers {args.workers}: pass 1 to {most} (4 per core; each trains on one)."
        )
    _check_seed(args.seed)
    check_study_name(args.study)
    trials = args.trials if (args.trials or timeout) else 20
    ds = load_dataset(args.data, labels=args.labels, label_column=args.label_column, task=args.task)
    if ds.labels_source:
        print(f"labels: {ds.labels_source} (next to the data; pass --labels to choose)")
    print(f"data: {ds.source}: {ds.X.shape[0]} rows, {ds.X.shape[1]} features, {ds.task}")
    check_search_inputs(ds, spec, args.seed)
    cost_model = load_cost_model(calibrate_if_missing=False)
    if cost_model is None:
        print("cost model: calibrating it on this machine (first run here, about two minutes)")
        cost_model = load_cost_model()
    study, _, name = open_study(ds, spec, url, args.study, args.seed, say=_say, checked=True)
    at_start = study.get_trials(deepcopy=False)
    before = sum(t.state.is_finished() for t in at_start)
    queued = {t.number for t in at_start if t.state.name == "WAITING"}  # run by this search
    print(
        f"study {name!r} on {url}: {before} trials so far; running "
        f"{trials if trials else 'until the timeout'} more"
        + (f" with {args.workers} workers" if args.workers > 1 else "")
        + "; Ctrl-C stops (the running trials are queued again)"
    )
    outcome = _run(url, name, args.workers, trials, timeout, args.seed, cost_model, study)
    if outcome.stopped_by is None and _remeasure(url, name):
        import optuna

        study = optuna.load_study(study_name=name, storage=url)  # trials read afresh
    print(f"\nPareto front of {name!r} ({len(study.trials)} trials):")
    front = pareto_front(study.get_trials(deepcopy=False))
    _print_table(_front_rows(study, front))
    if not front:
        print("\n".join(_advice(study, _study_spec(url, name), args.argv)))
    print(f"\ninspect:  autofhe dashboard --storage {_quote(url)}")
    if front:
        print(
            f"export:   autofhe export --study {_quote(name)} --storage {_quote(url)} "
            "--pick knee --out model/"
        )
    new = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number >= len(at_start) or t.number in queued
    ]
    if outcome.stopped_by is None and new and all(t.state.name == "FAIL" for t in new):
        error = TrialRecord.of(new[-1]).error or "see the messages above"
        print(
            f"autofhe: error: all {len(new)} trials of this run failed (last: {error}); "
            "fix the spec or the data and rerun.",
            file=sys.stderr,
        )
        return 1
    return _ended(outcome, "resume with the same command", front=True)


def _say(line: str) -> None:
    print(line, flush=True)


def _check_seed(seed: int) -> int:
    if not 0 <= seed < 2**32:
        raise ParameterError(f"--seed {seed}: pass an integer from 0 to {2**32 - 1}.")
    return seed


def _quote(text: str) -> str:
    """``text`` as a shell word (study names and URLs are printed inside commands)."""
    import shlex

    return shlex.quote(text)


def _run(url, name, workers, trials, timeout, seed, cost_model, study):
    """The study's workers, each a child process the CLI supervises (search/run/workers.py), with a
    progress line when a trial starts, every 30 s while it runs and when it ends."""
    from autofhe.search.report import ProgressReport
    from autofhe.search.run.workers import run_workers

    report = ProgressReport(study, trials)
    return run_workers(
        url, name, workers, trials, timeout, seed, cost_model, progress=report, isolate=True
    )


def _ended(outcome, resume: str, front: bool = False) -> int:
    """The exit code of a search or worker run, and a line on stderr when it did not end well."""
    failures = outcome.failures()
    if outcome.stopped_by is not None:
        how = (
            "aborted: its trials are ended by the workers' helpers"
            if outcome.aborted
            else ("stopped: the running trials ended as interrupted and were queued again")
        )
        print(f"autofhe: {how}; {resume}.", file=sys.stderr)
        return outcome.exit_code
    if failures:
        print(
            f"autofhe: error: {len(failures)} of {len(outcome.codes)} workers failed "
            f"({'; '.join(failures)}); "
            + ("the front above is partial; " if front else "")
            + f"{resume}.",
            file=sys.stderr,
        )
    return outcome.exit_code


def _cmd_pareto(args: argparse.Namespace) -> int:
    from autofhe.search.front.pareto import pareto_front
    from autofhe.search.report import display_rows, front_records, latency_warnings, plot_front

    study = _load_study(args)
    spec = _study_spec(_storage_url(args), study.study_name)
    max_latency = spec.get("max_latency")
    front = pareto_front(study.get_trials(deepcopy=False))
    advice = [] if front else _advice(study, spec)
    if args.plot:
        plot_front(study, front, args.plot, max_latency, "\n".join(advice))
    records = front_records(study, front, max_latency)
    _emit(records, args.format, display_rows)
    if advice and args.format == "table":
        print("\n".join(advice))
    for message in latency_warnings(records):
        print(f"autofhe: warning: {message}", file=sys.stderr)
    if args.plot:
        print(f"front plot written to {args.plot}", file=sys.stderr)
    return 0


def _cmd_trials(args: argparse.Namespace) -> int:
    from autofhe.search.report import trial_records, trial_rows

    study = _load_study(args, autofhe_only=False)  # any Optuna study lists its trials
    records = trial_records(study)
    if not records and args.format == "table":
        print(f"no trials in study {study.study_name!r} yet")
        return 0
    _emit(records, args.format, trial_rows)
    return 0


def _emit(records: list[dict], fmt: str, table=None) -> None:
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
        _print_table(table(records) if table else records)


def _storage_url(args) -> str:
    from autofhe.search.store.locate import resolve_storage

    return resolve_storage(args.storage)


def _load_study(args, autofhe_only: bool = True):
    """The study of ``--study`` (or the database's only one), read without creating anything;
    sets ``args.study``. ``autofhe_only``: a study autofhe did not make is refused."""
    from autofhe.search.store.locate import check_study_name, load_study

    study = load_study(_storage_url(args), check_study_name(args.study), autofhe_only)
    args.study = study.study_name
    return study


def _cmd_studies(args: argparse.Namespace) -> int:
    from autofhe.search.store.locate import has_tables, open_storage, require_database_file
    from autofhe.search.store.summary import sqlite_summaries

    url = _storage_url(args)
    require_database_file(url)
    rows = sqlite_summaries(url)  # an SQLite file: read without Optuna (a tenth of the time)
    if rows is None and not has_tables(url):  # an empty or foreign database: none, none made
        rows = []
    elif rows is None:
        import optuna

        from autofhe.search.store.summary import optuna_summaries

        if not args.debug:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        rows = optuna_summaries(open_storage(url))
    if not rows and args.format == "table":
        print(f"no studies in {url}")
    else:
        _emit(rows, args.format)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from autofhe.fhe.latency import load_cost_model
    from autofhe.search.store.locate import check_writable

    url = _storage_url(args)
    _check_seed(args.seed)
    check_writable(url)
    study = _load_study(args)
    timeout = None
    if args.timeout:
        from autofhe.units import parse_duration

        timeout = parse_duration(args.timeout)
    if args.trials is not None and args.trials < 1:
        raise ParameterError(f"--trials {args.trials}: pass a positive number of trials.")
    print(f"worker on study {args.study!r} ({url}); Ctrl-C stops (its trial is queued again)")
    outcome = _run(url, args.study, 1, args.trials, timeout, args.seed, load_cost_model(), study)
    return _ended(outcome, "start the worker again to go on")


def _stop_at_once() -> None:
    """Ctrl-C and SIGTERM end this process at once, with the usual line and exit code.

    The dashboard's server (wsgiref) catches every exception of a request it is answering,
    the Interrupted of a stop signal too, logs it and serves on: a stop that lands during a
    request was lost. The server holds nothing to clean up (SQLite rolls back an unfinished
    write), so the signal ends the process itself.
    """
    import signal

    def stop(signum, _frame) -> None:
        print("autofhe: interrupted", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from autofhe.fhe.listen import bind
    from autofhe.search.price.feasibility import patch_dashboard
    from autofhe.search.store.locate import artifact_store, open_storage

    url = _storage_url(args)
    patch_dashboard()  # "best" = the feasible front, as in `autofhe pareto`
    storage = open_storage(url)  # nothing is written at start, no table is created
    bind(args.host, args.port).close()  # a busy port or a bad host: one line, before the banner
    print(f"optuna-dashboard on http://{args.host}:{args.port} (storage {url}); Ctrl-C stops it")
    _stop_at_once()
    run_server(
        storage,
        host=args.host,
        port=args.port,
        artifact_store=artifact_store(url),
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from autofhe import __version__

    parser = _Parser(
        prog="autofhe",
        description="AutoML for neural networks that run on encrypted data (TFHE).",
    )
    parser.add_argument("--version", action="version", version=f"autofhe {__version__}")
    parser.set_defaults(debug=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def storage_arg(p):
        p.add_argument(
            "--storage",
            default=None,
            help="SQLAlchemy URL (default: $AUTOFHE_STORAGE, else sqlite:///autofhe.db)",
        )

    def format_arg(p, machine: str):
        p.add_argument(
            "--format", choices=("table", "json", "csv"), default="table", help=f"output; {machine}"
        )

    demo = sub.add_parser(
        "demo",
        help="a short search on a bundled dataset (default space, no spec): prints the front "
        "and the commands to export and run its model",
    )
    demo.add_argument("--dataset", choices=BUILTIN_SETS, default="breast_cancer", help="dataset")
    demo.add_argument("--trials", type=int, default=DEMO_TRIALS, help="trials to run")
    storage_arg(demo)
    demo.add_argument("--seed", type=int, default=0, help="split and sampler seed")
    demo.set_defaults(func=_cmd_demo)

    search = sub.add_parser("search", help="search the accuracy / FHE latency trade-off")
    search.add_argument(
        "--data", required=True, help="X.npy (+ --labels), data.npz, data.csv, or sklearn:NAME"
    )
    search.add_argument("--labels", default=None, help="labels .npy (default: y.npy next to X)")
    search.add_argument("--label-column", default=None, help="label column of a .csv")
    search.add_argument(
        "--task",
        choices=("classification", "regression"),
        default=None,
        help="default: inferred from the labels (integer-valued with few distinct values: "
        "classification)",
    )
    search.add_argument("--trials", type=int, default=None, help="trials to run (default 20)")
    search.add_argument("--timeout", default=None, help="stop after this long, e.g. 30m")
    storage_arg(search)
    search.add_argument("--study", default=None, help="study name (default: from the data)")
    search.add_argument("--spec", default=None, help="study spec (TOML), e.g. studies/wine.toml")
    search.add_argument(
        "--metric",
        default=None,
        metavar="NAME",
        help=f"objective to maximise, one of: {', '.join(METRIC_NAMES)} (default: the spec's, "
        "else accuracy for classification and r2 for regression)",
    )
    search.add_argument("--max-latency", default=None, help="seconds per sample (constraint)")
    search.add_argument(
        "--max-key-size",
        default=None,
        metavar="SIZE",
        help="evaluation keys a client uploads (compressed), e.g. 200MB (constraint; default 4GB)",
    )
    search.add_argument(
        "--folds",
        type=int,
        default=None,
        help="cross-validate the metric over k folds (default: 3 under 1,500 rows, else 1)",
    )
    search.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: one per core this process may use; 1 opts out)",
    )
    search.add_argument("--seed", type=int, default=0, help="split and sampler seed")
    search.set_defaults(func=_cmd_search)

    one_study = "study name (default: the database's only study)"
    pareto = sub.add_parser("pareto", help="print a study's Pareto front")
    pareto.add_argument("--study", default=None, help=one_study)
    storage_arg(pareto)
    format_arg(pareto, "json and csv use stable machine keys (trial, metric, value, ...)")
    pareto.add_argument("--plot", default=None, metavar="FILE.png", help="also draw the front")
    pareto.set_defaults(func=_cmd_pareto)

    trials = sub.add_parser("trials", help="every trial: state, values, epochs trained, reason")
    trials.add_argument("--study", default=None, help=one_study)
    storage_arg(trials)
    format_arg(trials, "json and csv: one record per trial, stable machine keys")
    trials.set_defaults(func=_cmd_trials)

    studies = sub.add_parser("studies", help="list the studies of a storage")
    storage_arg(studies)
    format_arg(studies, "json and csv: one record per study")
    studies.set_defaults(func=_cmd_studies)

    worker = sub.add_parser("worker", help="join an existing study from another process")
    worker.add_argument("--study", default=None, help=one_study)
    storage_arg(worker)
    worker.add_argument("--trials", type=int, default=None, help="default: until stopped")
    worker.add_argument("--timeout", default=None, help="stop after this long, e.g. 30m")
    worker.add_argument("--seed", type=int, default=1, help="sampler seed")
    worker.set_defaults(func=_cmd_worker)

    dash = sub.add_parser("dashboard", help="serve optuna-dashboard on the study database")
    storage_arg(dash)
    dash.add_argument("--host", default="127.0.0.1", help="address to listen on")
    dash.add_argument("--port", type=int, default=8080, help="port to listen on")
    dash.set_defaults(func=_cmd_dashboard)

    export = sub.add_parser("export", help="export a Pareto model as an FHE bundle")
    export.add_argument("--study", default=None, help=one_study)
    storage_arg(export)
    export.add_argument("--out", required=True, help="bundle directory to write")
    choose = export.add_mutually_exclusive_group()
    choose.add_argument("--trial", type=int, default=None, help="trial number (see pareto)")
    choose.add_argument(
        "--pick",
        choices=("accuracy", "latency", "knee"),
        default=None,
        help="which front model when --trial is not given (default: knee; with "
        "--min-accuracy the fastest, with --max-latency the most accurate model that meets it)",
    )
    export.add_argument("--min-accuracy", type=float, default=None, help="metric at least")
    export.add_argument("--max-latency", type=float, default=None, help="seconds per sample")
    export.add_argument(
        "--force", action="store_true", help="replace --out when it holds a bundle (only)"
    )
    export.add_argument(
        "--uncompressed",
        action="store_true",
        help="evaluation keys and encrypted inputs uncompressed (default: compressed, 3-7x "
        "fewer bytes of keys to upload and ~50x smaller inputs, for ~0.5 s of decompression "
        "on the server's first run with a key set)",
    )
    export.set_defaults(func=deploy.cmd_export)

    predict = sub.add_parser("predict", help="predict with an exported bundle")
    predict.add_argument("--model", required=True, help="bundle directory")
    predict.add_argument("--data", required=True, help="X.npy (features only) or data file")
    predict.add_argument("--label-column", default=None, help="for a .csv with labels")
    predict.add_argument(
        "--fhe",
        choices=("execute", "simulate", "disable"),
        default="execute",
        help="execute: encrypted; simulate: same results, no encryption; disable: clear",
    )
    predict.add_argument("--out", default=None, help="write predictions to this .npy")
    predict.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    predict.add_argument(
        "--digest",
        default=None,
        help="refuse the bundle unless its digest (printed by export) is this",
    )
    predict.set_defaults(func=deploy.cmd_predict)

    serve = sub.add_parser("serve", help="serve a bundle's server part over HTTP")
    serve.add_argument("--model", required=True, help="bundle directory")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--digest",
        default=None,
        help="refuse the bundle unless its digest (printed by export) is this",
    )
    serve.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds for a request head to arrive, and of silence inside a body",
    )
    serve.add_argument(
        "--max-memory",
        default=None,
        metavar="SIZE",
        help="memory the server may use, e.g. 2GB: key sets beyond it are evicted, least "
        "recently used first (default: half the memory available at start)",
    )
    serve.add_argument(
        "--max-uploads", type=int, default=4, help="key uploads received at once (more: 503)"
    )
    serve.add_argument(
        "--max-key-sets",
        type=int,
        default=None,
        help="clients' key sets held at most (default: as many as --max-memory allows)",
    )
    serve.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    serve.set_defaults(func=deploy.cmd_serve)

    remote = sub.add_parser("remote-predict", help="encrypted predictions through `serve`")
    remote.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000")
    remote.add_argument("--model", required=True, help="bundle or its client/ part")
    remote.add_argument("--data", required=True, help="features: .npy, .npz (X) or .csv")
    remote.add_argument("--label-column", default=None, help="for a .csv with labels")
    remote.add_argument("--keys", default=None, help="key directory (default: keys in memory)")
    remote.add_argument("--out", default=None, help="write predictions to this .npy")
    remote.add_argument(
        "--digest",
        default=None,
        help="refuse --model unless its digest (bundle or client/) is this",
    )
    remote.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for each answer of the server (connecting: at most 10)",
    )
    remote.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    remote.set_defaults(func=deploy.cmd_remote_predict)
    return parser


#: commands whose Optuna log lines are noise unless --debug (`studies` quiets Optuna itself:
#: on an SQLite file it never imports it)
OPTUNA_COMMANDS = ("demo", "search", "worker", "pareto", "trials", "dashboard", "export")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (0 ok, 2 bad input, 1 anything else).

    From the console script (``argv`` None) a failing code ends the process at once: after an
    encrypted execution, concrete's exit hook would otherwise turn any exit status into 0.
    """
    try:
        code = _main(argv)
    except SystemExit:
        raise  # argparse's usage errors (2) and --help (0), before any encrypted run
    except BaseException:  # --debug: the traceback, and still a truthful status
        if argv is not None:
            raise
        import traceback

        traceback.print_exc()
        code = 1
    if argv is None and code != 0:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what advice lines repeat
    if not args.debug:
        warnings.filterwarnings("ignore")
        if args.command in OPTUNA_COMMANDS:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
    on_stop_signals()  # Ctrl-C and SIGTERM: one line and 130 / 143, wherever they land
    try:
        return args.func(args)
    except Interrupted as exc:
        print("autofhe: interrupted", file=sys.stderr)
        return exc.exit_code
    except AutofheError as exc:
        if args.debug:
            raise
        print(f"autofhe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autofhe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `autofhe pareto | head`: the reader has all it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush
        return 1
    except Exception as exc:  # not ours: still one line (and exit 1), the traceback on --debug
        if args.debug:
            raise
        first = (str(exc).splitlines() or [""])[0]
        print(
            f"autofhe: error: {type(exc).__name__}: {first} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
