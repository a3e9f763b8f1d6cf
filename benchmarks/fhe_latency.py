"""Encrypted-inference latency of autofhe models, measured and predicted, side by side.

    python benchmarks/fhe_latency.py [--samples 5] [--only breast_cancer ...]
                                     [--peer PATH_TO_CONCRETE_ML_PYTHON]

For each configuration (protocol: benchmarks/protocol.py): simulated test accuracy, lookups
per layer and their precision, PBS count, key size, key generation time, measured latency per
sample (median of encrypt + run + decrypt over --samples samples after key generation; the
first, cold sample is shown too), the cost model's prediction, and the circuit's floor
(lookups x the per-lookup cost this machine class shows at their precision, ANCHORS.md).

--peer runs Concrete ML's NeuralNetClassifier defaults in the same run through
../shared/peer/concrete_ml_baseline.py (set up by ../shared/peer/setup_concrete_ml.sh).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import warnings
from pathlib import Path

import numpy as np

from autofhe import NeuralNetClassifier
from autofhe.fhe.latency import load_cost_model, measure_latency, predict_latency

from protocol import split, table

warnings.filterwarnings("ignore")

#: Seconds per lookup, amortised on this machine class's 2 cores (ANCHORS.md, 16 lookups).
ANCHOR_LOOKUP_S = {2: 0.009, 3: 0.009, 4: 0.0115, 5: 0.012, 6: 0.028, 7: 0.062, 8: 0.144}
E50 = {"max_epochs": 50, "lr": 0.003}
E100 = {"max_epochs": 100, "lr": 0.01}
#: Many epochs, cosine-annealed: steady training of tiny hidden layers.
E300C = {"max_epochs": 300, "lr": 0.02, "lr_schedule": "cosine"}
#: Trained for 5-bit lookups (training sees the truncation), best of three starts.
TRAINED_L5 = {"n_a_bits": 4, "n_accum_bits": 8, "module__lookup_bits": 5, "n_init": 3}
CONFIGS = [
    ("breast_cancer", "linear 3/3 bits", {**E50, "module__n_layers": 1}, {}),
    (
        "breast_cancer",
        "linear 4/4 bits",
        {**E50, "module__n_layers": 1, "n_w_bits": 4, "n_a_bits": 4},
        {},
    ),
    (
        "breast_cancer",
        "8 ReLU, acc 8",
        {**E50, "module__n_hidden_neurons_multiplier": 0.25, "n_accum_bits": 8},
        {},
    ),
    (
        "breast_cancer",
        "2x8 ReLU, 5-bit lookups",
        {**E50, "module__n_layers": 3, "module__n_hidden_neurons_multiplier": 0.25},
        {"lookup_bits": 5},
    ),
    ("wine", "linear 3/3 bits", {"module__n_layers": 1}, {}),
    ("wine", "7 ReLU", {"module__n_hidden_neurons_multiplier": 0.5}, {}),
    (
        "wine",
        "7 Sigmoid, 5-bit lookups",
        {"module__n_hidden_neurons_multiplier": 0.5, "module__activation_function": "Sigmoid"},
        {"lookup_bits": 5},
    ),
    (
        "wine",
        "13 Tanh 2/2 bits",
        {
            "module__n_hidden_neurons_multiplier": 1,
            "module__activation_function": "Tanh",
            "n_w_bits": 2,
            "n_a_bits": 2,
        },
        {},
    ),
    (
        "digits",
        "linear 4/4 bits",
        {**E100, "module__n_layers": 1, "n_w_bits": 4, "n_a_bits": 4},
        {},
    ),
    (
        "digits",
        "linear, 8-bit weights, 3-bit inputs",
        {**E100, "module__n_layers": 1, "n_w_bits": 8, "n_a_bits": 3},
        {},
    ),
    (
        "digits",
        "linear 8/3 bits, cosine, weight decay 1e-3",
        {
            **E100,
            "module__n_layers": 1,
            "n_w_bits": 8,
            "n_a_bits": 3,
            "lr_schedule": "cosine",
            "optimizer__weight_decay": 1e-3,
        },
        {},
    ),
    (
        "digits",
        "16 ReLU, 5-bit lookups",
        {**E100, "module__n_hidden_neurons_multiplier": 0.25},
        {"lookup_bits": 5},
    ),
    # circles labels give w/a bits (weights / inputs and activations)
    (
        "circles",
        "8 ReLU 3/4 bits",
        {**E100, "module__n_hidden_neurons_multiplier": 4, "n_a_bits": 4},
        {},
    ),
    (
        "circles",
        "16 ReLU 3/4 bits, 6-bit lookups",
        {**E100, "module__n_hidden_neurons_multiplier": 8, "n_a_bits": 4},
        {"lookup_bits": 6},
    ),
    (
        "circles",
        "8 ReLU 3/3, acc 6 (6-bit lookups, no truncation), cosine 300 ep",
        {**E300C, "module__n_hidden_neurons_multiplier": 4, "n_accum_bits": 6},
        {},
    ),
    (
        "circles",
        "6 ReLU 3/4, acc 8, cosine 300 ep, 5-bit lookups",
        {**E300C, "module__n_hidden_neurons_multiplier": 3, "n_a_bits": 4, "n_accum_bits": 8},
        {"lookup_bits": 5},
    ),
    (
        "circles",
        "8 ReLU 3/4, acc 8, cosine 300 ep, 5-bit lookups",
        {**E300C, "module__n_hidden_neurons_multiplier": 4, "n_a_bits": 4, "n_accum_bits": 8},
        {"lookup_bits": 5},
    ),
    (
        "circles",
        "6 ReLU 3/4, acc 8, cosine 300 ep, trained for 5-bit lookups, best of 3 starts",
        {**E300C, **TRAINED_L5, "module__n_hidden_neurons_multiplier": 3},
        {},
    ),
    (
        "circles",
        "5 ReLU 3/4, acc 8, cosine 300 ep, trained for 5-bit lookups, best of 3 starts",
        {**E300C, **TRAINED_L5, "module__n_hidden_neurons_multiplier": 2.5},
        {},
    ),
]


def floor_seconds(report: dict, cores: int = 2) -> float:
    """Lookups of each layer x the anchored per-lookup cost at their precision (truncation
    PBS counted at 3 bits)."""
    total = 0.0
    for n, bits, lsbs in zip(
        report["lookups_per_layer"],
        report["lookup_bits_per_layer"],
        report["lsbs_removed_per_layer"],
    ):
        cost = ANCHOR_LOOKUP_S.get(bits, ANCHOR_LOOKUP_S[8] * 8 ** ((bits - 8) / 2))
        total += n * (cost + lsbs * ANCHOR_LOOKUP_S[3])
    return total


def peer(python: str, dataset: str) -> dict | None:
    script = Path(__file__).resolve().parents[2] / "shared" / "peer" / "concrete_ml_baseline.py"
    out = subprocess.run(
        [python, str(script), dataset, "--epochs", "10", "--n-exec", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--peer", default=None, help="python of a Concrete ML environment")
    args = parser.parse_args()
    cost_model = load_cost_model()
    rows, errors, splits = [], [], {}
    for dataset, label, params, compile_kw in CONFIGS:
        if args.only and dataset not in args.only:
            continue
        Xtr, Xte, ytr, yte = splits.setdefault(dataset, split(dataset))
        model = NeuralNetClassifier(random_state=0, **params).fit(Xtr, ytr)
        model.compile(Xtr, **compile_kw)
        report = model.fhe_report()
        acc = float(np.mean(model.predict(Xte, fhe="simulate") == yte))
        predicted = predict_latency(model.compiled_model, cost_model)
        measured = measure_latency(model.compiled_model, Xte, n=args.samples)
        floor = floor_seconds(report)
        errors.append(abs(predicted - measured["latency_s"]) / measured["latency_s"])
        rows.append(
            {
                "dataset": dataset,
                "config": label,
                "sim acc": f"{acc:.3f}",
                "lookups": report["lookups_per_layer"],
                "bits": report["lookup_bits_per_layer"],
                "PBS": report["pbs_count"],
                "keys MB": f"{report['evaluation_keys_bytes'] / 1e6:.0f}",  # as uploaded
                "keygen s": f"{measured['keygen_s']:.1f}",
                "latency s (cold)": (
                    f"{measured['latency_s']:.3f} ({measured['first_sample_s']:.3f})"
                ),
                "predicted s": f"{predicted:.3f}",
                "measured/floor": f"{measured['latency_s'] / floor:.2f}" if floor else "-",
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if args.peer:
        for dataset in sorted({r["dataset"] for r in rows} - {"circles"}):
            res = peer(args.peer, dataset)
            if res:
                rows.append(
                    {
                        "dataset": dataset,
                        "config": "Concrete ML NeuralNetClassifier defaults",
                        "sim acc": f"{res['simulated']:.3f}",
                        "PBS": res["pbs_count"],
                        "keygen s": f"{res['keygen_s']:.1f}",
                        "latency s (cold)": f"{res['fhe_latency_median_s']:.3f}",
                    }
                )
    print()
    print(table(rows, list(rows[0])))
    print(
        f"\ncost model: median |predicted - measured| / measured = "
        f"{100 * statistics.median(errors):.0f}% over {len(errors)} configurations "
        f"(max {100 * max(errors):.0f}%)"
    )


if __name__ == "__main__":
    main()
