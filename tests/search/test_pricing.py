"""Pricing before training: shapes, feasibility, and the price against the compiled model."""

from __future__ import annotations

import numpy as np
import pytest

from autofhe import NeuralNetClassifier
from autofhe.fhe.latency import CostModel
from autofhe.search.plan.space import to_estimator_params
from autofhe.search.price.pricing import min_accum_bits, price, shape_of

COST = CostModel(base=0.002, per_byte=1e-8, seconds_per_unit=1e-3, seconds_per_pbs=1e-3, cores=2)


def test_slack_resolves_to_the_smallest_feasible_budget_plus_slack():
    params = to_estimator_params(
        {
            "n_w_bits": 3,
            "n_a_bits": 4,
            "module__n_layers": 2,
            "accum_slack": 2,
            "module__activation_function": "ReLU",
        }
    )
    # 3-bit weights (|w| <= 3) x 4-bit unsigned ReLU outputs (<= 15) = 45: 7 signed bits
    assert min_accum_bits(3, 4, 2, signed_hidden=False) == 7
    assert params["n_accum_bits"] == 9
    assert "accum_slack" not in params
    assert to_estimator_params({"accum_slack": "none"})["n_accum_bits"] is None


def test_shape_follows_widths_budget_and_lookup_bits():
    shape = shape_of(
        {
            "module__n_layers": 3,
            "module__n_hidden_neurons_multiplier": 4,
            "n_w_bits": 3,
            "n_a_bits": 3,
            "n_accum_bits": 8,
            "module__lookup_bits": 5,
        },
        n_features=2,
        n_outputs=2,
    )
    assert shape.dims == (2, 8, 8, 2)  # widths are not capped by the two features
    assert shape.acc_bits == (8, 8, 8)  # the budget: the bias takes the room weights leave
    assert shape.lsbs == (3, 3, 0)  # hidden accumulators truncated to 5 bits, none at the end


def test_impossible_budget_and_limits_have_reasons():
    tight = {"n_w_bits": 6, "n_a_bits": 6, "n_accum_bits": 6, "module__n_layers": 1}
    assert price(tight, 4, 2, COST).reason.startswith("budget: n_accum_bits=6 is too small")
    linear = {"n_w_bits": 4, "n_a_bits": 4, "n_accum_bits": 10, "module__n_layers": 1}
    ok = price(linear, 4, 2, COST)
    assert ok.reason is None and ok.latency_s > 0 and ok.pbs_count == 0
    assert price(linear, 4, 2, COST, max_latency=ok.latency_s / 2).reason.startswith("latency")
    assert price(linear, 4, 2, COST, max_key_size=1000).reason is None  # no lookup: 64 bytes
    wide = {"module__n_hidden_neurons_multiplier": 300, "n_accum_bits": 8}
    assert price(wide, 4, 2, COST).reason.startswith("width")


@pytest.mark.parametrize(
    "params",
    [
        {
            "module__n_hidden_neurons_multiplier": 4,
            "n_w_bits": 3,
            "n_a_bits": 4,
            "n_accum_bits": 8,
            "module__lookup_bits": 5,
        },
        {
            "module__n_hidden_neurons_multiplier": 1.5,
            "n_w_bits": 2,
            "n_a_bits": 3,
            "n_accum_bits": 7,
            "module__lookup_bits": 6,
            "module__activation_function": "Tanh",
        },
    ],
)
def test_price_is_within_a_quarter_of_the_compiled_prediction(params):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2)).astype(np.float32)
    y = (np.hypot(X[:, 0], X[:, 1]) > 1).astype(int)
    quote = price(params, 2, 2, COST)
    model = NeuralNetClassifier(max_epochs=20, lr=0.01, random_state=0, **params).fit(X, y)
    model.compile(X)
    report = model.fhe_report()
    assert all(p >= r for p, r in zip(quote.lookup_bits, report["lookup_bits_per_layer"]))
    compiled = COST.predict(report)
    # The price assumes every accumulator fills its budget; a trained one may not (then its
    # truncation drops fewer bits: fewer PBS). So the price is an upper bound, and exact in
    # PBS count and close in latency when the budget is filled.
    assert quote.latency_s >= 0.95 * compiled
    assert quote.latency_s == pytest.approx(compiled, rel=0.4)
    if model.accumulator_bits_ == list(quote.shape.acc_bits):
        assert quote.pbs_count == report["pbs_count"]
        assert list(quote.lookup_bits) == report["lookup_bits_per_layer"]
        assert quote.latency_s == pytest.approx(compiled, rel=0.25)


def test_key_size_is_priced_as_a_client_uploads_it():
    """Keys travel compressed: a hidden-layer configuration is priced (and limited) at its
    compressed size, a fraction of what it takes uncompressed (and of concrete's estimate)."""
    hidden = {
        "module__n_layers": 2,
        "module__n_hidden_neurons_multiplier": 2,
        "n_w_bits": 3,
        "n_a_bits": 3,
        "n_accum_bits": 8,
        "module__lookup_bits": 5,
    }
    quote = price(hidden, 4, 2, COST)
    assert quote.reason is None and 5e6 < quote.key_bytes < 100e6
    assert price(hidden, 4, 2, COST, max_key_size=quote.key_bytes * 1.01).reason is None
    over = price(hidden, 4, 2, COST, max_key_size=quote.key_bytes * 0.99).reason
    assert over.startswith("key_size: priced")
