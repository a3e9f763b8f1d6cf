"""Integer program -> concrete-python circuit, and what the circuit costs.

Construction per hidden layer (see DESIGN.md, layer 2): the accumulator ``h @ W.T + b``
(exact, width guaranteed by the accumulator budget) feeds one table lookup per neuron that
fuses activation and re-quantization. When the accumulator is wide, ``truncate_bit_pattern``
first drops its low bits (exact in every mode, cannot overflow), so the lookup runs at a low,
cheap precision; the table entry of each truncated bucket is the function at the bucket's
centre, so truncation acts as rounding. Measured here (16 neurons, per sample, 2 cores):
lookup on 7-bit accumulators 2.0 s; truncated to 5 bits then looked up 0.45 s; lookup on
5-bit accumulators 0.21 s.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from autofhe.errors import CompilationError, ResourceError
from autofhe.fhe.program import IntegerProgram
from autofhe.fhe.runtime import concrete_fhe, shielded

__all__ = [
    "MAX_LOOKUP_BITS",
    "ROUNDING_MODES",
    "check_key_memory",
    "choose_lsbs",
    "circuit_report",
    "compile_program",
    "evaluation_key_bytes",
    "inputset",
    "r2_agreement",
    "reduced_widths",
    "run_circuit",
]

#: concrete-python cannot compile a table lookup on more than 16 bits.
MAX_LOOKUP_BITS = 16
#: "auto": truncate wide accumulators while the model's outputs barely change; "none": lookup
#: on the whole accumulator; "approximate": concrete's approximate rounding (opt-in, not
#: bit-exact; one PBS per neuron, but on parameters that carry the whole accumulator).
ROUNDING_MODES = ("auto", "none", "approximate")
#: Below this precision a lookup costs about the same as at 3 bits (measured: 5 bits 13 ms,
#: 6 bits 26-33 ms, 7 bits 125 ms per lookup): never truncate under it.
DEFAULT_LOOKUP_BITS = 5
#: "auto" never leaves a lookup wider than this when truncation can narrow it (measured:
#: 8-bit lookups need 3.5 GB of keys, 10-bit ones 16.7 GB).
MAX_AUTO_LOOKUP_BITS = 7
#: Smallest agreement (on the compile set) between rounded and unrounded outputs for "auto".
MIN_AGREEMENT = 0.99
#: Rows of the inputset concrete evaluates to measure bounds (widths are fixed by hints).
INPUTSET_ROWS = 256


def inputset(program: IntegerProgram, X: np.ndarray) -> list[np.ndarray]:
    """Quantized rows for concrete, plus the data-free rows of :func:`synthetic_inputset`."""
    x_int = program.quantize(X)
    if len(x_int) > INPUTSET_ROWS:
        x_int = x_int[np.random.default_rng(0).choice(len(x_int), INPUTSET_ROWS, replace=False)]
    return [*x_int, *synthetic_inputset(program)]


#: Uniform random rows (numpy's default_rng(SYNTHETIC_SEED)) of every inputset.
SYNTHETIC_ROWS = 512
SYNTHETIC_SEED = 0


def synthetic_inputset(program: IntegerProgram) -> list[np.ndarray]:
    """Data-free inputs: the two extreme rows of the input range, then SYNTHETIC_ROWS uniform
    rows. Not every width is fixed by a hint (a truncated accumulator's is measured), and
    uniform rows reach wider values than training rows; a bundle's server, which has no
    data, compiles with these alone and gets the same circuit (the bundle checks it does)."""
    low, high = -(2 ** (program.input_bits - 1)), 2 ** (program.input_bits - 1) - 1
    rng = np.random.default_rng(SYNTHETIC_SEED)
    rows = rng.integers(low, high, endpoint=True, size=(SYNTHETIC_ROWS, program.n_features))
    extremes = np.array([[low] * program.n_features, [high] * program.n_features])
    return [*extremes, *rows]


def reduced_widths(circuit) -> list[int]:
    """Widths of a circuit's reduced accumulators (its truncate / round nodes), in order: the
    width concrete measured on the compile's rows (its bit-width assignment may widen the
    node's type afterwards; the measured width is what a hint must repeat)."""
    import networkx as nx

    names = ("truncate_bit_pattern", "round_bit_pattern")
    return [
        int(node.properties.get("original_bit_width", node.output.dtype.bit_width))
        for node in nx.topological_sort(circuit.graph.graph)
        if node.properties.get("name") in names
    ]


def argmax_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of rows whose class (argmax of the outputs) is unchanged."""
    return float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))


def r2_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """1 - relative squared change of the outputs (R2 of candidate against reference)."""
    ref = reference.astype(np.float64)
    var = ref.var(axis=0).sum()
    return 1.0 - float(((candidate - ref) ** 2).mean(axis=0).sum() / max(var, 1e-12))


def choose_lsbs(
    program: IntegerProgram,
    x_int: np.ndarray,
    rounding: str = "auto",
    lookup_bits: int | None = None,
    agreement=argmax_agreement,
    min_agreement: float = MIN_AGREEMENT,
) -> list[int]:
    """Low bits to drop before each hidden lookup.

    ``lookup_bits`` given: every lookup runs at (at most) that precision. Otherwise, layer by
    layer, the narrowest precision (not under :data:`DEFAULT_LOOKUP_BITS`) at which the
    program's outputs on ``x_int`` still agree with the unrounded program's
    (``agreement(reference, candidate) >= min_agreement``).
    """
    if rounding not in ROUNDING_MODES:
        raise CompilationError(
            f"rounding={rounding!r} is not a rounding mode; use one of {ROUNDING_MODES}."
        )
    lsbs = [0] * len(program.layers)
    if rounding == "none":
        return lsbs
    mode = "approximate" if rounding == "approximate" else "exact"
    if lookup_bits is not None:
        if not 2 <= lookup_bits <= MAX_LOOKUP_BITS:
            raise CompilationError(
                f"lookup_bits={lookup_bits} is out of range: use 2 to {MAX_LOOKUP_BITS}."
            )
        # approximate rounding may carry: its accumulator keeps one more bit
        extra = 1 if mode == "approximate" else 0
        return [
            max(0, layer.acc_bits + extra - lookup_bits) if layer.has_lookup else 0
            for layer in program.layers
        ]
    reference = program.run(x_int)
    for i, layer in enumerate(program.layers[:-1]):
        # Above MAX_AUTO_LOOKUP_BITS a lookup costs seconds and GBs of keys: when no precision
        # keeps the decisions, take the widest one allowed.
        lsbs[i] = max(0, layer.acc_bits - MAX_AUTO_LOOKUP_BITS)
        # narrowest first, down to (not past) the widest lookup allowed
        for k in range(layer.acc_bits - DEFAULT_LOOKUP_BITS, lsbs[i], -1):
            trial = [*lsbs[:i], k, *lsbs[i + 1 :]]
            candidate = program.with_rounding(trial, mode).run(x_int)
            if agreement(reference, candidate) >= min_agreement:
                lsbs[i] = k
                break
    return lsbs


def _check_lookup_bits(program: IntegerProgram) -> None:
    """Every PBS input (the lookup, and truncation before it) must fit 16 bits."""
    for i, layer in enumerate(program.layers):
        if not layer.has_lookup:
            continue
        if layer.lookup_bits > MAX_LOOKUP_BITS:
            raise CompilationError(
                f"layer {i} needs table lookups on {layer.lookup_bits}-bit accumulators; "
                f"TFHE supports at most {MAX_LOOKUP_BITS}. Lower n_accum_bits (e.g. "
                f"n_accum_bits={MAX_LOOKUP_BITS - 4}), n_w_bits or n_a_bits, or compile with "
                "rounding='auto' or lookup_bits=6."
            )
        if layer.acc_bits > MAX_LOOKUP_BITS:
            raise CompilationError(
                f"layer {i} has {layer.acc_bits}-bit accumulators; rounding them before the "
                f"lookup needs at most {MAX_LOOKUP_BITS} bits. Lower n_accum_bits (e.g. "
                f"n_accum_bits={MAX_LOOKUP_BITS - 4}), n_w_bits or n_a_bits."
            )


def compile_program(
    program: IntegerProgram,
    samples: list[np.ndarray],
    *,
    p_error: float | None = None,
    configuration=None,
    compress: bool = True,
):
    """Compile ``program.run`` for encrypted inputs; returns a ``concrete.fhe.Circuit``.

    ``compress``: evaluation keys and input ciphertexts are serialized seeded (concrete's own
    compression): a client uploads 3-7x fewer bytes of keys and ~1/80 of each input, for about
    half a second of decompression on the server's first run with a key set.
    """
    fhe = concrete_fhe()

    _check_lookup_bits(program)
    # concrete otherwise writes a debug dump (.artifacts/) into the working directory on
    # failures, which our CompilationError already explains.
    config = (
        configuration
        if configuration is not None
        else fhe.Configuration(dump_artifacts_on_unexpected_failures=False)
    )
    config = config.fork(compress_evaluation_keys=compress, compress_input_ciphertexts=compress)
    if any(layer.rounding == "approximate" for layer in program.layers):
        # concrete's default clipping after approximate rounding (logical clipping, and an
        # extra lookup from 5 bits up) assumes one table per tensor: with our per-neuron tables
        # a 64-16-10 digits network simulated at 0.48 accuracy (0.71 at 6-bit lookups) where
        # its clear program scored 0.90 (0.965). Our tables already span the carry bit.
        config = config.fork(
            approximate_rounding_config=fhe.ApproximateRoundingConfig(
                logical_clipping=False, approximate_clipping_start_precision=False
            )
        )
    kwargs = {}
    if p_error is not None:
        kwargs = {"p_error": p_error, "global_p_error": None}
    compiler = fhe.Compiler(program.run, {"x": "encrypted"})
    try:
        with warnings.catch_warnings(), shielded():
            warnings.simplefilter("ignore")
            return compiler.compile(samples, config, **kwargs)
    except RuntimeError as exc:
        text = str(exc)
        if "NoParametersFound" in text or "parameters" in text.lower():
            widths = [layer.lookup_bits for layer in program.layers if layer.has_lookup]
            raise CompilationError(
                f"no TFHE parameters exist for this circuit (table lookups on {widths} bits, "
                f"accumulators {program.accumulator_bits} bits, p_error={p_error}); lower "
                "n_accum_bits / n_a_bits, use rounding='auto', or allow a larger p_error."
            ) from exc
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise CompilationError(f"concrete-python could not compile the model: {first}") from exc


def run_circuit(circuit, x_int: np.ndarray, mode: str, progress: bool = True) -> np.ndarray:
    """Run quantized rows through the circuit: ``simulate`` or ``execute`` (encrypt, run,
    decrypt, generating keys on first use). One sample per call, as the circuit takes them."""
    rows = range(len(x_int))
    if mode == "execute":
        check_key_memory(circuit_report_sizes(circuit))
        if progress and len(x_int) > 3:
            from tqdm.auto import tqdm

            rows = tqdm(rows, desc="FHE execute", unit="sample", leave=False)
        with shielded():
            circuit.keygen()
            return np.stack([circuit.encrypt_run_decrypt(x_int[i]) for i in rows])
    with shielded():
        return np.stack([circuit.simulate(x_int[i]) for i in rows])


def circuit_report_sizes(circuit) -> dict:
    stats = circuit.statistics
    return {
        "size_of_evaluation_keys": int(
            stats["size_of_bootstrap_keys"] + stats["size_of_keyswitch_keys"]
        ),
        "size_of_secret_keys": int(stats["size_of_secret_keys"]),
    }


#: Bytes of framing around a serialized key set (measured: 320-640; 64 with no key at all).
KEY_SET_OVERHEAD = 512


def evaluation_key_bytes(specs: dict) -> tuple[int, int]:
    """(bytes held in memory, bytes serialized for upload) of a circuit's evaluation keys,
    from its client specs (``json.loads(circuit.client.specs.serialize())``): exact to a few
    hundred bytes, and known without generating a key.

    A bootstrap key holds ``input_lwe_dim * levels`` GLWE ciphertexts of ``glwe_dim + 1``
    polynomials per GGSW row; seeded ("compressed"), only their bodies travel, 1 of
    ``glwe_dim + 1`` polynomials. A keyswitch key holds ``input_dim * levels`` LWE ciphertexts
    of ``output_dim + 1`` words; seeded, only their bodies (1 word each).
    """
    keyset = specs["keyset"]
    full = sent = 0
    for key in keyset.get("lweBootstrapKeys", []):
        p = key["params"]
        k1, n = p["glweDimension"] + 1, p["inputLweDimension"] * p["levelCount"]
        body = n * k1 * p["polynomialSize"] * 8
        full += body * k1
        sent += body if key.get("compression") == "seed" else body * k1
    for key in keyset.get("lweKeyswitchKeys", []):
        p = key["params"]
        n = p["inputLweDimension"] * p["levelCount"]
        whole = n * (p["outputLweDimension"] + 1) * 8
        full += whole
        sent += n * 8 if key.get("compression") == "seed" else whole
    overhead = KEY_SET_OVERHEAD if full else 64
    return full + overhead, sent + overhead


def ciphertext_bytes(specs: dict) -> int:
    """Bytes of one sample's input and output ciphertexts, uncompressed: what encryption and
    decryption work through (a seeded input is generated in full, then sent as its seed)."""
    total = 0
    for side in ("inputs", "outputs"):
        for gate in specs["circuits"][0][side]:
            lwe = gate["typeInfo"]["lweCiphertext"]
            values = int(np.prod(lwe["abstractShape"]["dimensions"]))
            total += values * (lwe["encryption"]["lweDimension"] + 1) * 8
    return total


def circuit_report(circuit, program: IntegerProgram) -> dict:
    """What the circuit costs, all known right after compilation (no key generation)."""
    import json

    stats = circuit.statistics
    hidden = [layer for layer in program.layers if layer.has_lookup]
    specs = json.loads(circuit.client.specs.serialize())
    in_memory, uploaded = evaluation_key_bytes(specs)
    config = circuit.configuration
    return {
        "pbs_count": int(stats["programmable_bootstrap_count"]),
        "lookups_per_layer": [layer.n_lookups for layer in hidden],
        "lookup_bits_per_layer": [layer.lookup_bits for layer in hidden],
        "lsbs_removed_per_layer": [layer.lsbs_to_remove for layer in hidden],
        "max_lookup_bits": max((layer.lookup_bits for layer in hidden), default=0),
        "accumulator_bits": program.accumulator_bits,
        "max_bit_width": int(circuit.graph.maximum_integer_bit_width()),
        "complexity": float(circuit.complexity),
        "size_of_bootstrap_keys": int(stats["size_of_bootstrap_keys"]),
        "size_of_keyswitch_keys": int(stats["size_of_keyswitch_keys"]),
        **circuit_report_sizes(circuit),
        # what a client uploads (compressed unless the circuit opted out) and what the
        # server holds once it has decompressed them
        "evaluation_keys_bytes": uploaded,
        "evaluation_keys_memory_bytes": in_memory,
        "compress_evaluation_keys": bool(config.compress_evaluation_keys),
        "compress_input_ciphertexts": bool(config.compress_input_ciphertexts),
        "size_of_inputs": int(stats["size_of_inputs"]),  # as sent (compressed or not)
        "ciphertext_bytes": ciphertext_bytes(specs),
        "size_of_outputs": int(stats["size_of_outputs"]),
        "p_error": float(stats["p_error"]),
        "global_p_error": float(stats["global_p_error"]),
        # What each PBS costs is set by the crypto parameters concrete chose for it.
        "pbs_params": [
            {
                "polynomial_size": int(_field(key, "polynomial_size")),
                "glwe_dimension": int(_field(key, "glwe_dimension")),
                "input_lwe_dimension": int(_field(key, "input_lwe_dimension")),
                "level": int(_field(key, "level")),
                "count": int(count),
            }
            for key, count in stats["programmable_bootstrap_count_per_parameter"].items()
        ],
        "bit_exact": all(layer.rounding == "exact" or not layer.lsbs_to_remove for layer in hidden),
    }


def _field(key, name: str):
    """A field of a concrete key-parameter object (a method in some versions)."""
    value = getattr(key, name)
    return value() if callable(value) else value


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_key_memory(report: dict, fraction: float = 0.5) -> None:
    """Refuse key generation whose keys would not fit comfortably in memory."""
    need = report["size_of_evaluation_keys"] + report["size_of_secret_keys"]
    have = available_memory()
    if need > fraction * have:
        raise ResourceError(
            f"generating keys for this circuit needs {need / 1e9:.1f} GB of evaluation keys, "
            f"more than {fraction:.0%} of the {have / 1e9:.1f} GB available; lower n_accum_bits "
            "or n_a_bits (narrower table lookups have much smaller keys)."
        )
