"""Price before training vs prediction after training and compiling, side by side.

    python benchmarks/pricing.py [--epochs 20]

For each configuration (shapes a search draws: 1-3 layers, 2-8-bit weights, narrow and wide
accumulators, 4-7-bit lookups, ReLU / Tanh / Sigmoid) on the protocol's split of circles,
breast_cancer, wine and digits: the price (autofhe.search.price.pricing, no training), the cost
model's prediction for the trained and compiled model, and their relative error. Prints the
median and largest error and the seconds spent pricing (compile of a stand-in circuit).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np

from autofhe import NeuralNetClassifier
from autofhe.fhe.latency import load_cost_model
from autofhe.search.price.pricing import price

from protocol import split, table

warnings.filterwarnings("ignore")

CONFIGS = [
    (
        "circles",
        {
            "module__n_hidden_neurons_multiplier": 4,
            "n_w_bits": 3,
            "n_a_bits": 4,
            "n_accum_bits": 8,
            "module__lookup_bits": 5,
        },
    ),
    (
        "circles",
        {"module__n_hidden_neurons_multiplier": 3, "n_w_bits": 3, "n_a_bits": 3, "n_accum_bits": 6},
    ),
    (
        "circles",
        {
            "module__n_hidden_neurons_multiplier": 8,
            "n_w_bits": 4,
            "n_a_bits": 4,
            "n_accum_bits": 9,
            "module__lookup_bits": 6,
        },
    ),
    (
        "circles",
        {
            "module__n_layers": 3,
            "module__n_hidden_neurons_multiplier": 3,
            "n_w_bits": 3,
            "n_a_bits": 3,
            "n_accum_bits": 7,
            "module__lookup_bits": 5,
        },
    ),
    (
        "circles",
        {
            "module__n_hidden_neurons_multiplier": 1,
            "n_w_bits": 2,
            "n_a_bits": 6,
            "n_accum_bits": 9,
            "module__lookup_bits": 7,
        },
    ),
    ("breast_cancer", {"module__n_layers": 1, "n_w_bits": 4, "n_a_bits": 4, "n_accum_bits": 10}),
    (
        "breast_cancer",
        {"module__n_hidden_neurons_multiplier": 0.25, "n_accum_bits": 8, "module__lookup_bits": 5},
    ),
    (
        "breast_cancer",
        {
            "module__n_hidden_neurons_multiplier": 0.1,
            "n_w_bits": 5,
            "n_a_bits": 3,
            "n_accum_bits": 10,
            "module__lookup_bits": 6,
            "module__activation_function": "Tanh",
        },
    ),
    (
        "wine",
        {
            "module__n_hidden_neurons_multiplier": 0.5,
            "n_w_bits": 3,
            "n_a_bits": 3,
            "n_accum_bits": 7,
            "module__activation_function": "Sigmoid",
            "module__lookup_bits": 5,
        },
    ),
    (
        "wine",
        {
            "module__n_hidden_neurons_multiplier": 1,
            "n_w_bits": 2,
            "n_a_bits": 2,
            "n_accum_bits": 6,
            "module__activation_function": "Tanh",
        },
    ),
    ("digits", {"module__n_layers": 1, "n_w_bits": 6, "n_a_bits": 4, "n_accum_bits": 12}),
    (
        "digits",
        {
            "module__n_hidden_neurons_multiplier": 0.25,
            "n_w_bits": 3,
            "n_a_bits": 3,
            "n_accum_bits": 8,
            "module__lookup_bits": 5,
        },
    ),
    (
        "digits",
        {
            "module__n_hidden_neurons_multiplier": 0.125,
            "n_w_bits": 4,
            "n_a_bits": 3,
            "n_accum_bits": 9,
            "module__lookup_bits": 4,
        },
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    cost_model = load_cost_model()
    rows, errors = [], []
    for name, params in CONFIGS:
        Xtr, _, ytr, _ = split(name)
        t0 = time.perf_counter()
        p = price(params, Xtr.shape[1], len(np.unique(ytr)), cost_model)
        priced_s = time.perf_counter() - t0
        model = NeuralNetClassifier(max_epochs=args.epochs, lr=0.01, random_state=0, **params)
        model.fit(Xtr, ytr)
        lookup = params.get("module__lookup_bits")
        model.compile(Xtr, **({"lookup_bits": lookup} if lookup else {}))
        report = model.fhe_report()
        predicted = cost_model.predict(report)
        err = abs(p.latency_s - predicted) / predicted
        errors.append(err)
        rows.append(
            {
                "data": name,
                "config": ", ".join(f"{k.split('__')[-1]}={v}" for k, v in params.items()),
                "lookups@bits": f"{report['lookups_per_layer']}@{report['lookup_bits_per_layer']}",
                "priced@bits": f"{list(p.lookup_bits)}",
                "priced s": f"{p.latency_s:.4f}",
                "compiled s": f"{predicted:.4f}",
                "error": f"{err:.0%}",
                "pricing s": f"{priced_s:.2f}",
            }
        )
        print(rows[-1], flush=True)
    print(table(rows, list(rows[0])))
    print(
        f"\n|price - prediction after compile| / prediction over {len(errors)} configurations: "
        f"median {statistics.median(errors):.0%}, largest {max(errors):.0%}"
    )


if __name__ == "__main__":
    main()
