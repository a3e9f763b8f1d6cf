"""The commands that train: ``search`` (a study's workers, supervised, then its front),
``worker`` (join a study from another process or machine) and ``demo`` (a short search on a
bundled dataset).

Thin like the rest of the CLI; the heavy imports (torch, via the objective) happen inside
the commands, so that ``--help`` and the other commands stay light.
"""

from __future__ import annotations

import argparse
import sys

from autofhe.cli.common import (
    ONE_STUDY,
    Parser,
    advice,
    check_seed,
    load_study,
    print_table,
    quote,
    say,
    storage_arg,
    storage_url,
    study_spec,
)
from autofhe.errors import Interrupted, ParameterError
from autofhe.machine import available_cores

__all__ = ["METRIC_NAMES", "add_commands", "cmd_demo", "cmd_search", "cmd_worker"]

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


def add_commands(sub) -> None:
    """``demo``, ``search`` and ``worker`` on the subparsers ``sub``."""
    demo = sub.add_parser(
        "demo",
        help="a short search on a bundled dataset (default space, no spec): prints the front "
        "and the commands to export and run its model",
    )
    demo.add_argument("--dataset", choices=BUILTIN_SETS, default="breast_cancer", help="dataset")
    demo.add_argument("--trials", type=int, default=DEMO_TRIALS, help="trials to run")
    storage_arg(demo)
    demo.add_argument("--seed", type=int, default=0, help="split and sampler seed")
    demo.set_defaults(func=cmd_demo)

    _add_search(sub)

    worker = sub.add_parser("worker", help="join an existing study from another process")
    worker.add_argument("--study", default=None, help=ONE_STUDY)
    storage_arg(worker)
    worker.add_argument("--trials", type=int, default=None, help="default: until stopped")
    worker.add_argument("--timeout", default=None, help="stop after this long, e.g. 30m")
    worker.add_argument("--seed", type=int, default=1, help="sampler seed")
    worker.set_defaults(func=cmd_worker)


def _add_search(sub) -> None:
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
        help="worker processes (default: one per core this process may use, at most one per "
        "trial; 1 opts out)",
    )
    search.add_argument("--seed", type=int, default=0, help="split and sampler seed")
    search.set_defaults(func=cmd_search)


def cmd_demo(args: argparse.Namespace) -> int:
    """``autofhe search`` on a bundled dataset with the default search space (no spec), then
    the commands that take its front model to deployment."""
    search = ["search", "--data", f"sklearn:{args.dataset}", "--trials", str(args.trials)]
    search += ["--seed", str(args.seed)] + (["--storage", args.storage] if args.storage else [])
    print(f"demo: autofhe {' '.join(search)}", flush=True)
    parser = Parser(prog="autofhe")
    parser.set_defaults(debug=args.debug)
    _add_search(parser.add_subparsers(dest="command", required=True, parser_class=Parser))
    parsed = parser.parse_args(search)
    parsed.argv = search  # the search's own command line (what its advice repeats)
    code = cmd_search(parsed)
    if code == 0:
        url = storage_url(args)
        X = f"d.load_{args.dataset}(return_X_y=True)[0][:5]"
        print(
            'rows:     python -c "import numpy, sklearn.datasets as d; '
            f"numpy.save('rows.npy', {X})\"   # features only\n"
            "predict:  autofhe predict --model model/ --data rows.npy --fhe execute\n"
            f"(running `autofhe demo` again adds {args.trials} trials to the same study in {url})"
        )
    return code


