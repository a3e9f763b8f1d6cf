"""Constraints in both formats, the dashboard's best trials, the front's note and plot."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from optuna.study import StudyDirection

from autofhe.search.front.notes import (
    FRONT_HEADING,
    front_figure,
    publish_front,
)
from autofhe.search.front.pareto import pareto_front
from autofhe.search.price.feasibility import (
    DASHBOARD_KEY,
    is_feasible,
    named_constraints,
    patch_dashboard,
    record_constraints,
)

DIRECTIONS = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]


def _study() -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize"])


def _tell(study, values, violated: dict) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    record_constraints(trial, {"compile": 0.0, "latency": 0.0, **violated})
    study.tell(trial, values)
    return study.trials[-1]


def test_a_stored_trial_carries_both_formats():
    study = _study()
    stored = _tell(study, [0.9, 0.5], {"latency": 0.25})
    assert stored.system_attrs[DASHBOARD_KEY] == [0.0, 0.25]  # what optuna-dashboard reads
    assert named_constraints(stored) == {"compile": 0.0, "latency": 0.25}
    assert not is_feasible(stored)
    assert is_feasible(_tell(study, [0.8, 0.1], {}))
    # Optuna itself sees the same feasibility: the infeasible trial is not best
    assert [t.number for t in study.best_trials] == [1]


def test_a_fixed_trial_gets_the_named_constraints_only():
    trial = optuna.trial.FixedTrial({})
    record_constraints(trial, {"budget": 1.0, "compile": 0.0})
    assert trial.constraints == {"budget": 1.0, "compile": 0.0}


@pytest.fixture()
def unpatched():
    """optuna-dashboard as installed, restored after the test patches it."""
    import optuna_dashboard._app as app
    import optuna_dashboard._serializer as serializer

    saved = app.get_pareto_front_trials, serializer.serialize_frozen_trial
    yield app, serializer
    app.get_pareto_front_trials, serializer.serialize_frozen_trial = saved


def test_dashboard_best_trials_leave_infeasible_trials_out(unpatched):
    app, _ = unpatched
    study = _study()
    _tell(study, [0.99, 0.1], {"compile": 1.0})  # dominates every other point
    _tell(study, [0.9, 0.5], {})
    _tell(study, [0.8, 0.2], {})
    before = app.get_pareto_front_trials
    assert [t.number for t in app.get_pareto_front_trials(study.trials, DIRECTIONS)] == [0]
    patch_dashboard()
    patch_dashboard()  # twice is once
    front = app.get_pareto_front_trials(study.trials, DIRECTIONS)
    assert [t.number for t in front] == [1, 2]
    assert app.get_pareto_front_trials.__wrapped_front__ is before


def test_dashboard_shows_named_constraints_of_trials_stored_before_the_list(unpatched):
    _, serializer = unpatched
    study = _study()
    trial = study.ask()
    trial.set_constraint("latency", 0.5)  # what autofhe wrote before: named only
    study.tell(trial, [0.9, 0.1])
    old = study.trials[0]
    assert serializer.serialize_frozen_trial(study._study_id, old, {})["constraints"] == []
    patch_dashboard()
    assert serializer.serialize_frozen_trial(study._study_id, old, {})["constraints"] == [0.5]
    new = _tell(study, [0.8, 0.2], {"compile": 1.0})  # the list is kept as it is
    assert serializer.serialize_frozen_trial(study._study_id, new, {})["constraints"] == [1.0, 0.0]


def test_the_note_keeps_what_the_user_wrote_and_replaces_the_front():
    from optuna_dashboard import get_note, save_note

    study = _study()
    study.set_metric_names(["accuracy", "fhe_latency_s"])
    save_note(study, "My own remarks.")
    publish_front(study, [])
    assert get_note(study).startswith("My own remarks.\n\n" + FRONT_HEADING)
    assert "No feasible trial yet." in get_note(study)
    _tell(study, [0.9, 0.5], {})
    publish_front(study, pareto_front(study.trials))
    note = get_note(study)
    assert note.count(FRONT_HEADING) == 1 and "No feasible trial" not in note
    assert "| 0 | 0.9000 | 0.5 | - | - |" in note
    assert note.startswith("My own remarks.")


def test_front_figure_is_a_staircase_on_a_log_axis():
    study = _study()
    for i, lat in enumerate((0.004, 3.0)):  # before: a linear axis put 0.004 s on 0
        trial = study.ask()
        trial.set_user_attr("measured_latency_s", lat * 1.1)
        study.tell(trial, [0.8 + i / 10, lat])  # slower and better: both on the front
    figure = front_figure("accuracy", pareto_front(study.trials))
    assert figure["layout"]["xaxis"]["type"] == "log"
    low, high = figure["layout"]["xaxis"]["range"]
    assert low < math.log10(0.004) and high > math.log10(3.3)
    front, measured = figure["data"]
    assert front["line"]["shape"] == "hv" and front["x"][:2] == [0.004, 3.0]
    assert measured["mode"] == "markers" and measured["x"] == pytest.approx([0.0044, 3.3])
    assert json.loads(json.dumps(figure)) == figure  # plain JSON for the dashboard


def test_front_figure_of_one_point_is_framed_around_it():
    study = _study()
    _tell(study, [0.9, 0.05], {})
    layout = front_figure("accuracy", pareto_front(study.trials))["layout"]
    low, high = layout["yaxis"]["range"]  # before: plotly's default, 0 to 1.95
    assert 0.85 <= low < 0.9 < high <= 0.95
    low, high = layout["xaxis"]["range"]
    assert low < math.log10(0.05) < high and high - low <= 2


def test_an_empty_front_has_sane_axes_and_says_why():
    figure = front_figure("accuracy", [], "no feasible model: priced at 0.003 s")
    layout = figure["layout"]
    assert figure["data"] == []
    assert (layout["xaxis"]["range"], layout["yaxis"]["range"]) == ([-3, 1], [0, 1])
    assert layout["annotations"][0]["text"] == "no feasible model: priced at 0.003 s"


def test_a_feasible_trial_off_the_front_names_the_model_that_dominates_it():
    from autofhe.search.front.notes import trial_note

    study = _study()
    best = _tell(study, [0.95, 0.01], {})
    worse = _tell(study, [0.9, 0.02], {})
    front = pareto_front(study.trials)
    assert trial_note(worse, "accuracy", front).splitlines()[0] == (
        f"**Feasible**, off the front: trial {best.number} is as good or better on both "
        "(0.9500 at 0.01 s)"
    )
    assert trial_note(best, "accuracy", front).startswith("**Feasible**, on the Pareto front")


def test_trial_note_heads():
    from autofhe.search.front.notes import trial_note

    make = optuna.trial.create_trial
    pruned = make(state=optuna.trial.TrialState.PRUNED, user_attrs={"reason": "pruned: far below"})
    assert trial_note(pruned, "accuracy").splitlines()[0] == "**Pruned**: far below"
    bad = make(values=[0.5, 2.0], user_attrs={"reason": "latency: 2 s > 1 s", "max_bit_width": 6})
    note = trial_note(bad, "accuracy")
    assert note.splitlines()[0] == "**Infeasible**: latency: 2 s > 1 s"
    assert "- accuracy 0.5000 (validation, simulated)\n" in note
    assert "- max bit width 6\n" in note
