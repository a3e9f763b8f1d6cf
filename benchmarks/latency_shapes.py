"""Measured vs predicted FHE latency over circuits shaped like the ones searches produce.

Random shapes (1-2 hidden layers of 1-24 neurons, 5-8-bit lookups with 0-4 low bits
truncated, 2-64 inputs, 1-10 outputs, 2-7-bit weights) are built as the pricing stand-in
programs (``autofhe.search.price.pricing``), compiled, and timed under real encryption: key
generation, then the median of ``--samples`` encrypt / run / decrypt. Each record (the circuit
report, concrete's statistics, the timings) is appended to ``--out`` as one JSON line, so a
cost model can be refitted offline; the current model's error is printed per circuit.

Run it with nothing else on the machine:

    python benchmarks/latency_shapes.py [--n 40] [--seed 0] [--out shapes.jsonl]
    python benchmarks/latency_shapes.py --issue-shapes   # issue 17's front-model shapes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

import numpy as np

from autofhe.errors import AutofheError
from autofhe.fhe.compile import circuit_report, compile_program
from autofhe.fhe.latency import load_cost_model, measure_circuit
from autofhe.fhe.standin import Shape, stand_in, stand_in_samples

warnings.filterwarnings("ignore")


def random_shape(rng: np.random.Generator) -> Shape:
    n_in = int(rng.choice([2, 4, 6, 8, 13, 30, 64]))
    n_out = int(rng.choice([1, 2, 2, 3, 10]))
    n_hidden_layers = int(rng.choice([1, 1, 2]))
    width = int(rng.choice([1, 2, 3, 4, 6, 8, 12, 16, 24]))
    n_w, n_a = int(rng.integers(2, 8)), int(rng.integers(2, 6))
    lookup = int(rng.integers(5, 9))
    lsbs = int(rng.choice([0, 0, 1, 2, 3, 4]))
    signed = bool(rng.random() < 0.3)
    dims = (n_in, *([width] * n_hidden_layers), n_out)
    acc = lookup + lsbs
    return Shape(dims, n_w, n_a, signed, (acc,) * (len(dims) - 1), (lsbs,) * n_hidden_layers + (0,))


#: The shapes of issue 17's table of front models (lookups @ bits, layers, bit widths), on
#: stand-in weights: (name, shape). Hidden accumulators are the lookup bits plus the low bits
#: cut; the output layer's budget leaves it a weight per input (a zero layer would be pruned).
ISSUE_SHAPES = [
    ("binary seed config, 24 @ 6", Shape((30, 24, 2), 3, 3, False, (8, 8), (2, 0))),
    ("binary 2 layers 8/7 bits, 4 @ 6", Shape((30, 4, 2), 8, 7, False, (16, 16), (10, 0))),
    ("multiclass 2 layers 3/4 bits, 7 @ 8", Shape((13, 7, 3), 3, 4, False, (10, 10), (2, 0))),
    ("circles 2 layers 5/3 bits, 3 @ 5", Shape((2, 3, 2), 5, 3, False, (7, 10), (2, 0))),
    ("binary 2 layers 2/6 bits, 2 @ 7", Shape((30, 2, 2), 2, 6, False, (9, 9), (2, 0))),
]


def circles_model_row(cost, samples: int) -> tuple[str, float, float]:
    """The issue's circles model itself: trained on make_circles, compiled, measured."""
    from sklearn.datasets import make_circles

    from autofhe import NeuralNetClassifier
    from autofhe.fhe.latency import measure_latency

    X, y = make_circles(1000, noise=0.2, factor=0.5, random_state=0)
    X = X.astype(np.float32)
    model = NeuralNetClassifier(
        module__n_layers=2,
        module__n_hidden_neurons_multiplier=1.5,  # 3 neurons on 2 inputs
        n_w_bits=5,
        n_a_bits=3,
        module__lookup_bits=5,
        max_epochs=30,
        random_state=0,
    ).fit(X, y)
    model.compile(X)
    report = model.fhe_report()
    measured = measure_latency(model.compiled_model, X, n=samples)["latency_s"]
    name = (
        f"circles model itself, {report['lookups_per_layer']} @ {report['lookup_bits_per_layer']}"
    )
    return name, cost.predict(report), measured


