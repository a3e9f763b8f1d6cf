"""Accumulator-budget arithmetic, per-neuron masks, and the guarantee after fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autofhe import NeuralNetClassifier, NeuralNetRegressor
from autofhe.errors import AccumulatorBudgetError
from autofhe.nn.pruning import (
    budget_limit,
    input_max_abs,
    min_feasible_accum_bits,
    neuron_keep_mask,
    signed_bits,
    weight_max_abs,
    worst_case_accumulator,
)


def test_bit_arithmetic():
    assert [signed_bits(v) for v in (0, 1, 2, 3, 4, 7, 8, 127, 128)] == [1, 2, 3, 3, 4, 4, 5, 8, 9]
    assert budget_limit(8) == 127
    assert weight_max_abs(3) == 3
    assert input_max_abs(3, signed=True) == 4
    assert input_max_abs(3, signed=False) == 7
    # 3-bit weights x 3-bit unsigned hidden inputs: 3 * 7 = 21 -> 6 signed bits
    assert min_feasible_accum_bits(3, [4, 7]) == 6


def test_mask_keeps_largest_weights_that_fit_and_leaves_bias_room():
    w = torch.tensor([[3.0, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    w_mask, room = neuron_keep_mask(w, x_max=4, limit=21)
    # neuron 0 contributions 12, 4, 8, 0 -> sorted 12, 8, 4, 0: 12 + 8 = 20 fits, +4 does not.
    assert w_mask.tolist()[0] == [1.0, 0.0, 1.0, 0.0]
    # neuron 1: 4 * 4 = 16 fits entirely.
    assert w_mask.tolist()[1] == [1.0, 1.0, 1.0, 1.0]
    assert room.tolist() == [1.0, 5.0]


@settings(max_examples=30, deadline=None)
@given(
    n_out=st.integers(1, 6),
    n_in=st.integers(1, 40),
    n_w_bits=st.integers(2, 6),
    x_max=st.integers(1, 64),
    extra_bits=st.integers(0, 6),
    seed=st.integers(0, 2**16),
)
def test_mask_always_fits_budget(n_out, n_in, n_w_bits, x_max, extra_bits, seed):
    rng = np.random.default_rng(seed)
    wm = weight_max_abs(n_w_bits)
    w = torch.from_numpy(rng.integers(-wm, wm + 1, size=(n_out, n_in)).astype(np.float64))
    b = torch.from_numpy(rng.integers(-500, 500, size=n_out).astype(np.float64))
    bits = signed_bits(wm * x_max) + extra_bits
    w_mask, room = neuron_keep_mask(w, x_max, budget_limit(bits))
    b = torch.clamp(b, -room, room)
    worst = worst_case_accumulator((w * w_mask).numpy(), b.numpy(), x_max)
    assert (worst <= budget_limit(bits)).all()
    # The largest-magnitude weight of each neuron survives at a feasible budget.
    top = w.abs().argmax(dim=1)
    assert all(w_mask[j, top[j]] == 1 or w[j, top[j]] == 0 for j in range(n_out))


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    n_samples=st.integers(8, 60),
    n_features=st.integers(1, 12),
    n_layers=st.integers(1, 3),
    n_w_bits=st.integers(2, 5),
    n_a_bits=st.integers(2, 5),
    extra_bits=st.integers(0, 5),
    regression=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_guarantee_holds_for_every_neuron_after_fit(
    n_samples, n_features, n_layers, n_w_bits, n_a_bits, extra_bits, regression, seed
):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_features)).astype(np.float32) * 3
    hidden_max = input_max_abs(n_a_bits, signed=False)  # ReLU hidden activations
    budget = min_feasible_accum_bits(n_w_bits, [input_max_abs(n_a_bits, True), hidden_max])
    budget += extra_bits
    if regression:
        y = X.sum(axis=1) * 5
        est = NeuralNetRegressor
    else:
        y = np.arange(n_samples) % 3
        est = NeuralNetClassifier
    model = est(
        module__n_layers=n_layers,
        n_w_bits=n_w_bits,
        n_a_bits=n_a_bits,
        n_accum_bits=budget,
        max_epochs=3,
        lr=0.05,
        random_state=seed,
    ).fit(X, y)
    assert len(model.accumulator_bits_) == n_layers
    assert max(model.accumulator_bits_) <= budget
    for layer, x_max in zip(model.program.layers, model.module_.input_maxes()):
        worst = worst_case_accumulator(layer.weight, layer.bias, x_max)
        assert (worst <= budget_limit(budget)).all()
        # and the program's accumulators really stay inside on extreme inputs
    extreme = np.concatenate([np.full((1, n_features), 1e6), np.full((1, n_features), -1e6)])
    model.predict(extreme.astype(np.float32))


@settings(max_examples=15, deadline=None)
@given(n_w_bits=st.integers(2, 8), n_a_bits=st.integers(2, 8), n_layers=st.integers(1, 3))
def test_impossible_budget_errors_before_training(n_w_bits, n_a_bits, n_layers):
    maxes = [input_max_abs(n_a_bits, True)] + [input_max_abs(n_a_bits, False)] * (n_layers > 1)
    needed = min_feasible_accum_bits(n_w_bits, maxes)
    epochs = []

    from skorch.callbacks import Callback

    class Count(Callback):
        def on_epoch_begin(self, net, **kwargs):
            epochs.append(1)

    X = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    y = np.arange(20) % 2
    model = NeuralNetClassifier(
        module__n_layers=n_layers,
        n_w_bits=n_w_bits,
        n_a_bits=n_a_bits,
        n_accum_bits=max(2, needed - 1),
        callbacks=[Count()],
    )
    if needed - 1 < 2:
        return  # every allowed budget is feasible for these widths
    with pytest.raises(AccumulatorBudgetError, match=f"n_accum_bits >= {needed}"):
        model.fit(X, y)
    assert epochs == []
    # and the smallest feasible budget named in the message works
    model.set_params(n_accum_bits=needed, max_epochs=1).fit(X, y)
    assert max(model.accumulator_bits_) <= needed
