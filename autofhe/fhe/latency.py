"""FHE latency: measured (real encryption) and predicted (no key generation).

Measured: key generation once, then per sample encrypt / run / decrypt; the per-sample figure
is the median of encrypt + run + decrypt, key generation excluded.

Predicted: a PBS costs a fixed overhead (key switching, scheduling) plus an amount in
proportion to the work its crypto parameters imply (blind rotation over ``n`` LWE
coefficients, each an external product of ``level * (k + 1)`` polynomials of size ``N``:
``n * level * (k + 1) * N * (log2 N + k + 1)``); the independent lookups of a layer run in
parallel across cores; encryption and decryption cost in proportion to the ciphertext bytes
of the inputs and outputs. So

    latency = base + per_byte * (input + output bytes)
              + (seconds_per_unit * sum(count * work) + seconds_per_pbs * n_pbs) / parallelism

where ``parallelism`` = lookups / sum over layers of ceil(lookups_in_layer / cores). All of it
is known right after compilation. The four coefficients are measured on this machine by a
short micro-benchmark (about a minute) and cached in ``~/.cache/autofhe`` under a key made of
concrete-python's version and the CPU, so a new version or another CPU recalibrates.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

__all__ = [
    "CostModel",
    "calibrate",
    "load_cost_model",
    "measure_circuit",
    "measure_latency",
    "predict_latency",
]

#: Bumped when the cost model's form changes: older caches are recalibrated, not misread.
COST_MODEL_FORMAT = 2
CACHE_DIR = Path(os.environ.get("AUTOFHE_CACHE", Path.home() / ".cache" / "autofhe"))


def measure_circuit(circuit, samples: list[np.ndarray], n: int = 3) -> dict:
    """Time key generation, then encrypt / run / decrypt of ``n`` samples (seconds)."""
    t0 = time.perf_counter()
    circuit.keygen(force=True)
    keygen = time.perf_counter() - t0
    enc, run, dec, total = [], [], [], []
    for i in range(n):
        x = samples[i % len(samples)]
        t0 = time.perf_counter()
        encrypted = circuit.encrypt(x)
        t1 = time.perf_counter()
        result = circuit.run(encrypted)
        t2 = time.perf_counter()
        circuit.decrypt(result)
        t3 = time.perf_counter()
        enc.append(t1 - t0)
        run.append(t2 - t1)
        dec.append(t3 - t2)
        total.append(t3 - t0)
    return {
        "keygen_s": keygen,
        "encrypt_s": statistics.median(enc),
        "run_s": statistics.median(run),
        "decrypt_s": statistics.median(dec),
        "latency_s": statistics.median(total),
        "first_sample_s": total[0],
        "samples": n,
    }


def measure_latency(model, X, n: int = 3) -> dict:
    """Measured FHE latency of a :class:`~autofhe.fhe.model.CompiledModel` on ``n`` rows of
    ``X`` (real encryption).

    Returns keygen time and the median encrypt / run / decrypt / total time per sample.
    """
    from autofhe.data import check_X
    from autofhe.fhe.compile import check_key_memory

    program = model.program
    check_key_memory(model.report)
    X = check_X(X, n_features=program.n_features, estimator="this model")
    x_int = program.quantize(X[: max(1, n)])
    return measure_circuit(model.circuit, list(x_int), n)


def _rounds(n: int, cores: int) -> int:
    return math.ceil(n / cores) if n else 0


def pbs_work(report: dict) -> float:
    """Sum over the circuit's PBS of the work their parameters imply (in 1e9 units)."""
    total = 0.0
    for p in report.get("pbs_params", []):
        n, k, N, level = (
            p["input_lwe_dimension"],
            p["glwe_dimension"],
            p["polynomial_size"],
            p["level"],
        )
        total += p["count"] * n * level * (k + 1) * N * (math.log2(N) + k + 1)
    return total / 1e9


def parallelism(lookups_per_layer: list[int], cores: int) -> float:
    """Average number of lookups running at once."""
    rounds = sum(_rounds(n, cores) for n in lookups_per_layer)
    return sum(lookups_per_layer) / rounds if rounds else 1.0


