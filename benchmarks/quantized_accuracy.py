"""Clear quantized accuracy of autofhe's estimators next to scikit-learn's float MLP.

    python benchmarks/quantized_accuracy.py [--seeds 3] [--datasets breast_cancer wine digits]

Protocol: benchmarks/protocol.py. Each autofhe figure is the mean test accuracy over
``--seeds`` training seeds (min-max in brackets); "gap" is that mean minus the float MLP.
Target (issue 2): within 1.5 points of float at 3 bits on every dataset.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from autofhe import NeuralNetClassifier

from protocol import CLASSIFICATION_SETS, float_mlp_accuracy, split, table

warnings.filterwarnings("ignore")

LONG = {"max_epochs": 50, "lr": 0.003}
CONFIGS = [
    ("2 layers, 3 bits, seed defaults (10 ep, lr 1e-3)", {}),
    ("2 layers, 3 bits, 50 ep lr 3e-3", LONG),
    ("2 layers, 3 bits, 50 ep, n_accum_bits=8", {**LONG, "n_accum_bits": 8}),
    ("2 layers, 3 bits, 50 ep, n_accum_bits=6 (min)", {**LONG, "n_accum_bits": 6}),
    ("3 layers, 3 bits, 50 ep", {**LONG, "module__n_layers": 3}),
    ("1 layer (linear), 3 bits, 50 ep", {**LONG, "module__n_layers": 1}),
    ("2 layers, 2 bits, 50 ep", {**LONG, "n_w_bits": 2, "n_a_bits": 2}),
    ("2 layers, 4 bits, 50 ep", {**LONG, "n_w_bits": 4, "n_a_bits": 4}),
    ("2 layers, 3 bits, 50 ep, no po2 scaling", {**LONG, "power_of_two_scaling": False}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=list(CLASSIFICATION_SETS))
    args = parser.parse_args()
    rows = []
    for name in args.datasets:
        Xtr, Xte, ytr, yte = split(name)
        flt = float_mlp_accuracy(Xtr, Xte, ytr, yte)
        rows.append(
            {"dataset": name, "config": "float MLPClassifier (sklearn)", "acc": f"{flt:.3f}"}
        )
        for label, params in CONFIGS:
            t0 = time.perf_counter()
            accs, bits = [], None
            for seed in range(args.seeds):
                model = NeuralNetClassifier(random_state=seed, **params).fit(Xtr, ytr)
                accs.append(model.score(Xte, yte))
                bits = model.accumulator_bits_
            mean = float(np.mean(accs))
            rows.append(
                {
                    "dataset": name,
                    "config": label,
                    "acc": f"{mean:.3f} [{min(accs):.3f}-{max(accs):.3f}]",
                    "gap": f"{100 * (mean - flt):+.1f} pt",
                    "acc bits/layer": bits,
                    "fit s": f"{(time.perf_counter() - t0) / args.seeds:.1f}",
                }
            )
            print(f"{name}: {label}: {rows[-1]['acc']}", flush=True)
    print()
    print(table(rows, ["dataset", "config", "acc", "gap", "acc bits/layer", "fit s"]))


if __name__ == "__main__":
    main()
