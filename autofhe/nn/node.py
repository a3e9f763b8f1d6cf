"""A :class:`~autofhe.nn.module.QuantMLP` forward pass as one autograd node, its backward
written out.

Autograd through the network's ~70 small operations spends more on recording and replaying
its graph than on the arithmetic. :class:`NetworkNode` computes the same values without a graph
(the layers' own :meth:`QuantMLP._layer`, the quantizers of :mod:`autofhe.nn.fused`) and the
gradients by the formulas autograd applies to the same operations (``derivatives.yaml``), in
the same order: bit for bit autograd's gradients on the CPU, where training runs
(``tests/nn/test_fused.py``: against autograd through the same operations, and against
training through brevitas's own quantizers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from autofhe.nn.fused import FusedSpec, act_grad, act_values, const, sum_to, weight_grad


@dataclass(frozen=True)
class Route:
    """What the node needs of a network whose quantizers it computes itself."""

    #: the input quantizer's, then each activation quantizer's
    act_specs: tuple[FusedSpec, ...]
    #: each linear layer's weight quantizer
    weight_specs: tuple[FusedSpec, ...]
    #: per layer: the scale of the quantizer before it, its weight, its bias
    params: tuple[torch.Tensor, ...]
    #: the network's input before its quantizer (client-side standardization)
    normalize: Callable[[torch.Tensor], torch.Tensor]
    #: ``layer(index, h, s, w_spec) -> (z, tape)``: a linear layer, what it needs to be
    #: differentiated in its tape (:meth:`autofhe.nn.module.QuantMLP._layer`)
    layer: Callable
    activation: nn.Module


class NetworkNode(torch.autograd.Function):
    """The network's forward pass without a graph; its backward by autograd's formulas."""

    @staticmethod
    def forward(ctx, route: Route, x, *params):
        specs = route.act_specs
        h, s, input_saved = act_values(route.normalize(x), params[0], specs[0])
        z, tape = route.layer(0, h, s, route.weight_specs[0])
        layers, acts = [(tape, s.shape)], []
        for i in range(1, len(specs)):
            a, a_tape = activate(route.activation, z)
            h, s, a_saved = act_values(a, params[3 * i], specs[i])
            acts.append((a_tape, a_saved))
            z, tape = route.layer(i, h, s, route.weight_specs[i])
            layers.append((tape, s.shape))
        # The parameters through save_for_backward: a backward after one of them changed in
        # place fails as autograd's own would. The rest are intermediates, kept on ctx (never
        # the output z: ctx -> z -> its grad_fn -> ctx would be a reference cycle).
        ctx.save_for_backward(*params)
        ctx.specs, ctx.layers, ctx.acts, ctx.input_saved = specs, layers, acts, input_saved
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        ctx.saved_tensors  # noqa: B018 (raises if a parameter changed since the forward)
        specs, layers, acts = ctx.specs, ctx.layers, ctx.acts
        grads: list[torch.Tensor | None] = [None] * (3 * len(specs))
        for i in reversed(range(len(specs))):
            tape, s_shape = layers[i]
            g_h, g_s, grads[3 * i + 1], grads[3 * i + 2] = layer_grads(g, tape, s_shape)
            if i == 0:
                grads[0] = act_grad(ctx.input_saved, specs[0], g_h, g_s, need_x=False)[1]
            else:
                a_tape, a_saved = acts[i - 1]
                g_a, grads[3 * i] = act_grad(a_saved, specs[i], g_h, g_s, need_x=True)
                g = activation_grad(g_a, a_tape)
        return (None, None, *grads)


def activate(activation: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """``(activation(z), what activation_grad needs)``."""
    if type(activation) is nn.ReLU:
        a = activation(z)
        return a, (a,)
    # any other activation: a graph of its own, run once (a random one such as RReLU draws
    # once; an in-place one changes a copy), differentiated by autograd
    with torch.enable_grad():
        z = z.detach().requires_grad_()
        a = activation(z)
    return a.detach(), (z, a)


def activation_grad(g: torch.Tensor, tape: tuple) -> torch.Tensor:
    """Gradient of the activation's input from that of its output."""
    if len(tape) == 1:  # ReLU: ReluBackward0's own formula, on the output
        return torch.ops.aten.threshold_backward(g, tape[0], 0)
    z, a = tape
    return torch.autograd.grad(a, z, g)[0]


def layer_grads(g: torch.Tensor, tape: tuple, s_shape: torch.Size):
    """Gradients ``(h, s, weight, bias)`` of a layer (:meth:`QuantMLP._layer`'s ``tape``) from
    that of its output: autograd's formulas for the same operations, in the same order."""
    W, b, xs, x_int, Wq, w_tape, acc, xb, b_int, mask, inside = tape
    # the lookup's shift to the bucket centre is a constant: g passes unchanged
    # z = addmm(b_int * acc, x_int, Wq.t()), F.linear's own call
    g_bias_q = sum_to(g, b.shape)
    mat2 = Wq.t()
    if x_int.stride(0) == 1 and x_int.stride(1) == x_int.size(0):  # mm_mat1_backward
        g_x_int = mat2.mm(g.t()).t()
    else:
        g_x_int = g.mm(mat2.t())
    if mat2.stride(0) == 1 and mat2.stride(1) == mat2.size(0):  # mm_mat2_backward, then t()
        g_Wq = g.t().mm(x_int)
    else:
        g_Wq = x_int.t().mm(g).t()
    if mask is not None:
        g_Wq = g_Wq * mask
    g_b_int = g_bias_q * acc
    g_acc = g_bias_q * b_int
    if inside is not None:
        g_b_int = torch.where(inside, g_b_int, const(0.0, g_b_int.dtype))
    # the straight-through round passes g_b_int to xb = b / acc
    g_b = g_b_int / acc
    g_acc = g_acc + -g_b_int * (xb / acc)  # xb is b / acc, bit for bit
    w_spec, w_saved = w_tape
    g_Wx = weight_grad(w_saved, w_spec, g_Wq, g_acc.reshape(acc.shape[0], 1))
    g_W = g_Wx * xs
    g_xs = sum_to(g_Wx * W, xs.shape)
    g_h = g_x_int / xs
    g_xs = g_xs + sum_to(-g_x_int * (x_int / xs), xs.shape)
    return g_h, g_xs.reshape(s_shape), g_W, g_b