def cmd_search(args: argparse.Namespace) -> int:
    from autofhe.data import load_dataset
    from autofhe.fhe.latency import load_cost_model
    from autofhe.search.front.pareto import pareto_front
    from autofhe.search.plan.spec import check_folds, load_spec
    from autofhe.search.record import TrialRecord
    from autofhe.search.report import display_rows, front_records
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
    _check_trials(args.trials)
    trials = args.trials if (args.trials or timeout) else 20
    cores = available_cores()
    most = 4 * cores
    if args.workers is None:  # a worker that would get no trial costs a torch import, ~5 s
        args.workers = min(cores, trials) if trials else cores
    if not 1 <= args.workers <= most:
        raise ParameterError(
            f"--workers {args.workers}: pass 1 to {most} (4 per core; each trains on one)."
        )
    check_seed(args.seed)
    check_study_name(args.study)
    ds = load_dataset(args.data, labels=args.labels, label_column=args.label_column, task=args.task)
    if ds.labels_source:
        print(f"labels: {ds.labels_source} (next to the data; pass --labels to choose)")
    print(f"data: {ds.source}: {ds.X.shape[0]} rows, {ds.X.shape[1]} features, {ds.task}")
    check_search_inputs(ds, spec, args.seed, url, args.study)
    cost_model = load_cost_model(calibrate_if_missing=False)
    if cost_model is None:
        print("cost model: calibrating it on this machine (first run here, about two minutes)")
        cost_model = load_cost_model()
    study, _, name = open_study(ds, spec, url, args.study, args.seed, say=say, checked=True)
    at_start = study.get_trials(deepcopy=False)
    before = sum(t.state.is_finished() for t in at_start)
    queued = {t.number for t in at_start if t.state.name == "WAITING"}  # run by this search
    print(
        f"study {name!r} on {url}: {before} trials so far; running "
        f"{trials if trials else 'until the timeout'} more"
        + (f" with {args.workers} workers" if args.workers > 1 else "")
        + "; Ctrl-C stops (the running trials are queued again)"
    )
    outcome = run(url, name, args.workers, trials, timeout, args.seed, cost_model, study)
    if outcome.stopped_by is None and _remeasure(url, name):
        import optuna

        study = optuna.load_study(study_name=name, storage=url)  # trials read afresh
    print(f"\nPareto front of {name!r} ({len(study.trials)} trials):")
    front = pareto_front(study.get_trials(deepcopy=False))
    print_table(display_rows(front_records(study, front)))
    if not front:
        print("\n".join(advice(study, study_spec(url, name), args.argv)))
    print(f"\ninspect:  autofhe dashboard --storage {quote(url)}")
    if front:
        print(
            f"export:   autofhe export --study {quote(name)} --storage {quote(url)} "
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


def cmd_worker(args: argparse.Namespace) -> int:
    from autofhe.fhe.latency import load_cost_model
    from autofhe.search.store.locate import check_writable

    url = storage_url(args)
    check_seed(args.seed)
    check_writable(url)
    study = load_study(args)
    timeout = None
    if args.timeout:
        from autofhe.units import parse_duration

        timeout = parse_duration(args.timeout)
    _check_trials(args.trials)
    print(f"worker on study {args.study!r} ({url}); Ctrl-C stops (its trial is queued again)")
    outcome = run(url, args.study, 1, args.trials, timeout, args.seed, load_cost_model(), study)
    return _ended(outcome, "start the worker again to go on")


def _check_trials(trials: int | None) -> None:
    if trials is not None and trials < 1:
        raise ParameterError(f"--trials {trials}: pass a positive number of trials.")


def run(url, name, workers, trials, timeout, seed, cost_model, study):
    """The study's workers, each a child process the CLI supervises (search/run/workers.py),
    with a progress line when a trial starts, every 30 s while it runs and when it ends."""
    from autofhe.search.report import ProgressReport
    from autofhe.search.run.workers import run_workers

    report = ProgressReport(study, trials)
    return run_workers(
        url, name, workers, trials, timeout, seed, cost_model, progress=report, isolate=True
    )


def _remeasure(url: str, name: str) -> int:
    """Front models measured beside other processes, measured again if the machine is quiet
    now: how many (a bonus: a failure is a warning, the search's figures stand)."""
    from autofhe.search.front.remeasure import remeasure_front

    try:
        return remeasure_front(url, name, say=say)
    except Interrupted:
        raise
    except Exception as exc:  # a missing artifact, the FHE runtime: the figures stand
        first = (str(exc).splitlines() or [""])[0]
        print(f"autofhe: warning: front models not measured again: {first}", file=sys.stderr)
        return 0


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
