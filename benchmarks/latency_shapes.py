"""Measured vs predicted FHE latency over circuits shaped like the ones searches produce.

Random shapes (1-2 hidden layers of 1-24 neurons, 5-8-bit lookups with 0-4 low bits
truncated, 2-64 inputs, 1-10 outputs, 2-7-bit weights) are built as the pricing stand-in
programs (``autofhe.search.pricing``), compiled, and timed under real encryption: key
generation, then the median of ``--samples`` encrypt / run / decrypt. Each record (the circuit
report, concrete's statistics, the timings) is appended to ``--out`` as one JSON line, so a
cost model can be refitted offline; the current model's error is printed per circuit.

Run it with nothing else on the machine:

    python benchmarks/latency_shapes.py [--n 40] [--seed 0] [--out shapes.jsonl]
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
from autofhe.fhe.standin import Shape, stand_in

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
    args = parser.parse_args()
    cost = load_cost_model()
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
