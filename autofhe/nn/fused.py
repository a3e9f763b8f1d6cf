"""The training-time quantizers: brevitas's arithmetic in one autograd step each.

A brevitas tensor quantizer is a tree of some twenty script modules (statistics, restriction,
clamps, straight-through functions), each a call and often an autograd node. On the small
tensors of an FHE-sized MLP that call overhead, not the arithmetic, is what an epoch costs.
These functions compute the *same* float operations in the same order, so their values are
the brevitas values bit for bit, and their gradients are the derivatives brevitas's autograd
graph takes, written out by hand (see :func:`weight_quant` and :func:`act_quant`).

brevitas stays the reference: the quantizer modules hold the parameters and the bit widths,
calibrate the activation ranges (``QuantMLP.data_init``), and define the integer program
(``QuantMLP.integer_layers`` calls them). :func:`fused_spec` reads a quantizer's settings
(:func:`spec_of` keeps them on the quantizer) and says ``None`` for any configuration these
functions do not reproduce; the module then calls brevitas itself.

Gradients: each backward below is the chain brevitas's graph applies, with the same float
operations. A scale gets gradient from several places (inside the quantizer and from the
layer that uses it); float addition is not associative, so the backward adds them in the
order autograd adds them for brevitas (the later use first). ``tests/nn/test_fused.py``
checks values and gradients bit for bit against brevitas for every quantizer kind, bit
widths 2-8 and both scalings, and that whole trainings give the same model bit for bit.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from brevitas.core.function_wrapper.ops_ste import CeilSte
from brevitas.core.quant import RescalingIntQuant
from brevitas.core.restrict_val import FloatRestrictValue, PowerOfTwoRestrictValue
from brevitas.core.scaling.runtime import StatsFromParameterScaling
from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling
from brevitas.core.stats.stats_op import AbsMax

__all__ = [
    "FusedSpec",
    "act_grad",
    "act_quant",
    "act_values",
    "calibrated",
    "const",
    "fused_spec",
    "spec_of",
    "sum_to",
    "weight_grad",
    "weight_quant",
    "weight_values",
]

_LN2 = math.log(2.0)


@functools.lru_cache(maxsize=64)
def const(value: float, dtype: torch.dtype) -> torch.Tensor:
    """``value`` as a 0-dim tensor of ``dtype``, made once (never written to).

    ``t * 0.5`` wraps the Python number in a double tensor and casts it to ``t``'s dtype on
    every call; the op then computes in ``t``'s dtype with the number rounded to it. A 0-dim
    tensor of that dtype gives the same values without the casts (about a tenth of a small
    quantizer's cost: a dozen such operands per training step).
    """
    return torch.tensor(value, dtype=dtype)  # (a CPU scalar: bit for bit holds on the CPU)


@dataclass(frozen=True)
class FusedSpec:
    """What a fused quantizer needs of its brevitas original."""

    kind: str  # "weight" (per output channel, from the tensor's own abs-max) or "act"
    po2: bool  # power-of-two scales (ceil of log2), else float scales
    threshold: float  # integer range the scale maps to (brevitas's int_scaling_impl)
    q_min: float
    q_max: float
    min_scale: float  # brevitas's scaling_min_val
    scaling: torch.nn.Module  # the brevitas scaling module (activations: holds ``value``)


def _restrict_kind(restrict: torch.nn.Module) -> bool | None:
    """True for power-of-two (ceil), False for float (abs) restriction, None otherwise."""
    if isinstance(restrict, PowerOfTwoRestrictValue):
        return True if isinstance(restrict.float_to_int_impl, CeilSte) else None
    return False if isinstance(restrict, FloatRestrictValue) else None


def fused_spec(tensor_quant: torch.nn.Module) -> FusedSpec | None:
    """The settings of a brevitas tensor quantizer, or None if the fused path does not apply.

    Applies to what :class:`~autofhe.nn.module.QuantMLP` builds: a ``RescalingIntQuant`` with
    zero zero-point, round-to-nearest, and either weight scales from the per-channel abs-max
    of the tensor or an activation scale learned as a parameter. Activation quantizers apply
    only once calibrated (their statistics phase is brevitas's own business).
    """
    if not isinstance(tensor_quant, RescalingIntQuant):
        return None
    int_quant, scaling = tensor_quant.int_quant, tensor_quant.scaling_impl
    bit_width = tensor_quant.msb_clamp_bit_width_impl()
    threshold = float(tensor_quant.int_scaling_impl(bit_width))
    q_min, q_max = float(int_quant.min_int(bit_width)), float(int_quant.max_int(bit_width))
    if float(tensor_quant.zero_point_impl(torch.zeros(1), torch.ones(1), bit_width)) != 0.0:
        return None
    if type(int_quant.float_to_int_impl).__name__ != "RoundSte":
        return None
    ste_clamp = type(int_quant.tensor_clamp_impl).__name__
    if isinstance(scaling, StatsFromParameterScaling):
        stats = scaling.parameter_list_stats.stats.stats_impl
        inner = scaling.stats_scaling_impl
        po2 = _restrict_kind(inner.restrict_clamp_scaling.restrict_value_impl)
        if (
            ste_clamp != "TensorClampSte"
            or not isinstance(stats, AbsMax)
            or stats.stats_reduce_dim != 1
            or scaling.parameter_list_stats.extra_tracked_params_list is not None
            or type(inner.affine_rescaling).__name__ != "Identity"
            or po2 is None
        ):
            return None
        min_scale = inner.clamp_scaling.min_val
        return FusedSpec("weight", po2, threshold, q_min, q_max, min_scale, scaling)
    if isinstance(scaling, ParameterFromRuntimeStatsScaling):
        po2 = _restrict_kind(scaling.restrict_scaling.restrict_value_impl)
        if ste_clamp != "TensorClamp" or po2 is None:
            return None
        min_scale = scaling.clamp_scaling.min_val
        return FusedSpec("act", po2, threshold, q_min, q_max, min_scale, scaling)
    return None


def spec_of(tensor_quant: torch.nn.Module) -> FusedSpec | None:
    """:func:`fused_spec` of a tensor quantizer, computed once and kept on the quantizer.

    Kept on the quantizer itself, not on the model: brevitas builds a new tensor quantizer
    when it loads a state dict, and the new one gets its own spec on its first call.
    """
    try:
        return tensor_quant.__dict__["_autofhe_fused_spec"]
    except KeyError:
        spec = tensor_quant.__dict__["_autofhe_fused_spec"] = fused_spec(tensor_quant)
        return spec


def calibrated(spec: FusedSpec) -> bool:
    """Whether an activation quantizer has left its statistics phase (weights always have)."""
    scaling = spec.scaling
    return spec.kind == "weight" or scaling.counter > scaling.collect_stats_steps


def sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``t`` summed down to a broadcast ``shape``, as autograd reduces a broadcast gradient."""
    if not shape:  # a per-tensor scale: the plain sum, the same reduction
        return t.sum()
    lead = t.dim() - len(shape)
    dims = list(range(lead)) + [
        lead + i for i, n in enumerate(shape) if n == 1 and t.shape[lead + i] != 1
    ]
    return t.sum(dims, keepdim=True).reshape(shape) if dims else t


def _scale(r: torch.Tensor, spec: FusedSpec) -> torch.Tensor:
    """brevitas's scale from its restricted value ``r``: clamped to ``min_scale``, divided by
    the threshold."""
    return torch.clamp_min(r, spec.min_scale) / const(spec.threshold, r.dtype)


def _clamp(q: torch.Tensor, spec: FusedSpec) -> torch.Tensor:
    """Rounded values clamped to the integer range: brevitas's tensor clamp (two ``where``
    against the bounds) in one op, the same values (signed zeros and NaN included)."""
    return torch.clamp(q, spec.q_min, spec.q_max)


def weight_values(w: torch.Tensor, spec: FusedSpec):
    """The weight quantizer's forward: ``(q * s, s, what its backward needs)``."""
    m, idx = torch.max(torch.abs(w), dim=1, keepdim=True)
    m = torch.clamp_min(m, spec.min_scale)  # m >= 0: the sign-preserving clamp is this
    # exp2 of an integer is exactly 2.0 ** it (checked over every float exponent), faster
    r = torch.exp2(torch.ceil(torch.log2(m))) if spec.po2 else torch.abs(m)
    s = _scale(r, spec)
    u = w / s
    q = _clamp(torch.round(u + const(0.0, u.dtype)), spec)  # x - 0.0 is x, bit for bit
    return q * s, s, (w, s, u, q, m, r, idx)


def act_values(x: torch.Tensor, value: torch.Tensor, spec: FusedSpec, saved: bool = True):
    """The activation quantizer's forward: ``(q * s, s, what its backward needs or None)``;
    brevitas's ``(q - zero point) * s``, and the zero point is 0.0."""
    r = torch.exp2(torch.ceil(value)) if spec.po2 else torch.abs(value)
    s = _scale(r, spec)
    u = x / s
    rounded = torch.round(u + const(0.0, u.dtype))
    q = _clamp(rounded, spec)
    if not saved:
        return q * s, s, None
    inside = q == rounded  # where the clamp lets the gradient through
    return q * s, s, (u, value, s, q, r, inside)


def weight_grad(saved, spec: FusedSpec, g: torch.Tensor, g_s: torch.Tensor | None):
    """Gradient of the weight quantizer's input from those of its value ``g`` and its scale
    ``g_s`` (None: the scale is not used); ``saved`` as :func:`weight_values` returns it."""
    w, s, u, q, m, r, idx = saved
    g_u = g * s  # (q * s) -> q, straight through clamp and round to u = w / s
    g_w = g_u / s
    # s: from q * s and from w / s (div backward: -grad * ((w / s) / s), here subtracted:
    # IEEE negation is exact), and from outside (the bias, in the layer). Summed in the
    # order autograd's graph does it for brevitas: the later use first.
    g_scale = (g * q).sum(1, keepdim=True)
    if g_s is not None:
        g_scale = g_s + g_scale
    g_scale = g_scale - (g_u * (u / s)).sum(1, keepdim=True)
    g_r = g_scale / const(spec.threshold, g_scale.dtype)
    # 2**e: grad * (result * ln 2); ceil: straight through; log2: grad / (m * ln 2)
    if spec.po2:
        ln2 = const(_LN2, r.dtype)
        g_m = (g_r * (r * ln2)) / (m * ln2)
    else:
        g_m = g_r
    # max backward: to the arg-max of each row; abs backward: times sgn(w). Added as a dense
    # tensor, as autograd adds it: -0 + 0 * sgn(w) is +0 where w >= 0, the same signed zeros
    return g_w + torch.zeros_like(w).scatter_(1, idx, g_m) * w.sgn()


def act_grad(saved, spec: FusedSpec, g: torch.Tensor, g_s: torch.Tensor | None, need_x: bool):
    """Gradients ``(input or None, scale parameter)`` of an activation quantizer from those of
    its value and its scale; ``saved`` as :func:`act_values` returns it."""
    u, value, s, q, r, inside = saved
    g_u = torch.where(inside, g * s, const(0.0, g.dtype))
    g_x = g_u / s if need_x else None
    g_scale = sum_to(g * q, s.shape)  # the same order as in weight_grad
    if g_s is not None:
        g_scale = g_s + g_scale
    g_scale = g_scale - sum_to(g_u * (u / s), s.shape)
    g_r = g_scale / const(spec.threshold, g_scale.dtype)
    g_value = g_r * (r * const(_LN2, r.dtype)) if spec.po2 else g_r * value.sgn()
    return g_x, g_value


class _WeightQuant(torch.autograd.Function):
    """Narrow signed per-output-channel quantization, scale from the row's abs-max.

    brevitas: ``m = max|w|`` per row, clamped to ``min_scale`` (a sign-preserving clamp),
    restricted (``2**ceil(log2 m)`` or ``|m|``), clamped again, divided by the threshold;
    ``q = clamp_ste(round_ste(w / s))``; value ``q * s``. Straight-through round and clamp.
    """

    @staticmethod
    def forward(ctx, w, spec: FusedSpec):
        value, s, saved = weight_values(w, spec)
        ctx.spec = spec
        ctx.save_for_backward(*saved)
        return value, s

    @staticmethod
    def backward(ctx, g, g_s):
        return weight_grad(ctx.saved_tensors, ctx.spec, g, g_s), None


class _ActQuant(torch.autograd.Function):
    """Activation quantization with a learned scale parameter (per tensor or per feature).

    brevitas (calibrated, training or not): ``r = 2**ceil(value)`` (value in log2 units) or
    ``|value|``, clamped to ``min_scale``, divided by the threshold; ``q = clamp(round_ste(x /
    s))`` with a *true* clamp (no gradient outside the range); value ``q * s``.
    """

    @staticmethod
    def forward(ctx, x, value, spec: FusedSpec):
        out, s, saved = act_values(x, value, spec)
        ctx.spec = spec
        ctx.save_for_backward(*saved)
        return out, s

    @staticmethod
    def backward(ctx, g, g_s):
        return (*act_grad(ctx.saved_tensors, ctx.spec, g, g_s, ctx.needs_input_grad[0]), None)


def weight_quant(w: torch.Tensor, spec: FusedSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(quantized w, per-row scale of shape (rows, 1))``, as brevitas computes them.

    Without gradients (inference, the best-epoch loss) the values are computed directly: no
    autograd node, nothing kept for a backward pass.
    """
    if not torch.is_grad_enabled():
        return weight_values(w, spec)[:2]
    return _WeightQuant.apply(w, spec)


def act_quant(x: torch.Tensor, spec: FusedSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(quantized x, scale)`` of a calibrated activation quantizer, as brevitas computes
    (directly without gradients, as :func:`weight_quant`)."""
    if not torch.is_grad_enabled():
        return act_values(x, spec.scaling.value, spec, saved=False)[:2]
    return _ActQuant.apply(x, spec.scaling.value, spec)
