"""Rungs: a trial is only compared with trials at the same rung and no higher price."""

from __future__ import annotations

import numpy as np
import optuna

from autofhe import NeuralNetClassifier
from autofhe.search.trial.fidelity import RungStop, peers_at, rung_verdict


def test_too_few_peers_never_stop():
    assert rung_verdict(0.1, 1.0, [(0.1, 0.9), (0.1, 0.9)]) is None


def test_beaten_by_faster_peers_stops_and_by_slower_ones_does_not():
    faster = [(0.1, 0.9), (0.2, 0.92), (0.3, 0.95), (0.1, 0.5)]
    assert "ranks 4 of 5" in rung_verdict(0.6, 1.0, faster)
    # the same scores from slower models: no one to compare with, go on
    slower = [(lat * 100, score) for lat, score in faster]
    assert rung_verdict(0.6, 1.0, slower) is None
    # the best third of the faster peers keeps training; ties count as no worse
    assert rung_verdict(0.95, 1.0, faster) is None
    assert rung_verdict(0.948, 1.0, faster) is None


def test_callback_records_rungs_and_stops_training_at_one():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    seen = []

    def score(net):
        seen.append(len(net.history))
        return 0.5

    stop = RungStop(trial, 1.0, score, lambda epoch: [(0.1, 0.9)] * 3, rungs=(3, 6))
    model = NeuralNetClassifier(
        module__n_layers=1, max_epochs=20, random_state=0, callbacks=[("rungs", stop)]
    ).fit(X, y)
    assert seen == [3]  # scored at the first rung, stopped there
    assert len(model.history_) == 3
    assert stop.stopped.startswith("pruned at epoch 3")
    assert study.trials[0].user_attrs["rung_3"] == 0.5
    assert model.predict(X).shape == (120,)  # a usable model all the same


def test_peers_are_trials_of_the_same_depth_at_the_same_rung():
    # Learning curves of different depths cross: a linear model is near its best at the first
    # rung, where a hidden-layer network has barely started. Only same-depth trials compare.
    study = optuna.create_study(directions=["maximize", "minimize"])
    for layers, rung in ((1, 0.95), (1, 0.94), (1, 0.96), (2, 0.80), (3, 0.70)):
        trial = study.ask()
        trial.set_user_attr("estimator_params", {"module__n_layers": layers})
        trial.set_user_attr("priced_latency_s", 0.01 * layers)
        trial.set_user_attr("rung_10", rung)
    unlabelled = study.ask()  # no module__n_layers: the estimator's default depth, 2
    unlabelled.set_user_attr("estimator_params", {})
    unlabelled.set_user_attr("priced_latency_s", 0.02)
    unlabelled.set_user_attr("rung_10", 0.85)
    me = study.ask()
    assert sorted(peers_at(study, me.number, 10, 1)) == [(0.01, 0.94), (0.01, 0.95), (0.01, 0.96)]
    assert sorted(peers_at(study, me.number, 10, 2)) == [(0.02, 0.8), (0.02, 0.85)]
    assert peers_at(study, me.number, 30, 1) == []
    # a 2-layer trial scoring 0.82 at rung 10 goes on: the three faster linear models that
    # beat it are not its peers (ranked among them, it would stop)
    assert rung_verdict(0.82, 0.05, peers_at(study, me.number, 10, 1)) is not None
    assert rung_verdict(0.82, 0.05, peers_at(study, me.number, 10, 2)) is None
