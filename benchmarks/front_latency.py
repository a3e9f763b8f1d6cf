"""Predicted vs measured FHE latency of the models real searches put on their fronts.

Short default searches (no spec) run on varied data, as search_targets.py runs them; then
every front model is loaded from its stored bundle and, with nothing else running, measured
under real encryption (key generation, then the median of ``--samples`` encrypt / run /
decrypt). Its prediction is recomputed from the bundle's circuit report with this machine's
current cost model, so a refitted model is judged on the same circuits without new searches
(``--reuse DIR`` re-reads the studies of an earlier run and searches only the missing ones).

Printed: one line per front model, then over the models with table lookups the median and
largest |predicted - measured| / measured, and for each study searched with --max-latency L
the front models whose measured latency exceeds 1.2 L.

    python benchmarks/front_latency.py [--budget 5m] [--datasets circles ...]
                                       [--max-latency circles=0.3 ...] [--reuse DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from search_targets import dataset

from autofhe.fhe.deploy import measure_bundle
from autofhe.fhe.latency import load_cost_model
from autofhe.search.plan.spec import load_spec, parse_duration
from autofhe.search.run.study import open_study
from autofhe.search.run.workers import run_workers
from autofhe.search.store.tables import ParetoStore

from front_models import front_bundles
from protocol import split, table

warnings.filterwarnings("ignore")
optuna.logging.set_verbosity(optuna.logging.WARNING)

DATASETS = ["circles", "moons", "classification6000", "diabetes", "breast_cancer"]


def search(name: str, budget: float, workers: int, workdir: Path, max_latency, cost_model):
    Xtr, _, ytr, _ = split(name)
    spec = load_spec(None)
    if max_latency is not None:
        spec.max_latency = max_latency
    url = f"sqlite:///{workdir}/{name}.db"
    _, _, study_name = open_study(dataset(name, Xtr, ytr), spec, url, None, seed=0)
    run_workers(url, study_name, workers, None, budget, 0, cost_model)


def measure_front(name: str, workdir: Path, cost_model, samples: int) -> list[dict]:
    url = f"sqlite:///{workdir}/{name}.db"
    study_name = optuna.get_all_study_names(url)[0]
    study = optuna.load_study(study_name=study_name, storage=url)
    max_latency = ParetoStore(url).study_info(study_name)["spec"].get("max_latency")
    _, Xte, _, _ = split(name)
    rows = []
    for t, manifest, _, bundle in front_bundles(url, study_name, study.get_trials()):
        report = manifest["fhe_report"]
        measured = measure_bundle(bundle, Xte, n=samples)["latency_s"]
        predicted = cost_model.predict(report)
        rows.append(
            {
                "dataset": name,
                "trial": t.number,
                "lookups": report["lookups_per_layer"],
                "bits": report["lookup_bits_per_layer"],
                "lsbs": report.get("lsbs_removed_per_layer"),
                "pbs": report["pbs_count"],
                "predicted s": round(predicted, 4),
                "measured s": round(measured, 4),
                "m/p": round(measured / predicted, 2),
                "error": abs(predicted - measured) / measured,
                "n_lookups": sum(report["lookups_per_layer"]),
                "max_latency": max_latency,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="5m")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument(
        "--max-latency", nargs="*", default=["circles=0.3"], help="DATASET=SECONDS pairs"
    )
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--reuse", default=None, help="a workdir of an earlier run: its studies")
    args = parser.parse_args()
    limits = {k: float(v) for k, v in (pair.split("=") for pair in args.max_latency)}
    workdir = Path(args.reuse or tempfile.mkdtemp(prefix="autofhe-front-latency-"))
    cost_model = load_cost_model()
    print(f"workdir {workdir}; cost model {cost_model.to_json()}")
    for name in args.datasets:
        if not (workdir / f"{name}.db").exists():  # a study of an earlier run is reused
            t0 = time.perf_counter()
            search(
                name,
                parse_duration(args.budget),
                args.workers,
                workdir,
                limits.get(name),
                cost_model,
            )
            print(f"searched {name} in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    print(f"measuring alone; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for name in args.datasets:
        if (workdir / f"{name}.db").exists():
            rows += measure_front(name, workdir, cost_model, args.samples)
    shown = [
        {k: v for k, v in r.items() if k not in ("error", "n_lookups", "max_latency")} for r in rows
    ]
    print(table(shown, list(shown[0])) if shown else "(no front models)")
    nonlinear = [r for r in rows if r["n_lookups"]]
    if nonlinear:
        errors = [r["error"] for r in nonlinear]
        sets = sorted({r["dataset"] for r in nonlinear})
        print(
            f"models with lookups: {len(nonlinear)} from {len(sets)} datasets ({', '.join(sets)}); "
            f"median |pred - meas| / meas {statistics.median(errors):.1%}, largest "
            f"{max(errors):.1%} (targets <= 20%, <= 50%)"
        )
    linear = [r["error"] for r in rows if not r["n_lookups"]]
    if linear:
        print(
            f"models without lookups: {len(linear)}; median error {statistics.median(linear):.1%}"
        )
    for name in sorted({r["dataset"] for r in rows if r["max_latency"] is not None}):
        limit = next(r["max_latency"] for r in rows if r["dataset"] == name)
        over = [r for r in rows if r["dataset"] == name and r["measured s"] > 1.2 * limit]
        print(
            f"{name} --max-latency {limit}: {len(over)} front models measured over 1.2 x "
            f"{limit} = {1.2 * limit:.3g} s"
            + (f" (trials {[r['trial'] for r in over]})" if over else "")
        )
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
