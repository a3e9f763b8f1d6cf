"""optuna-dashboard's API, served by ``autofhe dashboard`` on a real SQLite study, reports
feasibility as ``autofhe pareto`` and Optuna do, and carries the front's note and plot."""

from __future__ import annotations

import json

import pytest
from dashboard_study import FEASIBLE_FRONT, TRIALS, get_json

from autofhe.search.front.notes import FRONT_HEADING, FRONT_PLOT_ID


def _detail(dashboard, name: str | None = None) -> dict:
    base, default = dashboard
    name = name or default
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
    assert names == ["front (predicted latency)", "measured latency"]
    assert figure["layout"]["xaxis"]["type"] == "log"
    assert sorted(figure["data"][1]["x"]) == [0.15, 0.34, 0.91]


def _front_plot(detail: dict) -> dict:
    plots = {p["id"]: json.loads(p["graph_object"]) for p in detail["plotly_graph_objects"]}
    return plots[FRONT_PLOT_ID]


def test_an_all_infeasible_study_says_why_on_sane_axes(dashboard):
    detail = _detail(dashboard, "none-accuracy")
    why = "no feasible model: the cheapest configuration was priced at 0.004 s per sample"
    assert why in detail["note"]["body"]
    assert "Relax it: resume the search with --max-latency 0.008." in detail["note"]["body"]
    layout = _front_plot(detail)["layout"]
    assert (layout["xaxis"]["range"], layout["yaxis"]["range"]) == ([-3, 1], [0, 1])
    assert layout["annotations"][0]["text"].replace("<br>", " ").startswith(why)
    assert max(map(len, layout["annotations"][0]["text"].split("<br>"))) <= 56  # it fits


def test_a_one_point_front_is_framed_around_its_point(dashboard):
    layout = _front_plot(_detail(dashboard, "one-accuracy"))["layout"]
    low, high = layout["yaxis"]["range"]  # before: plotly's default, 0 to 1.95
    assert 0.85 <= low < 0.9 < high <= 0.95


@pytest.mark.parametrize("number", sorted(n for n, v in TRIALS.items() if v[2]))
def test_every_infeasible_trial_note_says_so(dashboard, number):
    trial = next(t for t in _detail(dashboard)["trials"] if t["number"] == number)
    assert trial["note"]["body"].startswith("**Infeasible**: ")


def test_a_busy_port_is_one_line_before_the_banner(tmp_path):
    import socket
    import subprocess

    from dashboard_study import AUTOFHE, build_study

    url = f"sqlite:///{tmp_path}/autofhe.db"
    build_study(url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = subprocess.run(
            [AUTOFHE, "dashboard", "--storage", url, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode != 0, out.stderr
    assert "optuna-dashboard on" not in out.stdout
    assert out.stderr.strip().splitlines() == [
        f"autofhe: error: cannot listen on 127.0.0.1:{port} (Address already in use); port "
        f"{port} is in use: pick another --port (0: any free port)."
    ]


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
