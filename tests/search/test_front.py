"""The one Pareto front: the sweep against the definition, on trials and on a study."""

from __future__ import annotations

import math

import optuna
from hypothesis import given
from hypothesis import strategies as st

from autofhe.search.front.pareto import pareto_front, study_front, sweep

VALUES = st.sampled_from([0.5, 0.7, 0.9, 1.0])
LATENCIES = st.sampled_from([0.01, 0.1, 1.0, math.inf])


def _definition(points):
    """Non-dominated distinct points by the definition (O(n^2)), first index of equals."""
    out, seen = [], set()
    for i, (m, lat) in enumerate(points):
        dominated = any(om >= m and olat <= lat and (om > m or olat < lat) for om, olat in points)
        if not dominated and (m, lat) not in seen:
            seen.add((m, lat))
            out.append(i)
    return sorted(out, key=lambda i: -points[i][0])


@given(st.lists(st.tuples(VALUES, LATENCIES), max_size=30))
def test_sweep_is_the_definition(points):
    assert sweep(points) == _definition(points)


def _study(values):
    study = optuna.create_study(directions=["maximize", "minimize"])
    for v in values:
        study.add_trial(
            optuna.trial.create_trial(
                values=list(v[:2]), system_attrs={"constraints": [v[2] if len(v) > 2 else 0.0]}
            )
        )
    return study


def test_infeasible_and_unfinished_trials_are_never_on_the_front():
    study = _study([(0.9, 0.1), (0.99, 0.01, 1.0), (0.8, 0.05), (0.9, 0.1)])
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    front = pareto_front(study.get_trials())
    # the infeasible 0.99 would dominate both; of the equal (0.9, 0.1) the first stands
    assert [(t.number, tuple(t.values)) for t in front] == [(0, (0.9, 0.1)), (2, (0.8, 0.05))]


def test_study_front_is_computed_once_per_complete_trial():
    study = _study([(0.9, 0.1)])
    first = study_front(study)
    assert study_front(study) is first  # nothing completed since: the same list
    study.add_trial(optuna.trial.create_trial(values=[0.95, 0.2]))
    second = study_front(study)
    assert second is not first and [t.number for t in second] == [1, 0]
