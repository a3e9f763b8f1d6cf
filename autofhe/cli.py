"""The ``autofhe`` command. Thin: parse arguments, call the library, print.

Errors become one line on stderr and a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from autofhe.errors import AutofheError, ParameterError

BUILTIN_SETS = ("breast_cancer", "wine", "digits", "iris")


def _cmd_demo(args: argparse.Namespace) -> int:
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    from autofhe import NeuralNetClassifier

    X, y = getattr(datasets, f"load_{args.dataset}")(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=args.seed, stratify=y)
    scaler = StandardScaler().fit(Xtr)
    Xtr, Xte = scaler.transform(Xtr), scaler.transform(Xte)
    print(f"dataset {args.dataset}: {len(Xtr)} training rows, {len(Xte)} test rows")
    flt = MLPClassifier(max_iter=500, random_state=args.seed).fit(Xtr, ytr).score(Xte, yte)
    print(f"float MLP (scikit-learn)             test accuracy {flt:.3f}")
    t0 = time.perf_counter()
    model = NeuralNetClassifier(random_state=args.seed, n_accum_bits=args.accum_bits)
    model.fit(Xtr, ytr)
    acc = model.score(Xte, yte)
    print(
        f"autofhe 3-bit quantized MLP (clear)    test accuracy {acc:.3f}  "
        f"(trained in {time.perf_counter() - t0:.1f} s, accumulator bits per layer "
        f"{model.accumulator_bits_})"
    )
    return 0


# -- search -----------------------------------------------------------------------------------


def _front_rows(study, front) -> list[dict]:
    metric = (study.metric_names or ["metric"])[0]
    rows = []
    for t in front:
        measured = t.user_attrs.get("measured_latency_s")
        clear_test = t.user_attrs.get("clear_test", float("nan"))
        rows.append(
            {
                "trial": t.number,
                metric: round(t.values[0], 4),
                # the shipped model's: refit on training + validation rows
                "test (clear)": round(t.user_attrs.get("final_clear_test", clear_test), 4),
                "predicted s": round(t.values[1], 4),
                "measured s": None if measured is None else round(measured, 4),
                "layers": t.params.get("module__n_layers"),
                "bits w/a": f"{t.params.get('n_w_bits')}/{t.params.get('n_a_bits')}",
                "lookups": t.user_attrs.get("lookups_per_layer"),
                "artifact": bool(t.user_attrs.get("artifact_id")),
            }
        )
    return rows


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


def _progress_printer(total: int | None):
    start = time.perf_counter()

    def progress(study, trial, trials, front) -> None:
        import optuna

        done = [t for t in trials if t.state.is_finished()]
        feasible = sum(bool(t.user_attrs.get("feasible")) for t in done)
        elapsed = time.perf_counter() - start
        last = ""
        if trial is not None and trial.state == optuna.trial.TrialState.COMPLETE:
            m, lat = trial.values
            why = trial.user_attrs.get("reason")
            last = f" | trial {trial.number}: {m:.4f}, {lat:.4f} s" + (f" ({why})" if why else "")
        elif trial is not None:
            last = f" | trial {trial.number}: {trial.state.name.lower()}"
        goal = f"/{total}" if total else ""
        print(
            f"[{elapsed / 60:5.1f} min] trials {len(done)}{goal}, feasible {feasible}, "
            f"front {len(front)}{last}",
            flush=True,
        )

    return progress


def _cmd_search(args: argparse.Namespace) -> int:
    from autofhe.data import load_dataset
    from autofhe.fhe.latency import load_cost_model
    from autofhe.search.pareto import pareto_front
    from autofhe.search.spec import check_folds, load_spec, parse_duration
    from autofhe.search.study import (
        check_search_inputs,
        open_study,
        resolve_storage,
        run_workers,
    )

    # Everything the user gave is checked before the database is touched.
    url = resolve_storage(args.storage)
    spec = load_spec(args.spec)
    if args.metric:
        spec.metric = args.metric
    if args.max_latency is not None:
        spec.max_latency = parse_duration(args.max_latency)
    if args.folds is not None:
        spec.folds = check_folds(args.folds)
    timeout = parse_duration(args.timeout) if args.timeout else None
    if args.trials is not None and args.trials < 1:
        raise ParameterError(f"--trials {args.trials}: pass a positive number of trials.")
    if args.workers < 1:
        raise ParameterError(f"--workers {args.workers}: pass at least 1.")
    trials = args.trials if (args.trials or timeout) else 20
    ds = load_dataset(args.data, labels=args.labels, label_column=args.label_column, task=args.task)
    if ds.labels_source:
        print(f"labels: {ds.labels_source} (next to the data; pass --labels to choose)")
    print(f"data: {ds.source}: {ds.X.shape[0]} rows, {ds.X.shape[1]} features, {ds.task}")
    check_search_inputs(ds, spec, args.seed)
    print("cost model: loading (the first run on a machine calibrates it, about a minute)")
    cost_model = load_cost_model()
    study, _, name = open_study(ds, spec, url, args.study, args.seed)
    before = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    at_start = study.get_trials(deepcopy=False)
    queued = {t.number for t in at_start if t.state.name == "WAITING"}  # run by this search
    print(
        f"study {name!r} on {url}: {before} trials so far; running "
        f"{trials if trials else 'until the timeout'} more"
        + (f" with {args.workers} workers" if args.workers > 1 else "")
    )
    codes = run_workers(
        url,
        name,
        args.workers,
        trials,
        timeout,
        args.seed,
        cost_model,
        progress=_progress_printer((before + trials) if trials else None),
    )
    print(f"\nPareto front of {name!r} ({len(study.trials)} trials):")
    _print_table(_front_rows(study, pareto_front(study.get_trials(deepcopy=False))))
    print(f"\ninspect:  autofhe dashboard --storage {url}")
    print(f"export:   autofhe export --study {name} --storage {url} --pick knee --out model/")
    new = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number >= len(at_start) or t.number in queued
    ]
    if new and all(t.state.name == "FAIL" for t in new):
        error = new[-1].user_attrs.get("error", "see the messages above")
        print(
            f"autofhe: error: all {len(new)} trials of this run failed (last: {error}); "
            "fix the spec or the data and rerun.",
            file=sys.stderr,
        )
        return 1
    failed = [c for c in codes if c != 0]
    if failed:
        print(
            f"autofhe: error: {len(failed)} of {len(codes)} workers failed (exit codes "
            f"{', '.join(map(str, failed))}); the front above is partial. Their errors are "
            "above; resume with the same command.",
            file=sys.stderr,
        )
        return max(failed) if all(c > 0 for c in failed) else 1
    return 0


def _cmd_pareto(args: argparse.Namespace) -> int:
    import json

    from autofhe.search.pareto import pareto_front

    study = _load_study(args)
    rows = _front_rows(study, pareto_front(study.get_trials(deepcopy=False)))
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    elif args.format == "csv":
        import csv

        if rows:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        _print_table(rows)
    return 0


def _open_storage(url: str):
    """The process's pooled storage on ``url``; a database that cannot be read is one line."""
    from pathlib import Path

    from autofhe.errors import StorageError
    from autofhe.search.study import _storage

    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        db = Path(url[len("sqlite:///") :])
        if not db.is_file():  # never leave an empty database behind a mistyped path
            raise StorageError(
                f"no database file {str(db)!r} (storage {url}); check the path or --storage."
            )
    try:
        return _storage(url)
    except Exception as exc:  # driver errors, alembic, a file that is not a database
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise StorageError(f"cannot read storage {url!r}: {type(exc).__name__}: {first}") from None


