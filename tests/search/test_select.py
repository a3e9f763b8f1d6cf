"""Front selection: every pick, the filters, and a knee that is right on both front shapes."""

from __future__ import annotations

import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from autofhe.errors import ParameterError
from autofhe.search.front.pareto import pareto_front
from autofhe.search.front.select import choose, knee, latency, with_model


def _trial(number: int, metric: float, lat: float, measured: float | None = None, model=True):
    attrs = {"artifact_id": f"a{number}"} if model else {}
    if measured is not None:
        attrs["measured_latency_s"] = measured
    trial = create_trial(
        values=[metric, lat],
        params={"n_w_bits": 3},
        distributions={"n_w_bits": IntDistribution(2, 8)},
        user_attrs=attrs,
    )
    trial.number = number
    return trial


def _front(points):
    """Trials 0..n-1 at (metric, latency) points."""
    return [_trial(i, m, lat) for i, (m, lat) in enumerate(points)]


# Latencies 10**-3 .. 10**0: evenly spaced in log10, so the normalized box is easy to read.
#: Bulges toward the ideal corner: trial 1 gives 0.95 at 1/100 of the slowest model's time.
KNEED = _front([(0.70, 0.001), (0.95, 0.01), (0.97, 0.1), (0.98, 1.0)])
#: Bulges away from it: every middle point is a worse trade than the line between extremes.
SAGGING = _front([(0.70, 0.001), (0.72, 0.01), (0.75, 0.1), (0.98, 1.0)])


def test_knee_of_a_front_bulging_toward_the_ideal_corner():
    assert knee(KNEED).number == 1


def test_knee_of_a_front_bulging_away_is_not_its_worst_compromise():
    # |x - y| would pick trial 2 (farthest *below* the line); no middle point beats the line
    assert knee(SAGGING).number == 3


def test_knee_is_invariant_to_order_and_uses_measured_latency():
    assert knee(list(reversed(KNEED))).number == 1
    # measured says trial 2 is as fast as trial 1 and more accurate: it becomes the knee
    measured = [*KNEED[:2], _trial(2, 0.97, 0.1, measured=0.01), KNEED[3]]
    assert latency(measured[2]) == 0.01
    assert knee(measured).number == 2


def test_knee_of_one_or_two_points_is_the_most_accurate():
    assert knee(KNEED[:1]).number == 0
    assert knee([KNEED[0], KNEED[3]]).number == 3
    with pytest.raises(ParameterError, match="front is empty"):
        knee([])


def test_picks():
    assert choose(KNEED, KNEED).number == 1  # default: the knee
    assert choose(KNEED, KNEED, pick="knee").number == 1
    assert choose(KNEED, KNEED, pick="accuracy").number == 3
    assert choose(KNEED, KNEED, pick="latency").number == 0
    tie = [_trial(0, 0.9, 0.2), _trial(1, 0.9, 0.1), _trial(2, 0.8, 0.1)]
    assert choose(tie, tie, pick="accuracy").number == 1  # equal metric: the faster
    assert choose(tie, tie, pick="latency").number == 1  # equal latency: the more accurate
    with pytest.raises(ParameterError, match="pick='fastest' is not a choice"):
        choose(KNEED, KNEED, pick="fastest")


def test_filters():
    # at least 0.96: the fastest that meets it
    assert choose(KNEED, KNEED, min_accuracy=0.96).number == 2
    # at most 0.05 s: the most accurate that meets it
    assert choose(KNEED, KNEED, max_latency=0.05).number == 1
    # both, with an explicit pick among what is left
    assert choose(KNEED, KNEED, min_accuracy=0.9, max_latency=0.5, pick="accuracy").number == 2
    assert choose(KNEED, KNEED, min_accuracy=0.9, max_latency=0.5).number == 1
    with pytest.raises(ParameterError, match=r"no front model meets.*0\.980 at 1 s"):
        choose(KNEED, KNEED, min_accuracy=0.99)


def test_only_trials_with_a_stored_model_are_chosen():
    front = [_trial(0, 0.99, 0.001, model=False), *KNEED[1:]]
    assert [t.number for t in with_model(front)] == [1, 2, 3]
    assert choose(front, front, pick="latency").number == 1
    bare = [_trial(0, 0.9, 0.1, model=False)]
    with pytest.raises(ParameterError, match="no feasible trial with a stored model"):
        choose(bare, bare, study="study 'w'")


def test_by_number():
    running = create_trial(state=TrialState.RUNNING)
    running.number = 7
    no_model = _trial(5, 0.5, 0.5, model=False)
    trials = [*KNEED, no_model, running]
    assert choose(trials, KNEED, number=2).number == 2  # even when it is not the knee
    with pytest.raises(ParameterError, match="study 'w' has no trial 99"):
        choose(trials, KNEED, number=99, study="study 'w'")
    with pytest.raises(ParameterError, match="trial 7 is RUNNING, not COMPLETE"):
        choose(trials, KNEED, number=7)
    with pytest.raises(ParameterError, match="trial 5 has no stored model.*0, 1, 2, 3"):
        choose(trials, KNEED, number=5)


def test_choose_on_a_computed_front():
    """With pareto_front: dominated and infeasible trials never reach the pick."""
    dominated = _trial(4, 0.90, 0.5)
    infeasible = create_trial(
        values=[0.99, 0.0001], user_attrs={"artifact_id": "x"}, constraints={"latency": 1.0}
    )
    infeasible.number = 5
    trials = [*KNEED, dominated, infeasible]
    front = pareto_front(trials)
    assert sorted(t.number for t in front) == [0, 1, 2, 3]
    assert choose(trials, front, pick="latency").number == 0
    assert choose(trials, front).number == 1
