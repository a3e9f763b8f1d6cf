"""Rungs: a trial is only compared with trials at the same rung and no higher price."""

from __future__ import annotations

import numpy as np
import optuna

from autofhe import NeuralNetClassifier
from autofhe.search.fidelity import RungStop, rung_verdict


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
