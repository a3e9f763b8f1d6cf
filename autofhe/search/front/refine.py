"""Refining the accurate end of the front: some trials are neighbours of its best model.

The sampler balances both objectives, and cheap configurations are where most of the space's
volume lies, so the accurate end of the front (where a user starts looking) is reached by few
draws: a 20-minute default search on a 64-feature dataset ran 404 trials, 8 of them with 6- or
7-bit weights and none with 8, and its most accurate model had 5-bit weights. So once the
sampler has had its start, the ask that follows every ``EVERY``-th finished trial takes a
neighbour of the front's most accurate model (enqueued right before it, so nothing is left
queued when a search ends): the same configuration moved one step in one or two of its
parameters (more weight / activation / accumulator / lookup bits, a wider layer, more
epochs or starts, another learning rate or weight decay), within the study's space. Nothing
here depends on the data: it is a local search beside the sampler's global one, on the end of
the front the sampler under-serves.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna

from autofhe.search import record
from autofhe.search.front.pareto import study_front
from autofhe.search.plan.space import HIDDEN_ONLY
from autofhe.search.record import TrialRecord

__all__ = ["EVERY", "MIN_COMPLETE", "maybe_refine", "neighbour"]

#: One refinement per this many finished trials (the rest are the sampler's).
EVERY = 4
#: No refinement before this many COMPLETE trials (the sampler's start, the seeds).
MIN_COMPLETE = 10

#: (parameter, how it moves): +1 steps for bit widths and counts, a factor for the others;
#: "either": up or down (a factor of 1.6 in a range, the next choice of a sorted list).
_MOVES: list[tuple[str, Any]] = [
    ("n_w_bits", 1),
    ("n_a_bits", 1),
    ("accum_slack", 1),
    ("module__lookup_bits", 1),
    ("module__n_hidden_neurons_multiplier", 1.5),
    ("max_epochs", 1.7),
    ("n_init", 1),
    ("lr", "either"),
    ("optimizer__weight_decay", "either"),
    ("module__n_layers", 1),
]


def _within(entry: dict, value):
    value = min(max(value, entry["low"]), entry["high"])
    if isinstance(entry["low"], int) and isinstance(entry["high"], int):
        value = round(value)
    return value


def _move(name: str, step, value, entry, rng: np.random.Generator):
    """``value`` moved one step within ``entry`` (a range or a list of choices), or None."""
    if isinstance(entry, list):
        if step == "either":
            step = 1 if rng.random() < 0.5 else -1
        if value not in entry or not isinstance(step, int):
            return None
        at = entry.index(value) + step
        return entry[at] if 0 <= at < len(entry) else None
    if not isinstance(entry, dict) or not isinstance(value, (int, float)):
        return None
    if step == "either":
        factor = 1.6 if rng.random() < 0.5 else 1 / 1.6
        moved = value * factor
    elif isinstance(step, float):
        moved = value * step
    else:
        moved = value + step
    moved = _within(entry, moved)
    return None if math.isclose(moved, value) else moved


def neighbour(params: dict, space: dict, rng: np.random.Generator) -> dict | None:
    """``params`` with one or two parameters of :data:`_MOVES` moved a step (within
    ``space``); None when no parameter can move."""
    linear = params.get("module__n_layers") == 1
    candidates = [
        (name, step)
        for name, step in _MOVES
        if name in params and name in space and not (linear and name in HIDDEN_ONLY)
    ]
    order = rng.permutation(len(candidates))
    wanted = 1 + int(rng.random() < 0.5)
    out, moved = dict(params), 0
    for i in order:
        name, step = candidates[i]
        value = _move(name, step, params[name], space[name], rng)
        if value is not None:
            out[name] = value
            moved += 1
            if moved == wanted:
                break
    return out if moved else None


def maybe_refine(study: optuna.Study, trials: list, space: dict, seed: int) -> bool:
    """Enqueue a neighbour of the front's most accurate trial when it is time (see the module
    docstring); returns whether one was enqueued. Called before every ask."""
    state = optuna.trial.TrialState
    finished = [t for t in trials if t.state.is_finished()]
    complete = [t for t in finished if t.state == state.COMPLETE]
    if len(complete) < MIN_COMPLETE or len(finished) % EVERY:
        return False
    if any(t.state == state.WAITING for t in trials):
        return False  # a queued trial (a seed, a retry, a refinement) runs first
    if any(TrialRecord.of(t).refine_at == len(finished) for t in trials):
        return False  # another worker refined at this count already
    front = study_front(study, trials)
    if not front:
        return False
    top = front[0]  # the front is sorted by metric, best first
    rng = np.random.default_rng(seed + len(finished))
    tried = [t.params for t in trials]
    for _ in range(8):  # a neighbour not tried yet
        params = neighbour(top.params, space, rng)
        if params is not None and params not in tried:
            record.enqueue(study, params, refines=top.number, refine_at=len(finished))
            return True
    return False
