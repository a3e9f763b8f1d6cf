"""The Pareto front of a study: the one definition every command, note and decision uses.

A trial is on the front when it is COMPLETE, feasible (every constraint <= 0) and no other
such trial is at least as good on both objectives (metric up, latency down) and better on
one. Trials with exactly the same values are one point: the first to complete stands for it
(the one whose latency was measured and whose model was stored when it entered the front;
with several workers, trial numbers do not give the order in which trials finish).

:func:`sweep` finds the front of plain points in O(n log n); :func:`pareto_front` applies it
to trials; :func:`study_front` remembers a study's front until one more trial completes
(complete trials never change, so their number identifies the set).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

__all__ = ["pareto_front", "study_front", "sweep"]


def sweep(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(metric, latency)`` points, best metric first; of equal
    points, the first index.

    By decreasing metric: a point is on the front when it has the lowest latency of its
    metric and a latency strictly below that of every point with a higher metric (an
    infinite latency counts when no higher metric exists).
    """
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], points[i][1], i))
    out: list[int] = []
    best = None  # the lowest latency among higher metrics
    previous = None
    for i in order:
        metric, latency = points[i]
        if metric == previous:  # not the lowest latency of its metric
            continue
        previous = metric
        if best is None or latency < best:
            out.append(i)
            best = latency
    return out


def _completion_order(trial: Any) -> tuple:
    done = trial.datetime_complete
    return (done is None, done.timestamp() if done else 0.0, trial.number)


def _complete_feasible(trials: Sequence) -> list:
    return [
        t
        for t in trials
        if t.state.name == "COMPLETE"
        and t.values is not None
        and all(v <= 0 for v in t.constraints.values())
    ]


def pareto_front(trials: Sequence) -> list:
    """The front of ``trials`` (FrozenTrials), most accurate first."""
    done = sorted(_complete_feasible(trials), key=_completion_order)
    return [done[i] for i in sweep([tuple(t.values) for t in done])]


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def study_front(study: Any, trials: Sequence | None = None) -> list:
    """The front of ``study`` (its trials read when not given), computed once per number of
    complete trials of this Study object."""
    if trials is None:
        trials = study.get_trials(deepcopy=False)
    n_complete = sum(t.state.name == "COMPLETE" for t in trials)
    cached = _CACHE.get(study)
    if cached is not None and cached[0] == n_complete:
        return cached[1]
    front = pareto_front(trials)
    _CACHE[study] = (n_complete, front)
    return front
