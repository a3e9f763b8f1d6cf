"""The fused training quantizers compute brevitas's values and gradients bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification

import autofhe.nn.fused as fused_mod
from autofhe import NeuralNetClassifier
from autofhe.nn.fused import (
    act_quant,
    calibrated,
    fused_spec,
    spec_of,
    weight_quant,
)
from autofhe.nn.module import QuantMLP, _tensor_quant


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def _calibrated_module(bits: int, po2: bool, activation: str) -> QuantMLP:
    torch.manual_seed(bits)
    module = QuantMLP(
        5, 3, n_w_bits=bits, n_a_bits=bits, power_of_two_scaling=po2,
        activation_function=activation,
    )  # fmt: skip
    module.data_init(torch.randn(64, 5), torch.randn(64, 3))
    return module


CASES = [(bits, po2) for bits in range(2, 9) for po2 in (True, False)]


@pytest.mark.parametrize(("bits", "po2"), CASES)
def test_weight_quantizer_matches_brevitas(bits, po2):
    module = _calibrated_module(bits, po2, "ReLU")
    for layer in module.linears:
        quant = _tensor_quant(layer.weight_quant)
        spec = fused_spec(quant)
        assert spec is not None and spec.kind == "weight" and spec.po2 == po2
        # a row of zeros exercises the minimum scale; the others are ordinary weights
        w = torch.randn(layer.weight.shape) * 0.3
        w[0] = 0.0
        w.requires_grad_()
        g_y, g_s = torch.randn(w.shape), torch.randn(w.shape[0], 1)
        g_y[:, 1], g_y[:, 2] = -0.0, 0.0  # signed zeros (a pruned weight's gradient) too
        grads, values = [], []
        for fused in (False, True):
            y, s = weight_quant(w, spec) if fused else quant(w)[:2]
            values.append((y, s))
            # the scale also gets a gradient from outside (the layer's bias uses it)
            ((y * g_y).sum() + (s * g_s).sum()).backward(inputs=[w])
            grads.append(w.grad)
            w.grad = None
        with torch.no_grad():  # computed without an autograd node: the same values
            values.append(weight_quant(w, spec))
        (ref_y, ref_s), *fused_values = values
        for y, s in fused_values:
            assert y.shape == ref_y.shape and s.shape == ref_s.shape
            assert torch.equal(_bits(y), _bits(ref_y)) and torch.equal(_bits(s), _bits(ref_s))
        assert torch.equal(_bits(grads[1]), _bits(grads[0]))
        assert grads[0].abs().sum() > 0  # not a vacuous comparison


@pytest.mark.parametrize(("bits", "po2"), CASES)
@pytest.mark.parametrize(
    "which", ["input (signed, per feature)", "hidden unsigned", "hidden signed"]
)
def test_activation_quantizer_matches_brevitas(bits, po2, which):
    module = _calibrated_module(bits, po2, "Tanh" if which == "hidden signed" else "ReLU")
    proxy = module.input_quant if which.startswith("input") else module.act_quants[0]
    quant = _tensor_quant(proxy.act_quant)
    spec = fused_spec(quant)
    assert spec is not None and spec.kind == "act" and calibrated(spec)
    assert (spec.q_min < 0) == (which != "hidden unsigned")
    value = spec.scaling.value
    width = 5 if which.startswith("input") else module.linears[0].out_features
    # wide enough that some values clamp at both ends (no gradient there)
    x = torch.randn(64, width) * 3 * float(quant(torch.ones(1, width))[1].detach().max()) * 2**bits
    x.requires_grad_()
    g_y = torch.randn(x.shape)
    results = []
    for fused in (False, True):
        y, s = act_quant(x, spec) if fused else quant(x)[:2]
        g_s = torch.linspace(-1, 1, s.numel()).reshape(s.shape)
        ((y * g_y).sum() + (s * g_s).sum()).backward(inputs=[x, value])
        results.append((y, s, x.grad, value.grad))
        x.grad = value.grad = None
    for ref, fused in zip(*results, strict=True):
        assert ref.shape == fused.shape
        assert torch.equal(_bits(fused), _bits(ref))
    with torch.no_grad():  # computed without an autograd node: the same values
        values = act_quant(x, spec)
    for ref, fused in zip(results[0][:2], values, strict=True):
        assert torch.equal(_bits(fused), _bits(ref))
    assert (results[0][2] == 0).any() and (results[0][2] != 0).any()  # clamped and not


def test_uncalibrated_activations_use_brevitas():
    module = QuantMLP(4, 2)
    spec = spec_of(_tensor_quant(module.act_quants[0].act_quant))
    assert not calibrated(spec)  # statistics phase: brevitas collects them
    module.data_init(torch.randn(32, 4), torch.randn(32, 2))
    assert calibrated(spec)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"n_accum_bits": 7, "module__lookup_bits": 4},
        {"power_of_two_scaling": False, "module__activation_function": "Tanh"},
        {"module__n_layers": 3, "n_w_bits": 5, "n_a_bits": 4},
    ],
)
def test_training_is_bit_identical_to_brevitas_training(params, monkeypatch):
    X, y = make_classification(n_samples=200, n_features=6, n_informative=4, random_state=0)
    X = X.astype(np.float32)
    states = []
    for fused in (True, False):
        if not fused:  # every quantizer through brevitas's own modules
            monkeypatch.setattr(fused_mod, "fused_spec", lambda quant: None)
        model = NeuralNetClassifier(random_state=0, max_epochs=6, lr=0.01, batch_size=32, **params)
        states.append(model.fit(X, y).module_.state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


@pytest.mark.parametrize(
    ("dtype", "same_size_int"), [(torch.float32, torch.int32), (torch.float64, torch.int64)]
)
def test_exp2_of_every_exponent_is_the_power_brevitas_computes(dtype, same_size_int):
    """The fused power-of-two scale takes ``exp2(e)`` where brevitas takes ``2.0 ** e``: the
    same bits for every exponent from below the smallest subnormal to past the largest float."""
    info = torch.finfo(dtype)
    smallest = int(np.log2(info.smallest_normal)) + int(np.log2(info.eps))  # -149, -1074
    exponents = torch.arange(smallest - 2, int(np.log2(info.max)) + 3, dtype=dtype)
    powers = 2.0**exponents
    assert powers[2] > 0 and powers[1] == 0 and torch.isinf(powers[-1])  # the whole range
    assert torch.equal(torch.exp2(exponents).view(same_size_int), powers.view(same_size_int))


NETWORKS = [
    ({}, 64, 5, 3),
    ({"activation_function": "RReLU"}, 64, 5, 3),  # random: one draw per forward
    ({"activation_function": "GELU", "n_layers": 3}, 64, 5, 3),
    ({"activation_function": "ELU"}, 64, 5, 2),
    ({"activation_function": "Tanh", "power_of_two_scaling": False}, 64, 5, 3),
    ({"n_accum_bits": 7, "lookup_bits": 4, "n_layers": 3}, 64, 5, 3),
    ({"n_layers": 1}, 64, 5, 3),
    ({"activation_function": "Sigmoid", "n_w_bits": 6, "n_a_bits": 5}, 64, 5, 1),
    ({}, 1, 1, 2),  # one row of one feature: mm's column-major backward branches
]


@pytest.mark.parametrize(("params", "rows", "features", "outputs"), NETWORKS)
def test_the_network_node_differentiates_as_autograd_does(params, rows, features, outputs):
    """One autograd node for the whole network (forward values, written-out backward): the
    values and every parameter's gradient are autograd's through the same operations."""
    torch.manual_seed(0)
    module = QuantMLP(features, outputs, **params)
    module.data_init(torch.randn(256, features), torch.randn(256, outputs))
    assert module._node_route() is not None
    x, g = torch.randn(rows, features) * 2, torch.randn(rows, outputs)
    results = []
    for by_hand in (True, False):
        if not by_hand:  # the layer by layer path, differentiated by autograd
            module._node_route = lambda: None
        module.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same draws for a random activation
        out = module(x)
        (out * g).sum().backward()
        results.append([out] + [p.grad for p in module.parameters()])
        assert module.activation.training  # (RReLU draws only in training mode)
    for hand, auto in zip(*results, strict=True):
        assert torch.equal(_bits(hand), _bits(auto))
    assert all(grad.abs().sum() > 0 for grad in results[1][1:])  # every parameter learns


def test_a_network_asked_for_its_inputs_gradient_gets_it_from_autograd():
    module = QuantMLP(3, 2)
    module.data_init(torch.randn(64, 3), torch.randn(64, 2))
    x = torch.randn(8, 3, requires_grad=True)
    module(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_the_network_node_takes_column_major_input_frozen_parameters_and_a_second_backward():
    torch.manual_seed(0)
    module = QuantMLP(4, 3)
    module.data_init(torch.randn(256, 4), torch.randn(256, 3))
    module.linears[0].weight.requires_grad_(False)
    x = torch.randn(4, 16).t()  # 16 rows, column-major: mm's other backward branch
    assert x.stride() == (1, 16)
    results = []
    for by_hand in (True, False):
        if not by_hand:
            module._node_route = lambda: None
        module.zero_grad(set_to_none=True)
        loss = module(x).square().sum()
        loss.backward(retain_graph=True)
        first = [None if p.grad is None else p.grad.clone() for p in module.parameters()]
        loss.backward()  # a retained graph backs through again: the gradients add up
        results.append((first, [p.grad for p in module.parameters()]))
    (first_hand, twice_hand), (first_auto, twice_auto) = results
    assert first_hand[1] is None and first_auto[1] is None  # the frozen weight
    for hand, auto in zip(first_hand + twice_hand, first_auto + twice_auto, strict=True):
        assert (hand is None and auto is None) or torch.equal(_bits(hand), _bits(auto))


def test_a_parameter_changed_between_forward_and_backward_is_refused():
    module = QuantMLP(3, 2)
    module.data_init(torch.randn(64, 3), torch.randn(64, 2))
    loss = module(torch.randn(8, 3)).sum()
    with torch.no_grad():
        module.linears[0].weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
