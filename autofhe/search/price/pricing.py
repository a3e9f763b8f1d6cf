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
from autofhe.fhe.standin import Shape, stand_in, stand_in_samples
from autofhe.nn.pruning import (
    input_max_abs,
    min_feasible_accum_bits,
    signed_bits,
    weight_max_abs,
)
from autofhe.params import value_of

__all__ = ["Price", "Shape", "min_accum_bits", "price", "shape_of"]

#: A table lookup input above this cannot compile (concrete-python's limit).
MAX_LOOKUP_BITS = 16
#: Hidden layers wider than this are refused before training (lookups per layer).
MAX_WIDTH = 1024


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
    from autofhe.nn.module import is_nonnegative, resolve_activation

    return not is_nonnegative(resolve_activation(activation)())


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

    n_layers = int(value_of(params, "module__n_layers"))
    mult = value_of(params, "module__n_hidden_neurons_multiplier")
    n_w, n_a = int(value_of(params, "n_w_bits")), int(value_of(params, "n_a_bits"))
    budget = value_of(params, "n_accum_bits")
    lookup = value_of(params, "module__lookup_bits")
    validate_module_params(n_layers, mult, n_w, n_a, budget, lookup)
    signed = hidden_signed(value_of(params, "module__activation_function"))
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


@functools.lru_cache(maxsize=4096)
def _report(shape: Shape) -> dict | str:
    """The circuit report of the stand-in program, or the reason it cannot compile."""
    from autofhe.fhe.compile import circuit_report, compile_program

    program = stand_in(shape)
    samples = stand_in_samples(shape)
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
        key_bytes=int(report["evaluation_keys_bytes"]),  # as uploaded (compressed)
        pbs_count=int(report["pbs_count"]),
        lookup_bits=tuple(report["lookup_bits_per_layer"]),
    )
    if max_latency is not None and out.latency_s > max_latency:
        out.reason = f"latency: priced {out.latency_s:.3f} s > max {max_latency} s"
    elif max_key_size is not None and out.key_bytes > max_key_size:
        mb, cap = out.key_bytes / 1e6, max_key_size / 1e6
        out.reason = f"key_size: priced {mb:.1f} MB of keys to upload > max {cap:.1f} MB"
    return out
