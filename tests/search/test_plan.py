"""The data-aware start: the float probe decides seeds, widths, batch size and folds."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_circles

from autofhe.search.plan import make_plan, project
from autofhe.search.space import DEFAULT_SPACE


def _parts(X, y):
    n = len(X)
    a, b = int(0.6 * n), int(0.8 * n)
    return X[:a], X[a:b], X[b:], y[:a], y[a:b], y[b:]


def test_nonlinear_data_starts_from_hidden_layers_and_wide_enough_widths():
    X, y = make_circles(600, noise=0.1, factor=0.5, random_state=0)
    plan = make_plan("classification", "accuracy", _parts(X, y), dict(DEFAULT_SPACE), {}, None)
    assert plan["probe"]["gain"] > 0.2  # a linear model cannot separate circles
    assert plan["nonlinear"] is True
    assert plan["seeds"][0]["module__n_layers"] == 2
    widths = plan["space"]["module__n_hidden_neurons_multiplier"]
    assert widths["low"] * 2 == 2 and widths["high"] * 2 == 16  # 2 to 16 neurons
    assert plan["folds"] == 3  # 480 rows: cross-validated
    assert plan["fixed"]["batch_size"] == 360 // 8


def test_linear_data_starts_from_linear_models_and_respects_user_choices():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 10))
    y = (X @ rng.normal(size=10) > 0).astype(int)  # a linear boundary
    space = {**DEFAULT_SPACE, "module__n_hidden_neurons_multiplier": {"low": 0.5, "high": 1}}
    plan = make_plan("classification", "accuracy", _parts(X, y), space, {"batch_size": 64}, 1)
    assert plan["nonlinear"] is False
    assert plan["seeds"][0]["module__n_layers"] == 1
    assert plan["space"] == {} and plan["fixed"] == {} and plan["folds"] == 1


def test_regression_probe_uses_the_metric():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=400)
    plan = make_plan("regression", "r2", _parts(X, y), dict(DEFAULT_SPACE), {}, None)
    assert plan["probe"]["float_linear"] > 0.95
    assert plan["nonlinear"] is False


def test_seeds_are_projected_into_the_space():
    space = {
        "module__n_layers": {"low": 1, "high": 2},
        "lr": {"low": 0.01, "high": 0.1},
        "lr_schedule": ["constant"],
    }
    seed = {"module__n_layers": 3, "lr": 0.001, "lr_schedule": "cosine", "x": 1}
    assert project(seed, space) == {"module__n_layers": 2, "lr": 0.01}


def test_seed_slack_grows_with_the_fan_in_until_pruning_stops_binding():
    import torch
    from sklearn.datasets import load_digits

    from autofhe import NeuralNetClassifier
    from autofhe.search.plan import seed_slack, seed_trials
    from autofhe.search.space import to_estimator_params

    assert [seed_slack(n) for n in (1, 2, 8, 13, 30, 64, 784)] == [1, 1, 2, 2, 3, 3, 5]
    seeds = seed_trials(True, 64)
    assert {s["accum_slack"] for s in seeds if s["module__n_layers"] == 2} == {3}

    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean(0)) / (X.std(0) + 1e-9)).astype(np.float32)[:600]
    y = y[:600]

    def kept(slack) -> float:
        params = {**seeds[1], "accum_slack": slack, "max_epochs": 15, "n_init": 1}
        model = NeuralNetClassifier(random_state=0, batch_size=64, **to_estimator_params(params))
        first = model.fit(X, y).module_.integer_layers()[2][0]
        return float(np.mean(first.weight != 0))

    free = kept("none")  # no budget: what the trained weights use
    assert kept(seed_slack(64)) >= 0.9 * free
    assert kept(1) < 0.5 * free  # a fixed slack of 1 prunes away most of what they use
