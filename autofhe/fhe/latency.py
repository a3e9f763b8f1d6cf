"""FHE latency: measured (real encryption) and predicted (no key generation).

Measured: key generation once, then per sample encrypt / run / decrypt; the per-sample figure
is the median of encrypt + run + decrypt, key generation excluded.

Predicted: independent lookups of a layer run in parallel across cores, and a lookup costs in
proportion to concrete's complexity measure, so

    latency = c0 + c1 * n_inputs + c2 * complexity / parallelism

where ``parallelism`` = lookups / sum over layers of ceil(lookups_in_layer / cores). The
constants are fitted on this machine by a short micro-benchmark (synthetic circuits of
1-32 lookups at 4-7 bits, with and without truncation; about a minute) and cached in
``~/.cache/autofhe`` under a key made of concrete-python's version and the CPU model, so a new
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

__all__ = [
    "CostModel",
    "calibrate",
    "load_cost_model",
    "measure_circuit",
    "measure_latency",
    "predict_latency",
]

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
    """Measured FHE latency of a compiled estimator on ``n`` rows of ``X`` (real encryption).

    Returns keygen time and the median encrypt / run / decrypt / total time per sample.
    """
    from autofhe.data import check_X
    from autofhe.fhe.compile import check_key_memory

    circuit = model.fhe_circuit
    program = model.fhe_program_
    check_key_memory(model.fhe_report())
    X = check_X(X, n_features=program.n_features, estimator=type(model).__name__)
    x_int = program.quantize(X[: max(1, n)])
    return measure_circuit(circuit, list(x_int), n)


def _parallelism(lookups_per_layer: list[int], pbs_count: int, cores: int) -> float:
    """Average number of lookups running at once (truncation PBS share their layer's)."""
    if pbs_count == 0 or not lookups_per_layer:
        return 1.0
    per_neuron = pbs_count / sum(lookups_per_layer)
    rounds = sum(math.ceil(n / cores) * per_neuron for n in lookups_per_layer)
    return pbs_count / rounds


def _features(report: dict, n_inputs: int, cores: int) -> list[float]:
    par = _parallelism(report["lookups_per_layer"], report["pbs_count"], cores)
    complexity = report["complexity"] if report["pbs_count"] else 0.0
    return [1.0, float(n_inputs), complexity / par / 1e9]


class CostModel:
    """Linear latency model over (1, n_inputs, complexity / parallelism)."""

    def __init__(self, coef: list[float], cores: int, meta: dict | None = None):
        self.coef = [float(c) for c in coef]
        self.cores = int(cores)
        self.meta = meta or {}

    def predict(self, report: dict, n_inputs: int) -> float:
        feats = _features(report, n_inputs, self.cores)
        return float(max(1e-4, sum(c * f for c, f in zip(self.coef, feats))))

    def to_json(self) -> dict:
        return {"coef": self.coef, "cores": self.cores, "meta": self.meta}

    @classmethod
    def from_json(cls, data: dict) -> CostModel:
        return cls(data["coef"], data["cores"], data.get("meta"))


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
    raw = f"{version}|{cpu}|{os.cpu_count()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _synthetic(n_lookups: int, acc_bits: int, lsbs: int, n_inputs: int):
    """A program with ``n_lookups`` ReLU lookups on ``acc_bits``-bit accumulators (none: a
    linear model), widths taken from the worst case as for trained models."""
    import torch

    from autofhe.fhe.program import IntegerProgram, ProgramLayer
    from autofhe.nn.pruning import signed_bits, worst_case_accumulator

    rng = np.random.default_rng(acc_bits * 100 + n_lookups)
    x_max = 4  # signed 3-bit inputs

    def layer(n_out, n_in, in_max, bits=None, **kwargs):
        w_max = max(1, (2 ** ((bits or 6) - 1) - 1) // (n_in * in_max))
        weight = rng.integers(-w_max, w_max + 1, size=(n_out, n_in))
        bias = np.zeros(n_out, dtype=np.int64)
        worst = int(worst_case_accumulator(weight, bias, in_max).max())
        return ProgramLayer(
            weight=weight, bias=bias, acc_bits=max(bits or 0, signed_bits(worst)), **kwargs
        )

    if not n_lookups:
        layers = [layer(2, n_inputs, x_max)]
    else:
        hidden = layer(
            n_lookups,
            n_inputs,
            x_max,
            acc_bits,
            activation=torch.nn.ReLU(),
            acc_scale=np.full(n_lookups, 2.0 / 2 ** (acc_bits - 1)),
            out_scale=0.25,
            out_bits=3,
            out_signed=False,
        ).with_rounding(lsbs)
        layers = [hidden, layer(2, n_lookups, 7)]
    return IntegerProgram(
        input_scale=np.ones(n_inputs), input_bits=3, layers=layers, output_scale=np.ones(2)
    )


#: (lookups, accumulator bits, low bits truncated, inputs) of the calibration circuits.
CALIBRATION = [
    (0, 0, 0, 30),
    (2, 5, 0, 4),
    (16, 5, 0, 8),
    (32, 4, 0, 8),
    (8, 6, 0, 8),
    (16, 6, 1, 8),
    (8, 7, 2, 8),
    (4, 7, 0, 4),
]


def calibrate(n: int = 3, verbose: bool = False) -> CostModel:
    """Fit the cost model on this machine (about a minute) and cache it."""
    from autofhe.fhe.compile import circuit_report, compile_program, inputset

    cores = os.cpu_count() or 1
    rows, targets = [], []
    for n_lookups, acc_bits, lsbs, n_inputs in CALIBRATION:
        program = _synthetic(n_lookups, acc_bits, lsbs, n_inputs)
        X = np.random.default_rng(0).integers(-4, 4, size=(16, n_inputs)).astype(np.float32)
        circuit = compile_program(program, inputset(program, X))
        report = circuit_report(circuit, program)
        measured = measure_circuit(circuit, list(program.quantize(X)), n + 1)
        rows.append(_features(report, n_inputs, cores))
        targets.append(measured["latency_s"])
        if verbose:
            print(
                f"calibration {n_lookups} lookups @ {acc_bits - lsbs} bits: "
                f"{measured['latency_s']:.3f} s",
                flush=True,
            )
    A, t = np.array(rows), np.array(targets)
    # Least squares on relative error: each row weighted by 1 / its latency.
    coef, *_ = np.linalg.lstsq(A / t[:, None], np.ones_like(t), rcond=None)
    model = CostModel(coef.tolist(), cores, {"key": _machine_key(), "points": len(t)})
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / f"latency-{model.meta['key']}.json").write_text(json.dumps(model.to_json()))
    return model


def load_cost_model(calibrate_if_missing: bool = True) -> CostModel | None:
    """The cached cost model of this machine (calibrating it on first use)."""
    path = CACHE_DIR / f"latency-{_machine_key()}.json"
    if path.exists():
        try:
            return CostModel.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError):
            path.unlink(missing_ok=True)  # a corrupt cache is recomputed, never trusted
    return calibrate() if calibrate_if_missing else None


def predict_latency(model, cost_model: CostModel | None = None) -> float:
    """Predicted seconds per sample of a compiled estimator (no key generation)."""
    cost_model = cost_model or load_cost_model()
    return cost_model.predict(model.fhe_report(), model.fhe_program_.n_features)
