"""optuna-dashboard's API, served by ``autofhe dashboard`` on a real SQLite study, reports
feasibility as ``autofhe pareto`` and Optuna do, and carries the front's note and plot."""

from __future__ import annotations

import json

from dashboard_study import FEASIBLE_FRONT, TRIALS, get_json

from autofhe.search.notes import FRONT_HEADING, FRONT_PLOT_ID


def _detail(dashboard) -> dict:
    base, name = dashboard
    summaries = get_json(f"{base}/api/studies")["study_summaries"]
    study_id = next(s["study_id"] for s in summaries if s["study_name"] == name)
    return get_json(f"{base}/api/studies/{study_id}")


def test_dashboard_reads_every_constraint(dashboard):
    detail = _detail(dashboard)
    for t in detail["trials"]:
        violated = TRIALS[t["number"]][2]
        # the list the dashboard reads: feasible iff every value <= 0
        assert len(t["constraints"]) == 4
        assert all(c <= 0 for c in t["constraints"]) == (not violated), t["number"]


def test_dashboard_best_trials_are_the_feasible_front(dashboard):
    detail = _detail(dashboard)
    assert {t["number"] for t in detail["best_trials"]} == FEASIBLE_FRONT


def test_note_holds_the_measured_front_table_and_the_plot_is_stored(dashboard):
    detail = _detail(dashboard)
    body = detail["note"]["body"]
    assert FRONT_HEADING in body
    rows = [line for line in body.splitlines() if line.startswith("| ") and "---" not in line]
    assert [int(r.split("|")[1]) for r in rows[1:]] == sorted(
        FEASIBLE_FRONT, key=lambda n: -TRIALS[n][0]
    )
    assert "| 0 | 0.9500 | 0.8 | 0.91 | load " in body
    plots = {p["id"]: json.loads(p["graph_object"]) for p in detail["plotly_graph_objects"]}
    figure = plots[FRONT_PLOT_ID]
    names = [trace["name"] for trace in figure["data"]]
    assert names == ["predicted", "measured"]
    assert sorted(figure["data"][1]["x"]) == [0.15, 0.34, 0.91]
