"""Multi-fidelity for a multi-objective search: rungs on epochs, judged among faster peers.

Optuna has no pruner for multi-objective studies, so autofhe keeps its own, as small as it
can be. A trial trains for its ``max_epochs``; at each rung epoch (10, 30, 90, 270) it scores
its clear quantized model on the validation rows and records the score as the user attribute
``rung_<epoch>``, where every worker sees it. It then stops if it is not in the best third of
its *peers*: the trials of the same depth that reached the same rung at no higher price (their
latency, known before training, is at most 10% above its own). That is successive halving
with two guards:
- a model is only ever compared with models at least as fast, so the fast end of the front is
  never pruned by slow, accurate models;
- a model is only compared with models of its own depth (``module__n_layers``). Learning
  curves of different depths cross: a linear model is near its best after 10 epochs, where a
  hidden-layer network that ends up better has barely started. Ranked together at early rungs,
  the deeper networks stopped there (digits: 29 of the 30 that trained, at epoch 10).

A stopped trial is PRUNED (no objective values) with ``fidelity_epochs`` and the reason in its
user attributes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skorch.callbacks import Callback

from autofhe.params import value_of
from autofhe.search import record
from autofhe.search.record import TrialRecord

__all__ = ["RUNGS", "RungStop", "depth", "peers_at", "rung_verdict"]

#: Epochs at which a trial is compared with its peers (successive halving by 3).
RUNGS = (10, 30, 90, 270)
#: Keep the best 1/ETA of the peers at a rung.
ETA = 3
#: Fewer peers than this at a rung: no verdict yet (early trials always continue).
MIN_PEERS = 3
#: Peers may be this much slower (relative) and still count as "no slower".
PRICE_SLACK = 0.10
#: Scores closer than this count as ties (one validation row on small data).
TIE = 0.005


def rung_verdict(score: float, latency: float, peers: list[tuple[float, float]]) -> str | None:
    """Why a trial scoring ``score`` at ``latency`` stops at a rung, or None to go on.

    ``peers``: ``(latency, score)`` of the other trials that reached the same rung.
    """
    faster = [s for lat, s in peers if lat <= latency * (1 + PRICE_SLACK)]
    if len(faster) < MIN_PEERS or not math.isfinite(score):
        return None if math.isfinite(score) else "score is not finite"
    better = sum(s > score + TIE for s in faster)
    keep = math.ceil((len(faster) + 1) / ETA)
    if 1 + better > keep:
        return (
            f"rung: {score:.3f} ranks {1 + better} of {len(faster) + 1} trials at the same "
            f"rung and no higher price (keeps the best {keep})"
        )
    return None


class RungStop(Callback):
    """skorch callback: score the model at the rung epochs and stop a hopeless trial.

    ``score_fn(net) -> float`` scores the clear quantized model on the validation rows;
    ``peers_fn(epoch) -> [(latency, score)]`` reads the other trials at that rung.
    Stopping raises KeyboardInterrupt, which skorch turns into the end of training (the
    best epoch so far is restored as usual).
    """

    def __init__(self, trial, latency: float, score_fn, peers_fn, rungs=RUNGS):
        self.trial, self.latency = trial, latency
        self.score_fn, self.peers_fn, self.rungs = score_fn, peers_fn, tuple(rungs)
        self.stopped: str | None = None

    def on_epoch_end(self, net, **kwargs):
        epoch = len(net.history)
        if epoch not in self.rungs or epoch >= net.max_epochs:
            return
        score = float(self.score_fn(net))
        record.write(self.trial, rung=(epoch, score))
        verdict = rung_verdict(score, self.latency, self.peers_fn(epoch))
        if verdict is not None:
            self.stopped = f"pruned at epoch {epoch}: {verdict}"
            raise KeyboardInterrupt


@torch.no_grad()
def clear_outputs(net, X: np.ndarray) -> np.ndarray:
    """The quantized module's outputs in inference mode (what the integer program computes),
    without building the program: cheap enough to run at every rung."""
    module = net.module_
    was_training = module.training
    module.eval()
    try:
        return module(torch.as_tensor(X, dtype=torch.float32)).numpy().astype(np.float64)
    finally:
        module.train(was_training)


def depth(params: dict) -> int:
    """The number of layers of estimator parameters ``params`` (the estimator's default when
    they do not say)."""
    return int(value_of(params, "module__n_layers"))


def peers_at(study, number: int, epoch: int, layers: int) -> list[tuple[float, float]]:
    """``(priced latency, rung score)`` of every other trial of ``layers`` layers that reached
    ``epoch``."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            continue
        r = TrialRecord.of(t)
        score = r.rungs.get(epoch)
        if (
            score is not None
            and r.priced_latency_s is not None
            and depth(r.estimator_params or {}) == layers
        ):
            out.append((float(r.priced_latency_s), float(score)))
    return out