def lookup_terms(report: dict, cores: int) -> tuple[float, float]:
    """``(work, pbs count)`` of the circuit's lookups, each divided by their parallelism: what
    ``seconds_per_unit`` and ``seconds_per_pbs`` multiply (in prediction and calibration)."""
    par = parallelism(report["lookups_per_layer"], cores)
    n_pbs = sum(p["count"] for p in report.get("pbs_params", []))
    return pbs_work(report) / par, n_pbs / par


class CostModel:
    """Per-sample latency from the compiled circuit; see the module docstring."""

    def __init__(
        self,
        base: float,
        per_byte: float,
        seconds_per_unit: float,
        seconds_per_pbs: float,
        cores: int,
        meta: dict | None = None,
    ):
        self.base, self.per_byte = float(base), float(per_byte)
        self.seconds_per_unit = float(seconds_per_unit)
        self.seconds_per_pbs = float(seconds_per_pbs)
        self.cores = int(cores)
        self.meta = meta or {}

    def lookup_seconds(self, report: dict) -> float:
        """Predicted time of the circuit's table lookups alone."""
        work, n_pbs = lookup_terms(report, self.cores)
        return self.seconds_per_unit * work + self.seconds_per_pbs * n_pbs

    def predict(self, report: dict) -> float:
        """Seconds per sample: encrypt + run + decrypt (key generation excluded)."""
        return float(self.base + self.per_byte * io_bytes(report) + self.lookup_seconds(report))

    def to_json(self) -> dict:
        return {
            "base": self.base,
            "per_byte": self.per_byte,
            "seconds_per_unit": self.seconds_per_unit,
            "seconds_per_pbs": self.seconds_per_pbs,
            "cores": self.cores,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: dict) -> CostModel:
        return cls(
            data["base"],
            data["per_byte"],
            data["seconds_per_unit"],
            data["seconds_per_pbs"],
            data["cores"],
            data.get("meta"),
        )


def io_bytes(report: dict) -> int:
    """Ciphertext bytes the client encrypts and decrypts per sample."""
    return int(report["size_of_inputs"]) + int(report["size_of_outputs"])


def fit_lookup_costs(
    work: np.ndarray, n_pbs: np.ndarray, seconds: np.ndarray
) -> tuple[float, float]:
    """``(seconds_per_unit, seconds_per_pbs)`` minimising the squared relative error of
    ``a * work + b * n_pbs`` against ``seconds`` (work and counts already divided by the
    parallelism), both non-negative: a negative one is dropped and the other refit."""
    columns = np.stack([work / seconds, n_pbs / seconds], axis=1)
    ones = np.ones(len(seconds))
    coef = np.linalg.lstsq(columns, ones, rcond=None)[0]
    if (coef >= 0).all():
        return float(coef[0]), float(coef[1])
    single = [float(np.sum(c) / np.sum(c**2)) if np.any(c) else 0.0 for c in columns.T]
    errors = [np.sum((single[i] * columns[:, i] - 1) ** 2) for i in range(2)]
    return (single[0], 0.0) if errors[0] <= errors[1] else (0.0, single[1])


