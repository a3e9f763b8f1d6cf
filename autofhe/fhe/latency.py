"""FHE latency: measured (real encryption) and predicted (no key generation).

Measured: key generation once, then per sample encrypt / run / decrypt; the per-sample figure
is the median of encrypt + run + decrypt, key generation excluded.

Predicted, from what compilation reports (no keys needed):

    latency = base + per_byte * (input + output ciphertext bytes)
              + per_bsk_byte * bootstrap key bytes + per_ksk_byte * keyswitch key bytes
              + (seconds_per_unit * sum(count * work) + seconds_per_pbs * n_pbs) / parallelism

- The key terms are a cost every *run* pays once, whatever the number of lookups: measured on
  circuits of one parameter set, 2 lookups took 1.0 s and 4 lookups 1.3 s, so the runtime
  goes through the evaluation keys of each parameter set per call (about 0.5 s per GB of
  bootstrap key here). Without them the model priced 1-2-lookup circuits 2x too cheap and
  48-lookup circuits 2x too dear (``benchmarks/latency_shapes.py``).
- A PBS costs in proportion to the work its crypto parameters imply (blind rotation over
  ``n`` LWE coefficients, each an external product of ``level * (k + 1)`` polynomials of size
  ``N``: ``n * level * (k + 1) * N * (log2 N + k + 1)``), plus a fixed amount; the independent
  lookups of a layer run in parallel across cores: ``parallelism`` = lookups / sum over
  layers of ceil(lookups_in_layer / cores).
- Encryption and decryption cost in proportion to the ciphertext bytes.

The bootstrap key bytes are those of the keys in the Fourier domain, computed from each
parameter set (``n * level * (k + 1)^2 * N`` doubles). The coefficients are measured on this
machine (``calibrate``: circuits shaped like the ones searches produce, 1 to 48 lookups,
5-8-bit lookups with and without truncation, a few minutes) and cached in
``~/.cache/autofhe`` under a key made of concrete-python's version and the CPU, so a new
version or another CPU recalibrates.
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

from autofhe.fhe.runtime import shielded

__all__ = [
    "CostModel",
    "calibrate",
    "load_cost_model",
    "measure_circuit",
    "measure_latency",
    "predict_latency",
]

#: Bumped when the cost model's form changes: older caches are recalibrated, not misread.
COST_MODEL_FORMAT = 3
CACHE_DIR = Path(os.environ.get("AUTOFHE_CACHE", Path.home() / ".cache" / "autofhe"))


def measure_circuit(circuit, samples: list[np.ndarray], n: int = 3) -> dict:
    """Time key generation, then encrypt / run / decrypt of ``n`` samples (seconds).

    The first run after key generation also decompresses the evaluation keys (about 0.5 s per
    100 MB of compressed keys) and warms the runtime: it is timed on its own
    (``first_sample_s``, what a client's first request costs) and left out of the median.
    """
    with shielded():  # stop signals wait for concrete (runtime.py)
        t0 = time.perf_counter()
        circuit.keygen(force=True)
        keygen = time.perf_counter() - t0
        t0 = time.perf_counter()
        circuit.decrypt(circuit.run(circuit.encrypt(samples[0])))
        first = time.perf_counter() - t0
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
        "first_sample_s": first,
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
        per_bsk_byte: float = 0.0,
        per_ksk_byte: float = 0.0,
    ):
        self.base, self.per_byte = float(base), float(per_byte)
        self.seconds_per_unit = float(seconds_per_unit)
        self.seconds_per_pbs = float(seconds_per_pbs)
        self.per_bsk_byte, self.per_ksk_byte = float(per_bsk_byte), float(per_ksk_byte)
        self.cores = int(cores)
        self.meta = meta or {}

    def lookup_seconds(self, report: dict) -> float:
        """Predicted time of the circuit's table lookups alone (keys, then the PBS)."""
        costs = (self.per_bsk_byte, self.per_ksk_byte, self.seconds_per_unit, self.seconds_per_pbs)
        return float(np.dot(costs, cost_terms(report, self.cores)))  # the order calibrate fits

    def predict(self, report: dict) -> float:
        """Seconds per sample: encrypt + run + decrypt (key generation excluded)."""
        return float(self.base + self.per_byte * io_bytes(report) + self.lookup_seconds(report))

    def to_json(self) -> dict:
        return {
            "base": self.base,
            "per_byte": self.per_byte,
            "seconds_per_unit": self.seconds_per_unit,
            "seconds_per_pbs": self.seconds_per_pbs,
            "per_bsk_byte": self.per_bsk_byte,
            "per_ksk_byte": self.per_ksk_byte,
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
            data.get("per_bsk_byte", 0.0),
            data.get("per_ksk_byte", 0.0),
        )


def key_bytes(report: dict) -> tuple[float, float]:
    """``(bootstrap key bytes in the Fourier domain, keyswitch key bytes)`` of a circuit with
    lookups (0, 0 without): what every run goes through once."""
    params = report.get("pbs_params", [])
    if not params:
        return 0.0, 0.0
    bsk = sum(
        p["input_lwe_dimension"]
        * p["level"]
        * (p["glwe_dimension"] + 1) ** 2
        * p["polynomial_size"]
        * 8
        for p in params
    )
    return float(bsk), float(report.get("size_of_keyswitch_keys", 0))


def io_bytes(report: dict) -> int:
    """Ciphertext bytes the client encrypts and decrypts per sample, uncompressed (the work is
    the same whether the input then travels compressed); reports from before compression
    carry only concrete's sizes, which were uncompressed then."""
    if "ciphertext_bytes" in report:
        return int(report["ciphertext_bytes"])
    return int(report["size_of_inputs"]) + int(report["size_of_outputs"])


def fit_costs(columns: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Non-negative coefficients ``c`` minimising the squared relative error of
    ``columns @ c`` against ``seconds`` (one row per circuit, one column per cost term)."""
    from scipy.optimize import nnls

    coef, _ = nnls(columns / seconds[:, None], np.ones(len(seconds)))
    return coef


def cost_terms(report: dict, cores: int) -> list[float]:
    """The columns :func:`fit_costs` weighs: key bytes, then the lookups' work and count."""
    return [*key_bytes(report), *lookup_terms(report, cores)]


def _machine_key() -> str:
    # the installed version, read without importing concrete (1.5 s a process): `search` and
    # `worker` look their cost model up before any circuit is built
    from importlib.metadata import version as dist_version

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    version = dist_version("concrete-python")
    raw = f"{COST_MODEL_FORMAT}|{version}|{cpu}|{os.cpu_count()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


#: The calibration circuits: stand-ins (fhe/standin.py) of shapes searches produce, from one
#: lookup to 48, lookups of 5 to 8 bits on accumulators of 5 to 10 bits, 0-4 bits truncated.
CALIBRATION = [
    # dims, n_w_bits, n_a_bits, hidden signed, accumulator bits, low bits truncated
    ((2, 2, 10), 3, 4, True, (6, 6), (0, 0)),
    ((6, 24, 10), 3, 2, False, (5, 5), (0, 0)),
    ((30, 3, 3), 3, 2, False, (5, 5), (0, 0)),
    ((4, 1, 3), 2, 5, False, (7, 7), (2, 0)),
    ((8, 4, 3), 5, 3, False, (9, 9), (2, 0)),
    ((30, 6, 6, 2), 7, 3, False, (10, 10, 10), (4, 4, 0)),
    ((2, 2, 2), 2, 4, True, (8, 8), (0, 0)),
    ((2, 2, 2, 3), 4, 2, False, (6, 6, 6), (0, 0, 0)),
    ((64, 4, 1), 2, 4, False, (9, 9), (1, 0)),
    ((13, 3, 3, 1), 2, 4, False, (8, 8, 8), (3, 3, 0)),
    ((13, 12, 12, 10), 3, 3, False, (7, 7, 7), (1, 1, 0)),
    ((4, 8, 8, 10), 3, 3, False, (8, 8, 8), (2, 2, 0)),
    ((8, 1, 10), 5, 2, True, (8, 8), (1, 0)),
]
#: Circuits without lookups (4 to 64 inputs, 5- to 12-bit accumulators, so ciphertexts of
#: several sizes): the fixed cost of a run and the cost per ciphertext byte.
LINEAR = [
    ((4, 2), 2, 2, False, (5,), (0,)),
    ((8, 2), 4, 2, False, (9,), (0,)),
    ((30, 10), 3, 3, False, (8,), (0,)),
    ((64, 2), 4, 2, False, (12,), (0,)),
]


def _timed(spec: tuple, n: int) -> tuple[float, dict]:
    from autofhe.fhe.compile import circuit_report, compile_program
    from autofhe.fhe.standin import Shape, stand_in, stand_in_samples

    shape = Shape(*spec)
    program = stand_in(shape)
    samples = stand_in_samples(shape)
    circuit = compile_program(program, samples)
    report = circuit_report(circuit, program)
    return measure_circuit(circuit, samples[:n], n)["latency_s"], report


def calibrate(n: int = 4, verbose: bool = False) -> CostModel:
    """Measure this machine's costs (a few minutes) and cache the model."""
    cores = os.cpu_count() or 1
    say = print if verbose else (lambda *a, **k: None)
    # Circuits without lookups: encryption / decryption cost per ciphertext byte.
    _timed(LINEAR[0], 2)  # the first run of a process pays a one-time start-up: not a cost
    timed = [_timed(spec, 3 * n) for spec in LINEAR]  # a few ms each: more samples
    io = np.array([[1.0, io_bytes(report)] for _, report in timed])
    base, per_byte = fit_costs(io, np.array([t for t, _ in timed]))
    say(f"calibration: no lookups: base {base * 1e3:.1f} ms, {per_byte * 1e9:.1f} ns/byte")
    terms, seconds = [], []
    for i, spec in enumerate(CALIBRATION, 1):
        t, report = _timed(spec, n)
        terms.append(cost_terms(report, cores))
        seconds.append(max(1e-4, t - base - per_byte * io_bytes(report)))
        say(
            f"calibration {i}/{len(CALIBRATION)}: {report['lookups_per_layer']} lookups at "
            f"{report['lookup_bits_per_layer']} bits ({report['pbs_count']} PBS): {t:.3f} s"
        )
    bsk, ksk, unit, pbs = fit_costs(np.array(terms), np.array(seconds))
    model = CostModel(base, per_byte, unit, pbs, cores, per_bsk_byte=bsk, per_ksk_byte=ksk)
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
