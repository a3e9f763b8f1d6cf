"""The integer program as plain JSON (``server/program.json`` of a bundle), and back.

Everything is an integer list or a small number: weights, biases, accumulator widths, the
low bits dropped before each lookup and the materialized lookup tables (the activation is
its table). Decoding checks every shape and range, so a corrupt file is a
:class:`~autofhe.errors.BundleError`, never a crash deep inside compilation.
"""

from __future__ import annotations

import numpy as np

from autofhe.errors import BundleError
from autofhe.fhe.program import IntegerProgram, ProgramLayer

__all__ = ["program_from_json", "program_to_json"]

#: concrete-python's widest table lookup, and a generous bound on every other width.
MAX_BITS = 16
MAX_ACC_BITS = 32


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
    except (ValueError, TypeError):
        raise _corrupt(f"{what} is not a rectangular array") from None
    if array.ndim != ndim or array.size == 0 or array.dtype.kind not in "iu":
        raise _corrupt(f"{what} must be a non-empty {ndim}-d integer array")
    return array.astype(np.int64)


def _int(value, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _corrupt(f"{what}={value!r} is not an integer in [{low}, {high}]")
    return value


def _floats(value, what: str, size: int | None) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise _corrupt(f"{what} is not a list of numbers") from None
    if array.ndim != 1 or (size is not None and array.shape[0] != size):
        raise _corrupt(f"{what} must be a list of {size} numbers")
    return array


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
    layers, n_in = [], None
    for i, entry in enumerate(data["layers"]):
        layer = _layer(entry, i, n_in, last=i == len(data["layers"]) - 1)
        layers.append(layer)
        n_in = layer.weight.shape[0]
    n_features = layers[0].weight.shape[1]

    def optional(key):
        value = data.get(key)
        return None if value is None else _floats(value, key, n_features)

    return IntegerProgram(
        input_scale=_floats(data.get("input_scale"), "input_scale", n_features),
        input_bits=_int(data.get("input_bits"), "input_bits", 1, MAX_BITS),
        layers=layers,
        output_scale=_floats(data.get("output_scale"), "output_scale", None),
        input_offset=optional("input_offset"),
        input_norm=optional("input_norm"),
    )
