"""A bundle's JSON and back: the integer program (``server/program.json``) and the client
part (``client/client.json``: input quantization, output decoding).

The program is integer lists and small numbers: weights, biases, accumulator widths, the low
bits dropped before each lookup and the materialized lookup tables (the activation is its
table). Reading checks every type, shape and range, and that every neuron's worst-case
accumulator fits its declared width, so a corrupt or hand-edited file is a
:class:`~autofhe.errors.BundleError`, never an int64 overflow in the clear program (which
would make ``fhe="disable"`` disagree with the circuit) or a crash deep inside compilation.
The client part is checked against the client specs its keys come from (inputs, outputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autofhe.errors import BundleError
from autofhe.fhe.bits import input_max_abs, signed_bits
from autofhe.fhe.program import IntegerProgram, ProgramLayer, softmax

__all__ = ["ClientPart", "Decoding", "client_from_json", "program_from_json", "program_to_json"]

#: concrete-python's widest table lookup, and a generous bound on every other width.
MAX_BITS = 16
MAX_ACC_BITS = 32
#: Bounds of every scale and offset: finite, and no scale so small or large that a feature or
#: an output becomes 0 or infinite in float32 / float64.
MAX_SCALE = 1e12
MAX_OFFSET = 1e30


def program_to_json(program: IntegerProgram) -> dict:
    """Plain JSON values for ``program`` (tables materialized)."""
    layers = []
    for layer in program.layers:
        entry = {
            "weight": layer.weight.tolist(),
            "bias": layer.bias.tolist(),
            "acc_bits": layer.acc_bits,
            "lsbs_to_remove": layer.lsbs_to_remove,
            "rounding": layer.rounding,
        }
        if layer.reduced_bits is not None:
            entry["reduced_bits"] = layer.reduced_bits
        if layer.has_lookup:
            entry.update(
                table=layer.table.tolist(),
                out_bits=layer.out_bits,
                out_signed=layer.out_signed,
            )
        layers.append(entry)
    return {
        "input_scale": program.input_scale.tolist(),
        "input_offset": None if program.input_offset is None else program.input_offset.tolist(),
        "input_norm": None if program.input_norm is None else program.input_norm.tolist(),
        "input_bits": program.input_bits,
        "output_scale": program.output_scale.tolist(),
        "layers": layers,
    }


def _corrupt(what: str) -> BundleError:
    return BundleError(f"program.json: {what}; the bundle is corrupt, re-export it.")


def _ints(value, what: str, ndim: int) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise _corrupt(f"{what} is not a rectangular array") from None
    if array.ndim != ndim or array.size == 0 or array.dtype.kind not in "iu":
        raise _corrupt(f"{what} must be a non-empty {ndim}-d integer array")
    if np.abs(array.astype(np.float64)).max() > 2.0**MAX_ACC_BITS:
        raise _corrupt(f"{what} holds a value beyond 2**{MAX_ACC_BITS}")
    return array.astype(np.int64)


def _int(value, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _corrupt(f"{what}={value!r} is not an integer in [{low}, {high}]")
    return value


def _floats(value, what: str, size: int | None, positive: bool = True, corrupt=None) -> np.ndarray:
    """A list of ``size`` finite numbers, each a usable scale (``positive``) or offset."""
    corrupt = corrupt or _corrupt
    if not isinstance(value, list) or any(isinstance(v, bool) for v in value):
        raise corrupt(f"{what} is not a list of numbers")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise corrupt(f"{what} is not a list of numbers") from None
    if array.ndim != 1 or array.size == 0 or (size is not None and array.shape[0] != size):
        raise corrupt(f"{what} must be a list of {size or 'some'} numbers")
    if positive:
        ok = np.isfinite(array) & (array >= 1 / MAX_SCALE) & (array <= MAX_SCALE)
        kind = "positive and within [1e-12, 1e12]"
    else:
        ok = np.isfinite(array) & (np.abs(array) <= MAX_OFFSET)
        kind = "finite and within +-1e30"
    if not ok.all():
        raise corrupt(f"{what} holds {array[~ok][0]!r}; every value must be {kind}")
    return array


def _check_accumulators(layer: ProgramLayer, x_max: int, i: int) -> None:
    """Every neuron's worst-case accumulator over all its inputs fits ``acc_bits`` (as the
    training side guarantees): then no mode can overflow, and the clear program, the simulated
    and the encrypted circuit compute the same integers."""
    worst = np.abs(layer.weight.astype(np.float64)).sum(axis=1) * x_max + np.abs(layer.bias)
    need = signed_bits(int(worst.max()))
    if need > layer.acc_bits:
        raise _corrupt(
            f"layer {i} weights reach accumulators of {need} bits, beyond its declared "
            f"acc_bits={layer.acc_bits}"
        )


def _layer(entry, i: int, n_in: int | None, last: bool) -> ProgramLayer:
    if not isinstance(entry, dict):
        raise _corrupt(f"layer {i} is not an object")
    weight = _ints(entry.get("weight"), f"layer {i} weight", 2)
    bias = _ints(entry.get("bias"), f"layer {i} bias", 1)
    if (n_in is not None and weight.shape[1] != n_in) or bias.shape != (weight.shape[0],):
        raise _corrupt(f"layer {i} has weight {weight.shape} and bias {bias.shape} after {n_in}")
    acc_bits = _int(entry.get("acc_bits"), f"layer {i} acc_bits", 1, MAX_ACC_BITS)
    rounding = entry.get("rounding")
    if rounding not in ("exact", "approximate"):
        raise _corrupt(f"layer {i} rounding={rounding!r} is not 'exact' or 'approximate'")
    layer = ProgramLayer(
        weight=weight,
        bias=bias,
        acc_bits=acc_bits,
        lsbs_to_remove=_int(entry.get("lsbs_to_remove"), f"layer {i} lsbs", 0, acc_bits - 1),
        rounding=rounding,
    )
    if entry.get("reduced_bits") is not None:
        layer.reduced_bits = _int(entry["reduced_bits"], f"layer {i} reduced_bits", 1, acc_bits)
    if last:
        if "table" in entry:
            raise _corrupt("the output layer has a lookup table")
        return layer
    if acc_bits > MAX_BITS:
        raise _corrupt(f"layer {i} looks up {acc_bits}-bit accumulators (at most {MAX_BITS})")
    table = _ints(entry.get("table"), f"layer {i} table", 2)
    if table.shape != (weight.shape[0], 2**acc_bits):
        raise _corrupt(
            f"a table has shape {table.shape}, expected {(weight.shape[0], 2**acc_bits)}"
        )
    layer.out_bits = _int(entry.get("out_bits"), f"layer {i} out_bits", 1, MAX_BITS)
    layer.out_signed = bool(entry.get("out_signed"))
    low, high = layer.out_range
    if table.min() < low or table.max() > high:
        raise _corrupt(f"layer {i} table values leave [{low}, {high}]")
    layer._table = table
    return layer


def program_from_json(data) -> IntegerProgram:
    """The :class:`IntegerProgram` of :func:`program_to_json`'s output, checked."""
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list) or not data["layers"]:
        raise _corrupt("no list of layers")
    input_bits = _int(data.get("input_bits"), "input_bits", 1, MAX_BITS)
    layers, n_in, x_max = [], None, input_max_abs(input_bits, signed=True)
    for i, entry in enumerate(data["layers"]):
        layer = _layer(entry, i, n_in, last=i == len(data["layers"]) - 1)
        _check_accumulators(layer, x_max, i)
        layers.append(layer)
        n_in = layer.weight.shape[0]
        if layer.has_lookup:
            x_max = input_max_abs(layer.out_bits, layer.out_signed)
    n_outputs = layers[-1].weight.shape[0]
    return IntegerProgram(
        input_bits=input_bits,
        layers=layers,
        output_scale=_floats(data.get("output_scale"), "output_scale", n_outputs),
        **_quantization(data, layers[0].weight.shape[1], _corrupt),
    )