def issue_shapes(cost, samples: int) -> None:
    rows = []
    for name, shape in ISSUE_SHAPES:
        program = stand_in(shape)
        X = stand_in_samples(shape)
        circuit = compile_program(program, X)
        report = circuit_report(circuit, program)
        measured = measure_circuit(circuit, X[:samples], samples)["latency_s"]
        got = f"{report['lookups_per_layer']} @ {report['lookup_bits_per_layer']}"
        rows.append((f"{name} (stand-in: {got})", cost.predict(report), measured))
    rows.append(circles_model_row(cost, samples))
    for name, predicted, measured in rows:
        error = abs(predicted - measured) / measured
        flag = "ok" if error <= 0.30 else "OVER 30%"
        print(
            f"{name:<62} predicted {predicted:.3f} s, measured {measured:.3f} s: "
            f"error {error:.0%} {flag}"
        )


def extra_stats(circuit) -> dict:
    """concrete's counts that the circuit report leaves out (key switches, leveled ops)."""
    stats = circuit.statistics

    def per_param(name):
        return {str(k): int(v) for k, v in stats.get(name, {}).items()}

    return {
        "key_switch_count": int(stats.get("key_switch_count", 0)),
        "key_switch_per_parameter": per_param("key_switch_count_per_parameter"),
        "clear_multiplication_per_parameter": per_param("clear_multiplication_count_per_parameter"),
        "encrypted_addition_per_parameter": per_param("encrypted_addition_count_per_parameter"),
        "size_of_secret_keys": int(stats["size_of_secret_keys"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--max-predicted", type=float, default=3.0)
    parser.add_argument("--out", default="latency_shapes.jsonl")
    parser.add_argument("--issue-shapes", action="store_true", help="the issue 17 table's shapes")
    args = parser.parse_args()
    cost = load_cost_model()
    if args.issue_shapes:
        issue_shapes(cost, args.samples)
        return
    rng = np.random.default_rng(args.seed)
    errors = []
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    head = ("shape", "bits w/a", "acc/lsb", "pbs", "pred s", "meas s", "m/p")
    print("{:<26} {:>8} {:>7} {:>4} {:>7} {:>7} {:>5}".format(*head))
    done = 0
    while done < args.n:
        shape = random_shape(rng)
        program = stand_in(shape)
        low, high = -(2 ** (shape.n_a_bits - 1)), 2 ** (shape.n_a_bits - 1) - 1
        X = rng.integers(low, high + 1, size=(32, shape.dims[0]))
        try:
            circuit = compile_program(program, list(X))
        except AutofheError:
            continue
        report = circuit_report(circuit, program)
        predicted = cost.predict(report)
        if predicted > args.max_predicted:
            continue
        timing = measure_circuit(circuit, list(X[: args.samples]), args.samples)
        record = {
            "shape": {**shape.__dict__, "dims": list(shape.dims)},
            "report": report,
            "extra": extra_stats(circuit),
            "timing": timing,
            "predicted_s": predicted,
            "load": os.getloadavg()[0],
            "time": time.time(),
        }
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
        ratio = timing["latency_s"] / predicted
        errors.append(abs(predicted - timing["latency_s"]) / timing["latency_s"])
        print(
            f"{shape.dims!s:<26} {shape.n_w_bits}/{shape.n_a_bits:<6} "
            f"{shape.acc_bits[0]:>3}/{shape.lsbs[0]:<3} {report['pbs_count']:>4} "
            f"{predicted:7.3f} {timing['latency_s']:7.3f} {ratio:5.2f}",
            flush=True,
        )
        done += 1
    print(
        f"{done} circuits: median |pred - meas| / meas {statistics.median(errors):.0%}, "
        f"largest {max(errors):.0%}; load average at end {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
