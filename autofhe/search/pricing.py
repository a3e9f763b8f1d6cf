"""Price a configuration before training it: feasibility, predicted latency, key size.

Everything that sets the cost of a circuit is known before any weight is learned: the layer
widths, the input and activation bit widths, the accumulator width (the guaranteed
``n_accum_bits`` budget, or the worst case the bit widths allow) and the lookup precision
(``module__lookup_bits``). So a configuration is priced by compiling a *stand-in* integer
program of exactly that shape, whose weights fill the accumulator budget as trained weights
do, and handing its circuit statistics to the latency cost model. Compilation of such a
program takes a fraction of a second and its result is cached per shape, so every sampled
configuration is priced, and one over ``--max-latency`` or the key-size limit is never trained.

The stand-in's weights: each neuron holds full-magnitude weights (``+-w_max``) on as many
inputs as the budget allows and smaller ones elsewhere, as a pruned trained neuron does; what
concrete's parameter choice depends on (bit widths, the norm of each weight row) then matches
the trained network closely. ``benchmarks/pricing.py`` prints the error against the prediction
made after training and compiling the real model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from autofhe.errors import AutofheError
from autofhe.nn.pruning import (
    budget_limit,
    input_max_abs,
    min_feasible_accum_bits,
    signed_bits,
    weight_max_abs,
)

__all__ = ["Price", "Shape", "min_accum_bits", "price", "shape_of"]

#: A table lookup input above this cannot compile (concrete-python's limit).
MAX_LOOKUP_BITS = 16
#: Hidden layers wider than this are refused before training (lookups per layer).
MAX_WIDTH = 1024


@dataclass(frozen=True)
class Shape:
    """What a circuit's cost depends on, for one configuration and one dataset."""

    dims: tuple[int, ...]  # input, hidden..., outputs
    n_w_bits: int
    n_a_bits: int
    hidden_signed: bool
    acc_bits: tuple[int, ...]  # per linear layer
    lsbs: tuple[int, ...]  # low bits truncated before each hidden lookup (0 for the output)


@dataclass
class Price:
    """The outcome of pricing: ``reason`` is None for a configuration that can be trained."""

    shape: Shape | None
    latency_s: float = float("nan")
    key_bytes: int = 0
    pbs_count: int = 0
    lookup_bits: tuple[int, ...] = ()
    reason: str | None = None

    def attrs(self) -> dict[str, Any]:
        """User attributes recording the price (JSON values)."""
        return {
            "priced_latency_s": None if np.isnan(self.latency_s) else round(self.latency_s, 6),
            "priced_key_bytes": int(self.key_bytes),
            "priced_pbs_count": int(self.pbs_count),
            "priced_lookup_bits": list(self.lookup_bits),
        }


def _hidden_signed(activation) -> bool:
    from autofhe.nn.module import _is_nonnegative, resolve_activation

    return not _is_nonnegative(resolve_activation(activation)())


@functools.lru_cache(maxsize=64)
def _signed_by_name(name: str) -> bool:
    return _hidden_signed(name)


def hidden_signed(activation) -> bool:
    """Whether the activation's quantizer is signed (its output goes below zero)."""
    if isinstance(activation, str):
        return _signed_by_name(activation)
    return _hidden_signed(activation)


def min_accum_bits(n_w_bits: int, n_a_bits: int, n_layers: int, signed_hidden: bool) -> int:
    """The smallest accumulator budget any network with these bit widths can meet."""
    maxes = [input_max_abs(n_a_bits, True)]
    if n_layers > 1:
        maxes.append(input_max_abs(n_a_bits, signed_hidden))
    return min_feasible_accum_bits(n_w_bits, maxes)


