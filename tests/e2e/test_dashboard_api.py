"""optuna-dashboard's API, served by ``autofhe dashboard`` on a real SQLite study, reports
feasibility as ``autofhe pareto`` and Optuna do, and carries the front's note and plot."""

from __future__ import annotations

import json

from dashboard_study import FEASIBLE_FRONT, TRIALS, get_json

from autofhe.search.front.notes import FRONT_HEADING, FRONT_PLOT_ID


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


def test_a_stop_during_requests_ends_the_dashboard_at_once(tmp_path):
    """Before: wsgiref caught the Interrupted of a SIGTERM that landed while it answered a
    request, logged it and served on; the process never stopped."""
    import signal
    import subprocess
    import threading
    import time
    import urllib.request

    from dashboard_study import AUTOFHE, build_study, free_port

    url = f"sqlite:///{tmp_path}/autofhe.db"
    build_study(url)
    port = free_port()
    proc = subprocess.Popen(
        [AUTOFHE, "dashboard", "--storage", url, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base, done = f"http://127.0.0.1:{port}", threading.Event()

    def hammer() -> None:  # requests back to back: the signal lands in one of them
        while not done.is_set():
            try:
                urllib.request.urlopen(f"{base}/api/studies/1", timeout=5).read()
            except OSError:
                time.sleep(0.05)

    deadline = time.time() + 60
    while True:
        try:
            get_json(f"{base}/api/studies")
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "it did not start"
            time.sleep(0.3)
    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=5)
    finally:
        done.set()
        for t in threads:
            t.join()
        proc.kill()
    assert code == 143
    assert proc.stderr.read().strip().splitlines()[-1] == "autofhe: interrupted"