def _quantization(data: dict, n_features: int, corrupt) -> dict:
    """``input_scale``, ``input_offset`` and ``input_norm`` of a program or client part."""
    scale = _floats(data.get("input_scale"), "input_scale", n_features, True, corrupt)
    out = {"input_scale": scale}
    for key, positive in (("input_offset", False), ("input_norm", True)):
        value = data.get(key)
        out[key] = None if value is None else _floats(value, key, n_features, positive, corrupt)
    return out


# -- the client part ----------------------------------------------------------------------------


@dataclass
class Decoding:
    """Real-valued outputs -> predictions: the classes, or the target's mean and scale."""

    task: str  # "classification" or "regression"
    classes: np.ndarray | None = None
    target_mean: np.ndarray | None = None
    target_scale: np.ndarray | None = None
    target_ndim: int = 1

    @property
    def classification(self) -> bool:
        return self.task == "classification"

    def predict(self, real: np.ndarray) -> np.ndarray:
        """Predictions from real-valued outputs (logits, or standardized targets)."""
        if self.classification:
            return np.asarray(self.classes)[np.argmax(real, axis=1)]
        out = real * self.target_scale + self.target_mean
        return out.ravel() if self.target_ndim == 1 else out

    def outputs(self, real: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and, for a classifier, class probabilities (None for a regressor)."""
        proba = softmax(real) if self.classification else None
        return self.predict(real), proba

    def to_json(self) -> dict:
        """The ``classes`` / ``target`` entries of ``client/client.json``."""
        if self.classification:
            return {"classes": np.asarray(self.classes).tolist(), "target": None}
        target = {
            "mean": np.asarray(self.target_mean).tolist(),
            "scale": np.asarray(self.target_scale).tolist(),
            "ndim": int(self.target_ndim),
        }
        return {"classes": None, "target": target}

    @classmethod
    def from_json(cls, client: dict, n_outputs: int | None = None, corrupt=None) -> Decoding:
        """The decoding of a ``client.json`` object; ``n_outputs``: the model's outputs, which
        the classes (or the target's mean and scale) must match one for one."""

        def refuse(what: str) -> BundleError:
            if corrupt is not None:
                return corrupt(what)
            return BundleError(f"client.json: {what}; the bundle is corrupt, re-export it.")

        task = client.get("task")
        if task == "classification":
            classes = client.get("classes")
            scalar = (str, int, float)
            if not isinstance(classes, list) or not all(
                isinstance(c, scalar) and not isinstance(c, bool) for c in classes
            ):
                raise refuse("classes is not a list of labels (strings or numbers)")
            if len(classes) < 2 or len({repr(c) for c in classes}) != len(classes):
                raise refuse(f"classes {classes!r} must be at least 2 distinct labels")
            if n_outputs is not None and len(classes) != n_outputs:
                raise refuse(f"{len(classes)} classes for a model of {n_outputs} outputs")
            return cls(task, classes=np.asarray(classes))
        if task == "regression":
            target = client.get("target")
            if not isinstance(target, dict):
                raise refuse("a regressor's target (mean, scale, ndim) is missing")
            ndim = target.get("ndim", 1)
            if ndim not in (1, 2) or isinstance(ndim, bool):
                raise refuse(f"target ndim={ndim!r} is not 1 or 2")
            if ndim == 1 and n_outputs not in (None, 1):
                raise refuse(f"a 1-d target for a model of {n_outputs} outputs")
            return cls(
                task,
                target_mean=_floats(target.get("mean"), "target mean", n_outputs, False, refuse),
                target_scale=_floats(target.get("scale"), "target scale", n_outputs, True, refuse),
                target_ndim=ndim,
            )
        raise refuse(f"task {task!r} is not 'classification' or 'regression'")


@dataclass
class ClientPart:
    """``client/client.json``, checked: input quantization and output decoding."""

    n_features: int
    input_bits: int
    input_scale: np.ndarray
    input_offset: np.ndarray | None
    input_norm: np.ndarray | None
    output_scale: np.ndarray
    decoding: Decoding

    @property
    def task(self) -> str:
        return self.decoding.task


def _specs_size(specs: dict, side: str) -> int | None:
    """Values in the circuit's input or output ciphertext, from its client specs."""
    try:
        typed = specs["circuits"][0][side][0]["typeInfo"]["lweCiphertext"]
        return int(math.prod(typed["abstractShape"]["dimensions"]))
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def client_from_json(data, specs: dict | None = None) -> ClientPart:
    """The client part of ``client/client.json``, checked against the circuit's client
    ``specs`` (its numbers of inputs and outputs) when given."""

    def corrupt(what: str) -> BundleError:
        return BundleError(f"client.json: {what}; the bundle is corrupt, re-export it.")

    if not isinstance(data, dict):
        raise corrupt("not a JSON object")
    n_features = data.get("n_features")
    if not isinstance(n_features, int) or isinstance(n_features, bool) or n_features < 1:
        raise corrupt(f"n_features={n_features!r} is not a positive integer")
    n_inputs = _specs_size(specs, "inputs") if specs else None
    if n_inputs is not None and n_inputs != n_features:
        raise corrupt(f"n_features={n_features}, but the circuit takes {n_inputs} inputs")
    bits = data.get("input_bits")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= MAX_BITS:
        raise corrupt(f"input_bits={bits!r} is not an integer in [1, {MAX_BITS}]")
    n_outputs = _specs_size(specs, "outputs") if specs else None
    output_scale = _floats(data.get("output_scale"), "output_scale", n_outputs, True, corrupt)
    return ClientPart(
        n_features=n_features,
        input_bits=bits,
        output_scale=output_scale,
        decoding=Decoding.from_json(data, len(output_scale), corrupt),
        **_quantization(data, n_features, corrupt),
    )


def check_client_matches(part: ClientPart, program: IntegerProgram) -> None:
    """The client part of a whole bundle quantizes and decodes as its program does (a bundle
    whose client.json was edited, checksums recomputed, is refused instead of predicting
    wrongly)."""
    pairs = {
        "input_scale": (part.input_scale, program.input_scale),
        "input_offset": (part.input_offset, program.input_offset),
        "input_norm": (part.input_norm, program.input_norm),
        "output_scale": (part.output_scale, program.output_scale),
        "input_bits": (part.input_bits, program.input_bits),
    }
    for key, (client, server) in pairs.items():
        same = (client is None) == (server is None) and (
            client is None or np.array_equal(np.asarray(client), np.asarray(server))
        )
        if not same:
            raise BundleError(
                f"client/client.json's {key} differs from server/program.json's; the bundle "
                "was modified: re-export it."
            )