def shape_of(params: dict[str, Any], n_features: int, n_outputs: int) -> Shape:
    """The circuit shape of estimator parameters ``params`` on this data.

    Raises :class:`AutofheError` (a ParameterError) for a configuration no network can meet.
    """
    from autofhe.nn.module import hidden_width, validate_module_params

    n_layers = int(params.get("module__n_layers", 2))
    mult = params.get("module__n_hidden_neurons_multiplier", 4.0)
    n_w, n_a = int(params.get("n_w_bits", 3)), int(params.get("n_a_bits", 3))
    budget = params.get("n_accum_bits")
    lookup = params.get("module__lookup_bits")
    validate_module_params(n_layers, mult, n_w, n_a, budget, lookup)
    signed = hidden_signed(params.get("module__activation_function", "ReLU"))
    width = hidden_width(n_features, mult)
    dims = (n_features, *([width] * (n_layers - 1)), n_outputs)
    in_maxes = [input_max_abs(n_a, True)] + [input_max_abs(n_a, signed)] * (n_layers - 1)
    need = min_accum_bits(n_w, n_a, n_layers, signed)
    if budget is not None and budget < need:
        from autofhe.errors import AccumulatorBudgetError

        raise AccumulatorBudgetError(
            f"n_accum_bits={budget} is too small for n_w_bits={n_w}, n_a_bits={n_a}: use "
            f"n_accum_bits >= {need}."
        )
    acc_bits = []
    for i, x_max in enumerate(in_maxes):
        # A budget bounds weights and bias together, and a trained neuron's bias takes the
        # room its weights leave: the accumulator may reach the whole budget. Without one,
        # the weights' worst case plus a bias as large as one more input.
        worst = (dims[i] + 1) * weight_max_abs(n_w) * x_max
        acc_bits.append(signed_bits(worst) if budget is None else int(budget))
    lsbs = [
        max(0, bits - int(lookup)) if (lookup is not None and i < n_layers - 1) else 0
        for i, bits in enumerate(acc_bits)
    ]
    return Shape(dims, n_w, n_a, signed, tuple(acc_bits), tuple(lsbs))


def _stand_in(shape: Shape):
    """An integer program of ``shape`` whose weights fill each neuron's budget."""
    from autofhe.fhe.program import IntegerProgram, ProgramLayer, real_lookup

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


@functools.lru_cache(maxsize=4096)
def _report(shape: Shape) -> dict | str:
    """The circuit report of the stand-in program, or the reason it cannot compile."""
    from autofhe.fhe.compile import circuit_report, compile_program

    program = _stand_in(shape)
    low, high = -(2 ** (shape.n_a_bits - 1)), 2 ** (shape.n_a_bits - 1) - 1
    rng = np.random.default_rng(1)
    samples = list(rng.integers(low, high + 1, size=(32, shape.dims[0])))
    samples += [np.full(shape.dims[0], low), np.full(shape.dims[0], high)]
    try:
        circuit = compile_program(program, samples)
    except AutofheError as exc:
        return str(exc).splitlines()[0]
    return circuit_report(circuit, program)


def price(
    params: dict[str, Any],
    n_features: int,
    n_outputs: int,
    cost_model,
    max_latency: float | None = None,
    max_key_size: float | None = None,
) -> Price:
    """Price estimator parameters on data of ``n_features`` inputs and ``n_outputs`` outputs.

    ``reason`` is set when the configuration cannot be a usable circuit: impossible budget,
    too wide, lookups over 16 bits, no crypto parameters, or over the latency / key limits.
    """
    try:
        shape = shape_of(params, n_features, n_outputs)
    except AutofheError as exc:
        return Price(None, reason=f"budget: {exc}")
    if len(shape.dims) > 2 and shape.dims[1] > MAX_WIDTH:
        return Price(shape, reason=f"width: {shape.dims[1]} lookups per layer > {MAX_WIDTH}")
    for bits, lsbs in zip(shape.acc_bits[:-1], shape.lsbs):
        if bits - lsbs > MAX_LOOKUP_BITS or bits > MAX_LOOKUP_BITS:
            return Price(shape, reason=f"compile: {bits}-bit accumulators before a lookup")
    report = _report(shape)
    if isinstance(report, str):
        return Price(shape, reason=f"compile: {report}")
    out = Price(
        shape,
        latency_s=float(cost_model.predict(report)),
        key_bytes=int(report["size_of_evaluation_keys"]),
        pbs_count=int(report["pbs_count"]),
        lookup_bits=tuple(report["lookup_bits_per_layer"]),
    )
    if max_latency is not None and out.latency_s > max_latency:
        out.reason = f"latency: priced {out.latency_s:.3f} s > max {max_latency} s"
    elif max_key_size is not None and out.key_bytes > max_key_size:
        gb, cap = out.key_bytes / 1e9, max_key_size / 1e9
        out.reason = f"key_size: priced {gb:.1f} GB of keys > max {cap:.1f} GB"
    return out
