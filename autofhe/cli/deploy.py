"""The deployment commands of ``autofhe``: export a front model as a bundle, predict with
it (in the clear, simulated or encrypted), serve it over HTTP, predict through a server.

Thin like the rest of the CLI: call the library, print; errors are AutofheError, which
:func:`autofhe.cli.main` turns into one line on stderr.
"""

from __future__ import annotations

import argparse
import math
import shlex

from autofhe.cli.common import ONE_STUDY, storage_arg
from autofhe.errors import ParameterError

__all__ = ["add_commands", "cmd_export", "cmd_predict", "cmd_remote_predict", "cmd_serve"]


def add_commands(sub) -> None:
    """``export``, ``predict``, ``serve`` and ``remote-predict`` on the subparsers ``sub``."""
    export = sub.add_parser("export", help="export a Pareto model as an FHE bundle")
    export.add_argument("--study", default=None, help=ONE_STUDY)
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
    export.set_defaults(func=cmd_export)

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
    predict.set_defaults(func=cmd_predict)

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
    serve.set_defaults(func=cmd_serve)

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
    remote.set_defaults(func=cmd_remote_predict)


def _choose_trial(study, args):
    from autofhe.search.front.pareto import pareto_front
    from autofhe.search.front.select import choose

    trials = study.get_trials(deepcopy=False)
    return choose(
        trials,
        pareto_front(trials),
        number=args.trial,
        pick=args.pick,
        min_accuracy=args.min_accuracy,
        max_latency=args.max_latency,
        study=f"study {study.study_name!r}",
    )


def _check_replaceable(out, url: str) -> None:
    """``export --force`` deletes ``out`` only when it is a bundle and nothing else: never a
    root, the home or working directory (or a folder holding them), the study database or
    its artifacts."""
    from pathlib import Path

    from autofhe.fhe.bundle import is_bundle
    from autofhe.search.store.locate import artifact_dir, sqlite_path

    if out.is_symlink():
        raise ParameterError(f"--out {out} is a symbolic link; refusing to replace it.")
    target = out.resolve()
    protected = {"the working directory": Path.cwd().resolve(), "$HOME": Path.home().resolve()}
    if sqlite_path(url) is not None:
        protected["the study database"] = sqlite_path(url).resolve()
    protected["the artifact store"] = artifact_dir(url).resolve()
    if target.parent == target:
        raise ParameterError(f"--out {out} is a filesystem root; refusing to delete it.")
    for what, path in protected.items():
        holds = path.is_relative_to(target)
        if holds or (what == "the artifact store" and target.is_relative_to(path)):
            raise ParameterError(
                f"--out {out} {'is or holds' if holds else 'lies inside'} {what} ({path}); "
                "refusing to delete it: pick a new folder for the bundle."
            )
    if not is_bundle(target):
        raise ParameterError(
            f"--out {out} is not an autofhe bundle (model.json with bundle files only); "
            "refusing to delete it: pick a new or empty folder."
        )