def _machine_key() -> str:
    from concrete import fhe

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    version = getattr(fhe, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("concrete-python")
    raw = f"{COST_MODEL_FORMAT}|{version}|{cpu}|{os.cpu_count()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _synthetic(n_lookups: int, acc_bits: int, lsbs: int, n_inputs: int):
    """A program with ``n_lookups`` ReLU lookups on ``acc_bits``-bit accumulators (none: a
    linear model on ``n_inputs`` inputs); widths are worst cases, as for trained models."""
    from autofhe.fhe.bits import signed_bits, worst_case_accumulator
    from autofhe.fhe.program import IntegerProgram, ProgramLayer, real_lookup

    rng = np.random.default_rng(acc_bits * 100 + n_lookups)
    x_max = 2  # signed 2-bit inputs

    def layer(n_out, n_in, in_max, limit, **kwargs):
        w_max = max(1, limit // (n_in * in_max))
        # full-magnitude weights: every neuron reaches the intended width
        weight = rng.choice([-w_max, w_max], size=(n_out, n_in))
        bias = np.zeros(n_out, dtype=np.int64)
        worst = int(worst_case_accumulator(weight, bias, in_max).max())
        return ProgramLayer(weight=weight, bias=bias, acc_bits=signed_bits(worst), **kwargs)

    if not n_lookups:
        layers = [layer(2, n_inputs, x_max, 2**8)]
    else:
        limit = 2 ** (acc_bits - 1) - 1
        n_inputs = int(np.clip(limit // x_max, 1, 16))
        hidden = layer(
            n_lookups,
            n_inputs,
            x_max,
            limit,
            function=real_lookup(
                lambda real: np.maximum(real, 0),
                np.full(n_lookups, 2.0 / 2 ** (acc_bits - 1)),
                0.25,
                (0, 7),
            ),
            out_bits=3,
            out_signed=False,
        ).with_rounding(lsbs)
        layers = [hidden, layer(2, n_lookups, 7, 2**7)]
    return IntegerProgram(
        input_scale=np.ones(n_inputs), input_bits=2, layers=layers, output_scale=np.ones(2)
    )


#: (lookups, accumulator bits, low bits truncated) of the calibration circuits.
CALIBRATION = [(16, 4, 0), (16, 5, 0), (4, 6, 0), (16, 6, 0), (8, 7, 2), (16, 8, 3), (2, 5, 0)]


def _timed(program, n: int) -> tuple[float, dict]:
    from autofhe.fhe.compile import circuit_report, compile_program, inputset

    X = np.random.default_rng(0).integers(-2, 2, size=(16, program.n_features))
    X = X.astype(np.float32)
    circuit = compile_program(program, inputset(program, X))
    report = circuit_report(circuit, program)
    return measure_circuit(circuit, list(program.quantize(X)), n)["latency_s"], report


def calibrate(n: int = 4, verbose: bool = False) -> CostModel:
    """Measure this machine's costs (about a minute) and cache the model."""
    cores = os.cpu_count() or 1
    say = print if verbose else (lambda *a, **k: None)
    # Circuits without lookups: encryption / decryption cost per ciphertext byte.
    (t_small, r_small), (t_large, r_large) = (_timed(_synthetic(0, 0, 0, k), n) for k in (8, 64))
    per_byte = max(0.0, (t_large - t_small) / (io_bytes(r_large) - io_bytes(r_small)))
    base = max(0.0, t_small - per_byte * io_bytes(r_small))
    say(f"calibration: no lookups: base {base * 1e3:.1f} ms, {per_byte * 1e9:.1f} ns/byte")
    model = CostModel(base, per_byte, 0.0, 0.0, cores)
    terms, seconds = [], []
    for n_lookups, bits, lsbs in CALIBRATION:
        t, report = _timed(_synthetic(n_lookups, bits, lsbs, 0), n)
        terms.append(lookup_terms(report, cores))
        seconds.append(max(1e-4, t - base - per_byte * io_bytes(report)))
        say(
            f"calibration: {n_lookups} lookups at {report['lookup_bits_per_layer']} bits "
            f"({lsbs} truncated): {t:.3f} s"
        )
    work, n_pbs = np.array(terms).T
    model.seconds_per_unit, model.seconds_per_pbs = fit_lookup_costs(work, n_pbs, np.array(seconds))
    model.meta = {"key": _machine_key(), "created": time.time()}
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / f"latency-{model.meta['key']}.json").write_text(json.dumps(model.to_json()))
    return model


def load_cost_model(calibrate_if_missing: bool = True) -> CostModel | None:
    """The cached cost model of this machine (calibrating it on first use)."""
    path = CACHE_DIR / f"latency-{_machine_key()}.json"
    if path.exists():
        try:
            return CostModel.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # a corrupt cache is recomputed, never trusted
    return calibrate() if calibrate_if_missing else None


def predict_latency(model, cost_model: CostModel | None = None) -> float:
    """Predicted seconds per sample of a :class:`~autofhe.fhe.model.CompiledModel` (no key
    generation)."""
    cost_model = cost_model or load_cost_model()
    return cost_model.predict(model.report)
