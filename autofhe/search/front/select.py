"""Choosing one model of a study's Pareto front (what ``autofhe export`` ships).

Picks: a trial by number, the most accurate, the fastest, or the knee (the best compromise);
``min_accuracy`` / ``max_latency`` first narrow the front. Latency is the measured one when
the trial has it (``measured_latency_s``), else the predicted objective value.

The knee: in the box spanned by the front (metric, and log10 latency since latencies span
orders of magnitude), normalized to [0, 1], the point farthest from the straight line that
joins the fastest and the most accurate model *on the side of the ideal corner* (high metric,
low latency). A point below that line is a worse trade than mixing the two extremes, so a
front that bulges away from the ideal corner has no knee and the most accurate extreme is
returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from autofhe.errors import ParameterError
from autofhe.search.record import TrialRecord

__all__ = ["PICKS", "choose", "knee", "latency", "with_model"]

PICKS = ("knee", "accuracy", "latency")


def latency(trial) -> float:
    """Seconds per sample: measured when known, else predicted."""
    return TrialRecord.of(trial).latency(trial.values[1])


def _most_accurate(trials):
    return max(trials, key=lambda t: (t.values[0], -latency(t), -t.number))


def _fastest(trials):
    return min(trials, key=lambda t: (latency(t), -t.values[0], t.number))


def knee(front: Sequence):
    """The knee of ``front`` (see the module docstring); the most accurate when it has none."""
    if not front:
        raise ParameterError("the front is empty: there is no model to choose from.")
    best, fast = _most_accurate(front), _fastest(front)

    def point(t) -> tuple[float, float]:
        return t.values[0], math.log10(max(latency(t), 1e-9))

    (m_hi, l_hi), (m_lo, l_lo) = point(best), point(fast)
    span_m, span_l = (m_hi - m_lo) or 1.0, (l_hi - l_lo) or 1.0

    def gain(t) -> float:
        # normalized: the fastest model sits at (0, 0), the most accurate at (1, 1); the
        # ideal corner is (1, 0): x - y > 0 above the diagonal (better than the line)
        m, lat = point(t)
        return (m - m_lo) / span_m - (lat - l_lo) / span_l

    top = max(gain(t) for t in front)
    if top <= 1e-12:  # nothing beats the line joining the extremes
        return best
    return _most_accurate([t for t in front if gain(t) >= top - 1e-12])


def with_model(front: Sequence) -> list:
    """Front trials whose compiled model is stored (the ones that can be exported)."""
    return [t for t in front if TrialRecord.of(t).exportable]


def choose(
    trials: Sequence,
    front: Sequence,
    *,
    number: int | None = None,
    pick: str | None = None,
    min_accuracy: float | None = None,
    max_latency: float | None = None,
    study: str = "the study",
):
    """One trial to export.

    Parameters
    ----------
    trials : every trial of the study (to find ``number``).
    front : its Pareto front (``autofhe.search.front.pareto.pareto_front``).
    number : this trial; it must be COMPLETE and have a stored model.
    pick : "knee", "accuracy" (most accurate, then fastest) or "latency" (fastest, then most
        accurate), among the front models that meet the filters. Default: the knee, or with
        ``min_accuracy`` the fastest that meets it, or with ``max_latency`` only the most
        accurate that meets it.
    min_accuracy, max_latency : keep front models with at least this metric and at most this
        latency (seconds per sample).
    """
    candidates = with_model(front)
    if number is not None:
        return _by_number(trials, candidates, number, study)
    if pick is not None and pick not in PICKS:
        raise ParameterError(f"pick={pick!r} is not a choice; use one of {', '.join(PICKS)}.")
    if not candidates:
        raise ParameterError(
            f"{study} has no feasible trial with a stored model yet; run more trials with "
            "`autofhe search` or `autofhe worker`."
        )
    ok = [
        t
        for t in candidates
        if (min_accuracy is None or t.values[0] >= min_accuracy)
        and (max_latency is None or latency(t) <= max_latency)
    ]
    if not ok:
        raise ParameterError(
            "no front model meets --min-accuracy / --max-latency; the front is "
            + ", ".join(f"{t.values[0]:.3f} at {latency(t):.3g} s" for t in candidates)
            + "."
        )
    if pick is None:
        pick = (
            "latency"
            if min_accuracy is not None
            else "accuracy"
            if max_latency is not None
            else "knee"
        )
    if pick == "accuracy":
        return _most_accurate(ok)
    if pick == "latency":
        return _fastest(ok)
    return knee(ok)


def _by_number(trials, candidates, number: int, study: str):
    import optuna

    match = [t for t in trials if t.number == number]
    if not match:
        raise ParameterError(f"{study} has no trial {number}.")
    trial = match[0]
    if trial.state != optuna.trial.TrialState.COMPLETE or trial.values is None:
        raise ParameterError(
            f"trial {number} is {trial.state.name}, not COMPLETE; pick a trial of the front "
            "(autofhe pareto --study ...)."
        )
    if not TrialRecord.of(trial).exportable:
        numbers = ", ".join(str(t.number) for t in candidates) or "none"
        why = TrialRecord.of(trial).store_error
        raise ParameterError(
            f"trial {number} has no stored model "
            + (f"(storing it failed: {why})" if why else "(only Pareto-front trials get one)")
            + f"; trials with a model: {numbers}."
        )
    return trial
