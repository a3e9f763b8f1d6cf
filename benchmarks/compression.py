"""What compressed evaluation keys and inputs save, and what they cost, on one circuit.

    .venv/bin/python benchmarks/compression.py                 # circles, 10 lookups at 5 bits
    .venv/bin/python benchmarks/compression.py --hidden 6 --rows 100

One trained network is compiled twice, compressed (autofhe's default) and uncompressed (what
bundles were before), and both are measured in this one process, side by side:

- bytes a client uploads for ``--rows`` remote predictions: the evaluation keys once, plus one
  encrypted input per row (both ratios printed);
- key generation time, the first run after loading the keys (which decompresses them), and
  the steady encrypt + run + decrypt time per sample: median of ``--samples`` runs, the two
  circuits alternating run by run so that a change in the machine's load hits both alike.

Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

from autofhe import NeuralNetClassifier
from autofhe.units import megabytes

from protocol import split, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=float, default=5.0, help="hidden neurons per feature")
    parser.add_argument("--rows", type=int, default=100, help="rows a client predicts")
    parser.add_argument("--samples", type=int, default=30, help="timed runs per circuit")
    args = parser.parse_args()
    Xtr, Xte, ytr, _ = split("circles")
    model = NeuralNetClassifier(
        module__n_layers=2,
        module__n_hidden_neurons_multiplier=args.hidden,
        n_w_bits=3,
        n_a_bits=3,
        module__lookup_bits=5,
        max_epochs=30,
        random_state=0,
    ).fit(Xtr, ytr)
    x_int = model.program.quantize(Xte)
    circuits, rows = {}, []
    for compress in (True, False):
        model.compile(Xtr, compress=compress)
        circuit = model.fhe_circuit
        t0 = time.perf_counter()
        circuit.keygen(force=True)
        keygen = time.perf_counter() - t0
        keys = len(circuit.client.evaluation_keys.serialize())
        one_input = len(circuit.client.encrypt(x_int[0]).serialize())
        t0 = time.perf_counter()  # the first run with fresh keys decompresses them
        circuit.decrypt(circuit.run(circuit.encrypt(x_int[0])))
        first = time.perf_counter() - t0
        circuits[compress] = circuit
        rows.append(
            {
                "keys": "compressed" if compress else "uncompressed",
                "lookups": model.fhe_report()["lookups_per_layer"],
                "evaluation keys": megabytes(keys),
                "one input": megabytes(one_input),
                f"upload for {args.rows} rows": megabytes(keys + args.rows * one_input),
                "keygen s": f"{keygen:.2f}",
                "first run s": f"{first:.3f}",
                "_upload": keys + args.rows * one_input,
                "_keys": keys,
                "_input": one_input,
            }
        )
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.samples):
        for compress, circuit in circuits.items():
            x = x_int[i % len(x_int)]
            t0 = time.perf_counter()
            circuit.decrypt(circuit.run(circuit.encrypt(x)))
            times[compress].append(time.perf_counter() - t0)
    for row, compress in zip(rows, (True, False)):
        row["steady s/sample"] = f"{statistics.median(times[compress]):.4f}"
    print(table(rows, [c for c in rows[0] if not c.startswith("_")]))
    comp, plain = rows
    print(
        f"uncompressed / compressed: keys {plain['_keys'] / comp['_keys']:.2f}x, one input "
        f"{plain['_input'] / comp['_input']:.1f}x, upload for {args.rows} rows "
        f"{plain['_upload'] / comp['_upload']:.2f}x; steady latency compressed / uncompressed "
        f"{statistics.median(times[True]) / statistics.median(times[False]):.3f}"
    )


if __name__ == "__main__":
    main()
