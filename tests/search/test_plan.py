"""The data-aware start: the float probe decides seeds, widths, batch size and folds."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_circles

from autofhe.search.plan.probe import WEIGHT_DECAY_RANGE, make_plan, project, weight_decay_of
from autofhe.search.plan.space import DEFAULT_SPACE


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
    assert plan["fixed"] == {} and plan["folds"] == 1
    # widths were the user's; the weight decays were not: the data's joins the defaults
    wd = plan["probe"]["weight_decay"]
    assert plan["space"] == {"optimizer__weight_decay": sorted({0.0, 1e-4, 1e-3, wd})}
    assert plan["seeds"][0]["optimizer__weight_decay"] == wd
    assert plan["linear"] == {"optimizer__weight_decay": wd}  # not drawn by linear models
    mine = {**space, "optimizer__weight_decay": [0.0, 0.05]}
    plan = make_plan("classification", "accuracy", _parts(X, y), mine, {"batch_size": 64}, 1)
    assert plan["space"] == {} and plan["linear"] == {}


def test_large_data_trains_epochs_of_a_fixed_number_of_rows():
    """Above EPOCH_ROWS training rows, a trial's epoch draws that many rows afresh, so its
    cost does not grow with the data; smaller data trains on every row, as before."""
    from autofhe.search.plan.probe import EPOCH_ROWS

    rng = np.random.default_rng(0)
    X = rng.normal(size=(12_000, 5))
    y = (X[:, 0] > 0).astype(int)
    plan = make_plan("classification", "accuracy", _parts(X, y), dict(DEFAULT_SPACE), {}, None)
    assert plan["fixed"] == {
        "iterator_train__epoch_rows": EPOCH_ROWS,
        "batch_size": EPOCH_ROWS // 8,
    }
    small = make_plan(
        "classification", "accuracy", _parts(X[:6000], y[:6000]), dict(DEFAULT_SPACE), {}, None
    )
    assert small["fixed"] == {"batch_size": 3600 // 8}  # 3,600 training rows: every row
    mine = {"iterator_train__epoch_rows": 1000}  # the user's choice stands
    plan = make_plan("classification", "accuracy", _parts(X, y), dict(DEFAULT_SPACE), mine, None)
    assert "iterator_train__epoch_rows" not in plan["fixed"]


def test_linear_models_take_the_tuned_weight_decay_and_hidden_ones_draw_theirs():
    """The plan's ``linear`` values are not drawn by a network without hidden layers (not
    among its trial parameters) and reach its estimator; deeper networks draw them."""
    import optuna

    from autofhe.search.plan.space import suggest_raw
    from autofhe.search.trial.objective import SearchContext
    from autofhe.search.trial.rows import Rows

    linear = {"optimizer__weight_decay": 0.0037}
    space = {**DEFAULT_SPACE, "optimizer__weight_decay": [0.0, 1e-4, 1e-3, 0.0037]}
    rows = Rows("classification", "accuracy", *([None] * 6))
    ctx = SearchContext(rows, space=space, cost_model=None, linear=linear)
    # the depth placed last in the space: it is still drawn first
    depth_last = {k: v for k, v in space.items() if k != "module__n_layers"}
    depth_last["module__n_layers"] = space["module__n_layers"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {1: set(), 2: set()}
    for depth in (1, 2, 1, 2, 1, 2, 2, 2, 2, 2):
        study.enqueue_trial({"module__n_layers": depth})
        trial = study.ask()
        raw = suggest_raw(trial, depth_last, linear)
        assert ("optimizer__weight_decay" in trial.params) == (depth > 1)
        params = ctx.params(raw)
        seen[depth].add(params["optimizer__weight_decay"])
        study.tell(trial, 0.0)
    assert seen[1] == {0.0037}
    assert len(seen[2]) > 1  # drawn among the choices


def test_networks_without_hidden_layers_draw_no_hidden_parameters():
    """A conditional space: under the study's own sampler, a network without hidden layers
    has no activation, lookup or width among its trial parameters (what Optuna's Best Trials
    show and its sampler models), a deeper one has all three."""
    import optuna

    from autofhe.search.plan.space import HIDDEN_ONLY, suggest_raw
    from autofhe.search.run.study import _sampler

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=_sampler("tpe", 0))
    depths = []
    for _ in range(24):
        trial = study.ask()
        params = suggest_raw(trial, DEFAULT_SPACE)
        depth = params["module__n_layers"]
        depths.append(depth)
        drawn = HIDDEN_ONLY & set(trial.params)
        assert drawn == (set() if depth == 1 else HIDDEN_ONLY), (depth, trial.params)
        study.tell(trial, [params["n_w_bits"] / 8, params["n_a_bits"] / 8])
    assert {1, 2} <= set(depths)  # both families drawn


def test_weight_decay_has_the_tuned_linear_models_minimiser():
    """Trained on the mean loss with the probe's weight decay, a float torch linear model
    lands on the weights of the tuned scikit-learn model (logistic and ridge)."""
    import torch
    from sklearn.linear_model import LogisticRegression, Ridge

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5))
    logits = X @ rng.normal(size=5)
    y = (logits + rng.normal(size=400) > 0).astype(int)
    t = rng.normal(size=400) + 3 * logits

    def torch_fit(target, loss_fn, wd):
        w = torch.zeros(5, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        Xt = torch.from_numpy(X)
        opt = torch.optim.LBFGS(
            [w, b], max_iter=500, tolerance_grad=1e-12, line_search_fn="strong_wolfe"
        )

        def closure():
            opt.zero_grad()
            loss = loss_fn(Xt @ w + b, torch.from_numpy(target)) + wd / 2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return w.detach().numpy()

    C = 0.25
    wd = weight_decay_of("classification", C, 400)
    assert wd == 1 / (C * 400)  # 0.01: neither clipped nor rounded
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y).coef_[0]
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    got = torch_fit(y.astype(float), bce, wd)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-5)
    assert np.abs(got).max() < 0.9 * np.abs(torch_fit(y.astype(float), bce, 0.0)).max()

    alpha = 2.0
    ref = Ridge(alpha=alpha).fit(X, t).coef_
    got = torch_fit(t, torch.nn.functional.mse_loss, weight_decay_of("regression", alpha, 400))
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_the_datas_weight_decay_is_for_the_rows_a_trial_trains_on():
    from autofhe.search.plan.probe import probe

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 20))
    y = (X[:, 0] + rng.normal(size=3000) > 0).astype(int)  # noisy: some regularization
    parts = _parts(X, y)

    def decay(rows):
        return probe("classification", "accuracy", *parts[0::3], *parts[1::3], rows)["weight_decay"]

    few, many = decay(1000), decay(4000)
    assert WEIGHT_DECAY_RANGE[0] < many < few < WEIGHT_DECAY_RANGE[1]  # not clipped
    assert few / many == pytest.approx(4, rel=0.05)  # 1 / (C * rows), rounded
    # cross-validated, a plan's trials train on 2/3 of the 2,400 training + validation rows
    plan = make_plan("classification", "accuracy", parts, dict(DEFAULT_SPACE), {}, 3)
    assert plan["probe"]["weight_decay"] == decay(1600)


def test_weight_decay_is_clipped_and_rounded():
    low, high = WEIGHT_DECAY_RANGE
    assert weight_decay_of("classification", 100.0, 10_000) == low  # 1e-6: no decay at all
    assert weight_decay_of("classification", 0.001, 100) == high  # 10: a constant model
    assert weight_decay_of("classification", 0.316, 1010) == 0.0031
    assert weight_decay_of("regression", 10.0, 4000) == 0.005


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
    from autofhe.search.plan.probe import seed_slack, seed_trials
    from autofhe.search.plan.space import to_estimator_params

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
