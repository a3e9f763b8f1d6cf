"""The commands that read a study database and never train: ``pareto`` (the front, a table,
JSON, CSV or a plot), ``trials`` (every trial), ``studies`` (every study of a storage) and
``dashboard`` (optuna-dashboard on it). None of them writes to the database.
"""

from __future__ import annotations

import argparse
import os
import sys

from autofhe.cli.common import (
    ONE_STUDY,
    advice,
    emit,
    format_arg,
    load_study,
    storage_arg,
    storage_url,
    study_spec,
)

__all__ = ["add_commands"]


def add_commands(sub) -> None:
    """``pareto``, ``trials``, ``studies`` and ``dashboard`` on the subparsers ``sub``."""
    pareto = sub.add_parser("pareto", help="print a study's Pareto front")
    pareto.add_argument("--study", default=None, help=ONE_STUDY)
    storage_arg(pareto)
    format_arg(pareto, "json and csv use stable machine keys (trial, metric, value, ...)")
    pareto.add_argument("--plot", default=None, metavar="FILE.png", help="also draw the front")
    pareto.set_defaults(func=cmd_pareto)

    trials = sub.add_parser("trials", help="every trial: state, values, epochs trained, reason")
    trials.add_argument("--study", default=None, help=ONE_STUDY)
    storage_arg(trials)
    format_arg(trials, "json and csv: one record per trial, stable machine keys")
    trials.set_defaults(func=cmd_trials)

    studies = sub.add_parser("studies", help="list the studies of a storage")
    storage_arg(studies)
    format_arg(studies, "json and csv: one record per study")
    studies.set_defaults(func=cmd_studies)

    dash = sub.add_parser("dashboard", help="serve optuna-dashboard on the study database")
    storage_arg(dash)
    dash.add_argument("--host", default="127.0.0.1", help="address to listen on")
    dash.add_argument("--port", type=int, default=8080, help="port to listen on")
    dash.set_defaults(func=cmd_dashboard)


def cmd_pareto(args: argparse.Namespace) -> int:
    from autofhe.search.front.pareto import pareto_front
    from autofhe.search.report import display_rows, front_records, latency_warnings, plot_front

    study = load_study(args)
    spec = study_spec(storage_url(args), study.study_name)
    max_latency = spec.get("max_latency")
    front = pareto_front(study.get_trials(deepcopy=False))
    lines = [] if front else advice(study, spec)
    if args.plot:
        plot_front(study, front, args.plot, max_latency, "\n".join(lines))
    records = front_records(study, front, max_latency)
    emit(records, args.format, display_rows)
    if lines and args.format == "table":
        print("\n".join(lines))
    for message in latency_warnings(records):
        print(f"autofhe: warning: {message}", file=sys.stderr)
    if args.plot:
        print(f"front plot written to {args.plot}", file=sys.stderr)
    return 0


def cmd_trials(args: argparse.Namespace) -> int:
    from autofhe.search.report import trial_records, trial_rows

    study = load_study(args, autofhe_only=False)  # any Optuna study lists its trials
    records = trial_records(study)
    if not records and args.format == "table":
        print(f"no trials in study {study.study_name!r} yet")
        return 0
    emit(records, args.format, trial_rows)
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    from autofhe.search.store.locate import has_tables, open_storage, require_database_file
    from autofhe.search.store.summary import sqlite_summaries

    url = storage_url(args)
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
        emit(rows, args.format)
    return 0


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


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from autofhe.fhe.listen import bind
    from autofhe.search.price.feasibility import patch_dashboard
    from autofhe.search.store.locate import artifact_store, open_storage

    url = storage_url(args)
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
