"""Stand-in integer programs: a circuit of exactly a configuration's shape, before training.

What a circuit costs is set by its shape: layer widths, input and activation bit widths, the
accumulator width of each layer and the low bits truncated before each lookup. A stand-in
program has that shape and weights that fill each neuron's accumulator budget as trained,
pruned weights do (one full-magnitude weight per neuron, the rest spread over the room left,
biases taking most of what remains: concrete's parameters depend on the accumulators' actual
range, not only on their declared width). The search prices configurations with it
(``autofhe.search.price.pricing``) and the latency cost model is calibrated on it
(``autofhe.fhe.latency``), so both see the circuits searches produce.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autofhe.fhe.bits import budget_limit, input_max_abs, weight_max_abs
from autofhe.fhe.program import IntegerProgram, ProgramLayer, real_lookup

__all__ = ["Shape", "stand_in", "stand_in_samples"]


@dataclass(frozen=True)
class Shape:
    """What a circuit's cost depends on, for one configuration and one dataset."""

    dims: tuple[int, ...]  # input, hidden..., outputs
    n_w_bits: int
    n_a_bits: int
    hidden_signed: bool
    acc_bits: tuple[int, ...]  # per linear layer
    lsbs: tuple[int, ...]  # low bits truncated before each hidden lookup (0 for the output)


def stand_in(shape: Shape):
    """An integer program of ``shape`` whose weights fill each neuron's budget."""
    rng = np.random.default_rng(0)
    w_max = weight_max_abs(shape.n_w_bits)
    n_layers = len(shape.dims) - 1
    in_maxes = [input_max_abs(shape.n_a_bits, True)] + [
        input_max_abs(shape.n_a_bits, shape.hidden_signed)
    ] * (n_layers - 1)
    activation = np.tanh if shape.hidden_signed else (lambda real: np.maximum(real, 0))
    layers = []
    for i in range(n_layers):
        n_in, n_out, x_max = shape.dims[i], shape.dims[i + 1], in_maxes[i]
        limit = budget_limit(shape.acc_bits[i])
        # Trained, pruned neurons: one full-magnitude weight (per-neuron scaling puts one at
        # w_max), the rest spread over the remaining budget.
        weight = rng.integers(-w_max, w_max + 1, size=(n_out, n_in))
        weight[:, 0] = w_max
        for j in range(n_out):
            order = np.argsort(-np.abs(weight[j]), kind="stable")
            running = np.cumsum(np.abs(weight[j][order]) * x_max)
            weight[j][order[running > limit]] = 0
        # Biases take most of the room left (as trained ones do): concrete's parameters depend
        # on the accumulators' actual range, not only on their declared width.
        room = limit - np.abs(weight).sum(axis=1) * x_max
        bias = np.where(np.arange(n_out) % 2 == 0, 1, -1) * np.floor(0.7 * room)
        layer = ProgramLayer(
            weight=weight.astype(np.int64), bias=bias.astype(np.int64), acc_bits=shape.acc_bits[i]
        )
        if i < n_layers - 1:
            layer.out_bits, layer.out_signed = shape.n_a_bits, shape.hidden_signed
            layer.function = real_lookup(
                activation,
                np.full(n_out, 4.0 / 2 ** (shape.acc_bits[i] - 1)),
                1.0 / (2 ** (shape.n_a_bits - 1)),
                layer.out_range,
            )
            layer = layer.with_rounding(shape.lsbs[i])
        layers.append(layer)
    return IntegerProgram(
        input_scale=np.ones(shape.dims[0]),
        input_bits=shape.n_a_bits,
        layers=layers,
        output_scale=np.ones(shape.dims[-1]),
    )


def stand_in_samples(shape: Shape, n: int = 32, seed: int = 1) -> list[np.ndarray]:
    """Quantized inputs of ``shape``: random rows plus the two extremes (the inputset)."""
    low, high = -(2 ** (shape.n_a_bits - 1)), 2 ** (shape.n_a_bits - 1) - 1
    rng = np.random.default_rng(seed)
    rows = list(rng.integers(low, high + 1, size=(n, shape.dims[0])))
    return [*rows, np.full(shape.dims[0], low), np.full(shape.dims[0], high)]
