"""Run a bundle's server part with concrete-python and numpy only (no autofhe installed).

    python plain_concrete_server.py model/server '[3, -1, 0, ...]'

Rebuilds the circuit from ``server/program.json`` exactly as autofhe's server does, checks
that its client specs are ``server/client.specs.json`` (so clients' keys fit it), then, for
the demonstration, generates keys, encrypts the quantized row given as JSON, runs it and
prints the decrypted output accumulator as JSON.
"""

import json
import sys
from pathlib import Path

import numpy as np
from concrete import fhe


def circuit_of(program: dict):
    layers = program["layers"]
    weights = [np.array(layer["weight"], dtype=np.int64) for layer in layers]

    def run(x):
        h = fhe.hint(x, bit_width=program["input_bits"])
        for layer, w in zip(layers, weights):
            acc = fhe.hint(h @ w.T + np.array(layer["bias"]), bit_width=layer["acc_bits"])
            if "table" not in layer:
                return acc
            if layer["lsbs_to_remove"] and layer["rounding"] == "approximate":
                acc = fhe.round_bit_pattern(
                    acc, lsbs_to_remove=layer["lsbs_to_remove"], exactness=fhe.Exactness.APPROXIMATE
                )
            elif layer["lsbs_to_remove"]:
                acc = fhe.truncate_bit_pattern(acc, lsbs_to_remove=layer["lsbs_to_remove"])
            h = fhe.LookupTable([fhe.LookupTable(row) for row in layer["table"]])[acc]

    # the data-free inputs autofhe compiles with: the two extreme rows, then uniform rows
    bits, n = program["input_bits"], len(layers[0]["weight"][0])
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    settings = program["compile"]
    rng = np.random.default_rng(settings["inputset"]["seed"])
    rows = rng.integers(low, high, endpoint=True, size=(settings["inputset"]["random_rows"], n))
    inputset = [np.full(n, low), np.full(n, high), *rows]
    compress = settings.get("compress", False)  # seeded keys and inputs (autofhe's default)
    config = fhe.Configuration(
        p_error=settings["p_error"],
        global_p_error=settings["global_p_error"],
        compress_evaluation_keys=compress,
        compress_input_ciphertexts=compress,
    )
    return fhe.Compiler(run, {"x": "encrypted"}).compile(inputset, config)


if __name__ == "__main__":
    server = Path(sys.argv[1])
    circuit = circuit_of(json.loads((server / "program.json").read_text()))
    expected = json.loads((server / "client.specs.json").read_text())
    if json.loads(circuit.client.specs.serialize()) != expected:
        sys.exit("the rebuilt circuit's client specs differ from client.specs.json")
    client = fhe.Client(fhe.ClientSpecs.deserialize(json.dumps(expected).encode()))
    client.keygen()
    x = np.array(json.loads(sys.argv[2]), dtype=np.int64)
    out = circuit.server.run(client.encrypt(x), evaluation_keys=client.evaluation_keys)
    print(json.dumps(np.asarray(client.decrypt(out)).tolist()))
