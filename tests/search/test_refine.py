"""Refinement trials: neighbours of the front's most accurate model, within the space."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from autofhe.search.front import refine
from autofhe.search.front.pareto import pareto_front
from autofhe.search.plan.space import DEFAULT_SPACE

SPACE = {**DEFAULT_SPACE, "module__n_hidden_neurons_multiplier": {"low": 0.1, "high": 2.0}}
TOP = {
    "module__n_layers": 2,
    "n_w_bits": 5,
    "n_a_bits": 4,
    "accum_slack": 3,
    "module__lookup_bits": 6,
    "module__n_hidden_neurons_multiplier": 0.5,
    "max_epochs": 100,
    "n_init": 2,
    "lr": 0.01,
    "optimizer__weight_decay": 1e-4,
}


def _inside(name, value) -> bool:
    entry = SPACE[name]
    if isinstance(entry, list):
        return value in entry
    return entry["low"] <= value <= entry["high"]


def test_a_neighbour_moves_one_or_two_parameters_within_the_space():
    rng = np.random.default_rng(0)
    moved = set()
    for _ in range(200):
        out = refine.neighbour(TOP, SPACE, rng)
        changed = [k for k in TOP if out[k] != TOP[k]]
        assert 1 <= len(changed) <= 2
        assert all(_inside(k, out[k]) for k in changed)
        assert all(isinstance(out[k], int) for k in ("n_w_bits", "max_epochs", "n_init"))
        moved.update(changed)
    assert moved == set(TOP)  # every parameter gets its turn


def test_a_choice_moves_to_either_neighbour_in_its_list():
    rng = np.random.default_rng(2)
    space = {"optimizer__weight_decay": [0.0, 1e-4, 1e-3, 2.3e-3]}

    def moves(value) -> set:
        out = [refine.neighbour({"optimizer__weight_decay": value}, space, rng) for _ in range(40)]
        return {o and o["optimizer__weight_decay"] for o in out}

    assert moves(1e-3) == {1e-4, 2.3e-3}
    assert moves(0.0) == {1e-4, None}  # below the first choice there is nothing: only up


def test_a_linear_model_never_moves_what_it_does_not_use():
    rng = np.random.default_rng(1)
    linear = {**TOP, "module__n_layers": 1}
    for _ in range(100):
        out = refine.neighbour(linear, SPACE, rng)
        assert out["module__n_hidden_neurons_multiplier"] == 0.5
        assert out["module__lookup_bits"] == 6


def test_nothing_moves_at_the_top_of_every_range():
    space = {"n_w_bits": {"low": 2, "high": 5}, "n_init": [1, 2]}
    assert refine.neighbour({"n_w_bits": 5, "n_init": 2}, space, np.random.default_rng(0)) is None


def _study(n_complete: int, waiting: bool = False) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    dists = {
        "n_w_bits": IntDistribution(2, 8),
        "lr": FloatDistribution(1e-3, 1e-1, log=True),
        "n_init": CategoricalDistribution([1, 2, 3]),
    }
    for i in range(n_complete):
        study.add_trial(
            optuna.trial.create_trial(
                params={"n_w_bits": 2 + i % 5, "lr": 0.01, "n_init": 1},
                distributions=dists,
                values=[0.5 + i / 100, 0.01 * (1 + i % 5)],
            )
        )
    if waiting:
        study.enqueue_trial({"n_w_bits": 3})
    return study


@pytest.mark.parametrize(
    ("n", "waiting", "expected"),
    [(12, False, True), (11, False, False), (8, False, False), (12, True, False)],
)
def test_refinement_is_enqueued_every_few_trials_after_the_start(n, waiting, expected):
    study = _study(n, waiting)
    trials = study.get_trials()
    front = pareto_front(trials)
    space = {
        "n_w_bits": {"low": 2, "high": 8},
        "lr": {"low": 1e-3, "high": 1e-1, "log": True},
        "n_init": [1, 2, 3],
    }
    assert refine.maybe_refine(study, trials, space, seed=0) is expected
    queued = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]
    if expected:
        (t,) = queued
        assert t.user_attrs["refines"] == front[0].number
        assert t.system_attrs["fixed_params"] != front[0].params
        trial = study.ask()  # the queued neighbour runs next, with its fixed values
        assert trial.suggest_int("n_w_bits", 2, 8) == t.system_attrs["fixed_params"]["n_w_bits"]