def cmd_export(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    from pathlib import Path

    import optuna

    from autofhe.fhe.bundle import bundle_digest, unpack_bundle
    from autofhe.search.record import TrialRecord
    from autofhe.search.store.locate import (
        artifact_store,
        check_study_name,
        load_study,
        resolve_storage,
    )

    out = Path(args.out)
    url = resolve_storage(args.storage)
    _check_bundle_path(out)
    for flag, value in (("--min-accuracy", args.min_accuracy), ("--max-latency", args.max_latency)):
        if value is not None and not math.isfinite(value):
            raise ParameterError(f"{flag} {value}: pass a finite number.")
    replace = out.exists() and any(out.iterdir())
    if replace and not args.force:
        raise ParameterError(f"--out {out} is not empty; pass --force to replace it.")
    if replace:
        _check_replaceable(out, url)
    study = load_study(url, check_study_name(args.study))
    trial = _choose_trial(study, args)
    store = artifact_store(url)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "model.zip"
        try:
            optuna.artifacts.download_artifact(
                artifact_store=store,
                file_path=str(archive),
                artifact_id=TrialRecord.of(trial).artifact_id,
            )
        except Exception as exc:  # missing artifact store, deleted file
            raise ParameterError(
                f"the model of trial {trial.number} is not in the artifact store ({exc}); if "
                "it was stored in a folder, set $AUTOFHE_ARTIFACTS to that folder."
            ) from None
        staged = Path(tmp) / "bundle"
        manifest = unpack_bundle(archive, staged)  # path-checked, then checksums and versions
        if args.uncompressed:
            staged = _uncompressed(staged, manifest)
        if replace:
            shutil.rmtree(out)
        elif out.exists():
            out.rmdir()
        shutil.move(str(staged), str(out))
    from autofhe.fhe.bundle import read_manifest
    from autofhe.units import megabytes

    measured = TrialRecord.of(trial).measured_latency_s
    metric = (study.metric_names or ["metric"])[0]
    report = read_manifest(out).get("fhe_report") or {}
    keys = report.get("evaluation_keys_bytes")
    keygen = TrialRecord.of(trial).keygen_s
    print(
        f"exported trial {trial.number} of {study.study_name!r} to {out}: {metric} "
        f"{trial.values[0]:.4f} (validation, simulated), latency "
        + (f"{measured:.4g} s measured" if measured else f"{trial.values[1]:.4g} s predicted")
        + (
            f"; a client uploads {megabytes(keys)} of evaluation keys"
            + (" (compressed)" if report.get("compress_evaluation_keys") else " (uncompressed)")
            if keys is not None
            else ""
        )
        + (f", generated in {keygen:.1f} s" if keygen is not None else "")
    )
    digest = bundle_digest(out)
    print(f"digest:   {digest}")
    print(f"          client/ {bundle_digest(out / 'client')}")
    print(f"          server/ {bundle_digest(out / 'server')}")
    model = shlex.quote(str(out))
    print(f"predict:  autofhe predict --model {model} --data X.npy --fhe execute --digest {digest}")
    return 0


def _uncompressed(bundle, manifest: dict):
    """``bundle`` compiled again with uncompressed evaluation keys and inputs (``export
    --uncompressed``), beside it."""
    from autofhe.fhe.bundle import load_model, manifest_extras, save_bundle

    model = load_model(bundle).recompiled(compress=False)
    return save_bundle(model, bundle.with_name("uncompressed"), manifest_extras(manifest))


def _check_key_dir(keys: str | None) -> None:
    """``--keys``: a folder, or a new one this user may create (never a file)."""
    import os
    from pathlib import Path

    if keys is None:
        return
    path = Path(keys)
    if not keys.strip():
        raise ParameterError("--keys is empty; pass a folder, or leave --keys out.")
    if path.exists() and not path.is_dir():
        raise ParameterError(f"--keys {keys} is a file; pass a folder for the keys.")
    existing = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ParameterError(
            f"--keys {keys}: {existing} is not a folder this user can write; pass another."
        )


def cmd_predict(args: argparse.Namespace) -> int:
    from autofhe.data import load_features
    from autofhe.fhe.deploy import predict_bundle

    _check_out(args.out)  # before the (possibly long) encrypted run, not after it
    X = load_features(args.data, label_column=args.label_column)
    pred, _ = predict_bundle(
        args.model, X, fhe=args.fhe, progress=not args.quiet, digest=args.digest
    )
    return _write_predictions(pred, args.out, f"predictions ({args.fhe})")


def _check_bundle_path(out) -> None:
    """``export --out``: a folder that exists, or a new path in a folder that exists; never a
    symbolic link (it would send the bundle elsewhere) nor a path under a file."""
    if out.is_symlink():
        raise ParameterError(
            f"--out {out} is a symbolic link; pass the folder itself (or a new path)."
        )
    if out.exists() and not out.is_dir():
        raise ParameterError(f"--out {out} is a file; pass a directory path.")
    parent = out.absolute().parent
    if not parent.is_dir():
        what = "is a file" if parent.exists() or _under_a_file(parent) else "does not exist"
        raise ParameterError(
            f"--out {out}: its folder {parent} {what}; pass a path in an existing folder."
        )


def _under_a_file(path) -> bool:
    return any(p.is_file() for p in path.parents)


def _check_out(out: str | None) -> None:
    """Refuse a predictions path that cannot be written, before any work is done."""
    from pathlib import Path

    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise ParameterError(f"--out {out} is a directory; pass a file path such as p.npy.")
    if not path.parent.is_dir():
        raise ParameterError(
            f"--out {out}: directory {path.parent} does not exist; create it or pass another path."
        )


def _write_predictions(pred, out: str | None, what: str) -> int:
    """To ``out`` (.npy, no pickle) when given, else one per line on stdout."""
    import numpy as np

    if out:
        with open(out, "wb") as f:  # exactly this path (np.save would add .npy to a .txt)
            np.save(f, pred, allow_pickle=False)
        print(f"{len(pred)} {what} written to {out} (.npy format)")
    else:
        for value in pred:
            print(value)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from autofhe.fhe.listen import bind
    from autofhe.fhe.progress import Progress
    from autofhe.fhe.serve import make_app, run_server
    from autofhe.fhe.service import ServeLimits, Service
    from autofhe.units import megabytes, parse_size

    limits = ServeLimits(
        timeout=args.timeout,
        max_uploads=args.max_uploads,
        max_memory=parse_size(args.max_memory) if args.max_memory else None,
        max_key_sets=args.max_key_sets,
    ).checked()
    sock = bind(args.host, args.port)  # a bad address or a busy port: said before compiling
    progress = Progress(quiet=args.quiet)
    service = Service(args.model, args.digest, limits, progress)
    host, port = sock.getsockname()[:2]
    print(
        f"serving {args.model} on http://{host}:{port} (OpenAPI: /openapi.json); each client "
        f"uploads {megabytes(service.key_bytes)} of evaluation keys once, {service.capacity} "
        f"key set{'s' if service.capacity != 1 else ''} held at most; Ctrl-C stops",
        flush=True,
    )
    run_server(make_app(service, progress), sock, limits)
    return 0


def cmd_remote_predict(args: argparse.Namespace) -> int:
    from autofhe.data import load_features
    from autofhe.fhe.progress import Progress
    from autofhe.fhe.remote import HttpClient, check_url

    check_url(args.url)  # before any file is read or key generated
    _check_out(args.out)
    _check_key_dir(args.keys)
    X = load_features(args.data, label_column=args.label_column)
    progress = Progress(quiet=args.quiet)
    with HttpClient(
        args.url, args.model, args.keys, args.digest, progress, timeout=args.timeout
    ) as client:
        pred = client.predict(X)
    return _write_predictions(pred, args.out, "encrypted predictions")