def _load_study(args):
    import optuna

    from autofhe.search.study import resolve_storage

    url = resolve_storage(args.storage)
    storage = _open_storage(url)
    names = [s.study_name for s in storage.get_all_studies()]
    if args.study not in names:
        raise ParameterError(
            f"no study {args.study!r} in {url}; studies there: {', '.join(names) or 'none'}."
        )
    return optuna.load_study(study_name=args.study, storage=storage)


def _cmd_studies(args: argparse.Namespace) -> int:
    import optuna

    from autofhe.search.pareto import pareto_front
    from autofhe.search.study import resolve_storage

    url = resolve_storage(args.storage)
    storage = _open_storage(url)
    rows = []
    for summary in optuna.get_all_study_summaries(storage=storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        rows.append(
            {
                "study": summary.study_name,
                "trials": len(trials),
                "front": len(pareto_front(trials)),
                "metric": (study.metric_names or ["?"])[0],
                "source": study.user_attrs.get("autofhe_source", "-"),
            }
        )
    _print_table(rows) if rows else print(f"no studies in {url}")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from autofhe.fhe.latency import load_cost_model
    from autofhe.search.study import SearchSession, resolve_storage

    url = resolve_storage(args.storage)
    _load_study(args)
    timeout = None
    if args.timeout:
        from autofhe.search.spec import parse_duration

        timeout = parse_duration(args.timeout)
    if args.trials is not None and args.trials < 1:
        raise ParameterError(f"--trials {args.trials}: pass a positive number of trials.")
    SearchSession(url, args.study, args.seed).run(
        args.trials, timeout, load_cost_model(), _progress_printer(None)
    )
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna
    from optuna_dashboard import run_server

    from autofhe.search.study import artifact_store, resolve_storage

    url = resolve_storage(args.storage)
    print(f"optuna-dashboard on http://{args.host}:{args.port} (storage {url}); Ctrl-C stops it")
    run_server(
        optuna.storages.RDBStorage(url),
        host=args.host,
        port=args.port,
        artifact_store=artifact_store(url),
    )
    return 0


# -- deployment ---------------------------------------------------------------------------------


def _latency(t) -> float:
    return t.user_attrs.get("measured_latency_s") or t.values[1]


def _knee(front):
    """The front point farthest from the line joining its extremes (metric vs log latency)."""
    import math

    if len(front) <= 2:
        return front[0]
    pts = [(t.values[0], math.log10(max(_latency(t), 1e-6))) for t in front]
    (m0, l0), (m1, l1) = max(pts), min(pts, key=lambda p: p[1])
    span_m, span_l = (m0 - m1) or 1.0, (l0 - l1) or 1.0

    def dist(p):
        x, y = (p[0] - m1) / span_m, (p[1] - l1) / span_l
        return abs(x - y)  # distance to the diagonal of the normalized box

    return front[max(range(len(front)), key=lambda i: dist(pts[i]))]


def _choose_trial(study, args):
    import optuna

    from autofhe.search.pareto import pareto_front

    trials = study.get_trials(deepcopy=False)
    front = [t for t in pareto_front(trials) if t.user_attrs.get("artifact_id")]
    if args.trial is not None:
        match = [t for t in trials if t.number == args.trial]
        if not match:
            raise ParameterError(f"study {study.study_name!r} has no trial {args.trial}.")
        if match[0].state != optuna.trial.TrialState.COMPLETE or match[0].values is None:
            raise ParameterError(
                f"trial {args.trial} is {match[0].state.name}, not COMPLETE; pick a trial of "
                "the front (autofhe pareto --study ...)."
            )
        if not match[0].user_attrs.get("artifact_id"):
            numbers = ", ".join(str(t.number) for t in front) or "none"
            raise ParameterError(
                f"trial {args.trial} has no stored model (only Pareto-front trials get one); "
                f"trials with a model: {numbers}."
            )
        return match[0]
    if not front:
        raise ParameterError(
            f"study {study.study_name!r} has no feasible trial with a stored model yet; run "
            "more trials with `autofhe search` or `autofhe worker`."
        )
    if args.min_accuracy is not None or args.max_latency is not None:
        ok = [
            t
            for t in front
            if (args.min_accuracy is None or t.values[0] >= args.min_accuracy)
            and (args.max_latency is None or _latency(t) <= args.max_latency)
        ]
        if not ok:
            raise ParameterError(
                "no front model meets --min-accuracy / --max-latency; the front is "
                + ", ".join(f"{t.values[0]:.3f} at {_latency(t):.3g} s" for t in front)
                + "."
            )
        return min(ok, key=_latency)
    if args.pick == "accuracy":
        return max(front, key=lambda t: (t.values[0], -_latency(t)))
    if args.pick == "latency":
        return min(front, key=lambda t: (_latency(t), -t.values[0]))
    return _knee(front)


def _safe_extract(archive: str, target) -> None:
    """Unzip without trusting member paths: nothing may land outside ``target``."""
    import zipfile
    from pathlib import Path

    from autofhe.fhe.bundle import BundleError

    root = Path(target).resolve()
    with zipfile.ZipFile(archive) as z:
        for member in z.infolist():
            dest = (root / member.filename).resolve()
            if member.filename.startswith("/") or not dest.is_relative_to(root):
                raise BundleError(f"artifact member {member.filename!r} escapes the bundle.")
        z.extractall(root)


def _cmd_export(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    from pathlib import Path

    import optuna

    from autofhe.fhe.bundle import read_manifest
    from autofhe.search.study import artifact_store, resolve_storage

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ParameterError(f"--out {out} is a file; pass a directory path.")
    if out.exists() and any(out.iterdir()) and not args.force:
        raise ParameterError(f"--out {out} is not empty; pass --force to replace it.")
    study = _load_study(args)
    trial = _choose_trial(study, args)
    url = resolve_storage(args.storage)
    store = artifact_store(url)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "model.zip"
        try:
            optuna.artifacts.download_artifact(
                artifact_store=store,
                file_path=str(archive),
                artifact_id=trial.user_attrs["artifact_id"],
            )
        except Exception as exc:  # missing artifact store, deleted file
            raise ParameterError(
                f"the model of trial {trial.number} is not in the artifact store ({exc}); if "
                "it was stored in a folder, set $AUTOFHE_ARTIFACTS to that folder."
            ) from None
        staged = Path(tmp) / "bundle"
        _safe_extract(str(archive), staged)
        read_manifest(staged)  # checksums and versions before anything reaches --out
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(staged), str(out))
    measured = trial.user_attrs.get("measured_latency_s")
    metric = (study.metric_names or ["metric"])[0]
    print(
        f"exported trial {trial.number} of {study.study_name!r} to {out}: {metric} "
        f"{trial.values[0]:.4f} (validation, simulated), latency "
        + (f"{measured:.4g} s measured" if measured else f"{trial.values[1]:.4g} s predicted")
    )
    print(f"predict:  autofhe predict --model {out} --data X.npy --fhe execute")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:

    from autofhe.data import load_features
    from autofhe.fhe.deploy import predict_bundle

    X = load_features(args.data, label_column=args.label_column)
    pred, _ = predict_bundle(args.model, X, fhe=args.fhe, progress=not args.quiet)
    return _write_predictions(pred, args.out, f"predictions ({args.fhe})")


def _write_predictions(pred, out: str | None, what: str) -> int:
    """To ``out`` (.npy, no pickle) when given, else one per line on stdout."""
    import numpy as np

    if out:
        np.save(out, pred, allow_pickle=False)
        print(f"{len(pred)} {what} written to {out}")
    else:
        for value in pred:
            print(value)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from autofhe.fhe.serve import make_server

    httpd = make_server(args.model, args.host, args.port)
    host, port = httpd.server_address[:2]
    print(
        f"serving {args.model} on http://{host}:{port} (OpenAPI: /openapi.json); Ctrl-C stops",
        flush=True,
    )
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
    return 0


def _cmd_remote_predict(args: argparse.Namespace) -> int:
    from autofhe.data import load_features
    from autofhe.fhe.serve import HttpClient

    X = load_features(args.data, label_column=args.label_column)
    pred = HttpClient(args.url, args.model, args.keys).predict(X)
    return _write_predictions(pred, args.out, "encrypted predictions")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autofhe",
        description="AutoML for neural networks that run on encrypted data (TFHE).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a quantized model on a bundled dataset")
    demo.add_argument("--dataset", choices=BUILTIN_SETS, default="breast_cancer")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--accum-bits", type=int, default=None, help="accumulator budget")
    demo.set_defaults(func=_cmd_demo)

    def storage_arg(p):
        p.add_argument(
            "--storage",
            default=None,
            help="SQLAlchemy URL (default: $AUTOFHE_STORAGE, else sqlite:///autofhe.db)",
        )

    search = sub.add_parser("search", help="search the accuracy / FHE latency trade-off")
    search.add_argument(
        "--data", required=True, help="X.npy (+ --labels), data.npz, data.csv, or sklearn:NAME"
    )
    search.add_argument("--labels", default=None, help="labels .npy (default: y.npy next to X)")
    search.add_argument("--label-column", default=None, help="label column of a .csv")
    search.add_argument("--task", choices=("classification", "regression"), default=None)
    search.add_argument("--trials", type=int, default=None, help="trials to run (default 20)")
    search.add_argument("--timeout", default=None, help="stop after this long, e.g. 30m")
    storage_arg(search)
    search.add_argument("--study", default=None, help="study name (default: from the data)")
    search.add_argument("--spec", default=None, help="study spec (TOML), e.g. studies/wine.toml")
    search.add_argument("--metric", default=None)
    search.add_argument("--max-latency", default=None, help="seconds per sample (constraint)")
    search.add_argument(
        "--folds",
        type=int,
        default=None,
        help="cross-validate the metric over k folds (default 1: one validation split)",
    )
    search.add_argument("--workers", type=int, default=1)
    search.add_argument("--seed", type=int, default=0)
    search.set_defaults(func=_cmd_search)

    pareto = sub.add_parser("pareto", help="print a study's Pareto front")
    pareto.add_argument("--study", required=True)
    storage_arg(pareto)
    pareto.add_argument("--format", choices=("table", "json", "csv"), default="table")
    pareto.set_defaults(func=_cmd_pareto)

    studies = sub.add_parser("studies", help="list the studies of a storage")
    storage_arg(studies)
    studies.set_defaults(func=_cmd_studies)

    worker = sub.add_parser("worker", help="join an existing study from another process")
    worker.add_argument("--study", required=True)
    storage_arg(worker)
    worker.add_argument("--trials", type=int, default=None)
    worker.add_argument("--timeout", default=None)
    worker.add_argument("--seed", type=int, default=1)
    worker.set_defaults(func=_cmd_worker)

    dash = sub.add_parser("dashboard", help="serve optuna-dashboard on the study database")
    storage_arg(dash)
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=int, default=8080)
    dash.set_defaults(func=_cmd_dashboard)

    export = sub.add_parser("export", help="export a Pareto model as an FHE bundle")
    export.add_argument("--study", required=True)
    storage_arg(export)
    export.add_argument("--out", required=True, help="bundle directory to write")
    choose = export.add_mutually_exclusive_group()
    choose.add_argument("--trial", type=int, default=None)
    choose.add_argument("--pick", choices=("accuracy", "latency", "knee"), default="knee")
    export.add_argument("--min-accuracy", type=float, default=None)
    export.add_argument("--max-latency", type=float, default=None, help="seconds per sample")
    export.add_argument("--force", action="store_true", help="replace a non-empty --out")
    export.set_defaults(func=_cmd_export)

    predict = sub.add_parser("predict", help="predict with an exported bundle")
    predict.add_argument("--model", required=True, help="bundle directory")
    predict.add_argument("--data", required=True, help="X.npy (features only) or data file")
    predict.add_argument("--label-column", default=None, help="for a .csv with labels")
    predict.add_argument("--fhe", choices=("execute", "simulate", "disable"), default="execute")
    predict.add_argument("--out", default=None, help="write predictions to this .npy")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=_cmd_predict)

    serve = sub.add_parser("serve", help="serve a bundle's server part over HTTP")
    serve.add_argument("--model", required=True, help="bundle directory")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=_cmd_serve)

    remote = sub.add_parser("remote-predict", help="encrypted predictions through `serve`")
    remote.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000")
    remote.add_argument("--model", required=True, help="bundle or its client/ part")
    remote.add_argument("--data", required=True, help="features: .npy, .npz (X) or .csv")
    remote.add_argument("--label-column", default=None, help="for a .csv with labels")
    remote.add_argument("--keys", default=None, help="key directory (default: keys in memory)")
    remote.add_argument("--out", default=None)
    remote.set_defaults(func=_cmd_remote_predict)
    return parser


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
    if not args.debug:
        warnings.filterwarnings("ignore")
        if args.command in ("search", "worker", "pareto", "studies", "dashboard", "export"):
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return args.func(args)
    except AutofheError as exc:
        if args.debug:
            raise
        print(f"autofhe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autofhe: interrupted", file=sys.stderr)
        return 130
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
