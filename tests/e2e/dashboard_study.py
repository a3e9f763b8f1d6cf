"""A small study as the search leaves it (feasible and infeasible trials, the front's note
and plot), built in a second without training, and a running ``autofhe dashboard`` on it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import optuna

from autofhe.search import record
from autofhe.search.front.notes import measurement_conditions, publish_front, publish_trial
from autofhe.search.front.pareto import pareto_front
from autofhe.search.price.feasibility import CONSTRAINTS, record_constraints
from autofhe.search.report import no_front_advice

AUTOFHE = str(Path(sys.executable).with_name("autofhe"))
MAX_LATENCY = 1.0
#: number -> (accuracy, predicted latency s, violated constraints, measured latency s)
TRIALS = {
    0: (0.95, 0.80, {}, 0.91),
    1: (0.99, 0.50, {"key_size": 2.5}, None),  # would dominate 0 if it were feasible
    2: (0.90, 0.30, {}, 0.34),
    3: (0.85, 0.12, {}, 0.15),
    4: (0.96, 1.60, {"latency": 0.6}, None),
    5: (0.70, 0.05, {"compile": 1.0}, None),  # would be the fastest point
}
FEASIBLE_FRONT = {0, 2, 3}
#: a study whose every trial broke the latency limit, and one with a single front model
NO_FRONT = {0: (0.93, 0.004, {"latency": 0.003}, None), 1: (0.95, 0.02, {"latency": 0.019}, None)}
ONE_POINT = {0: (0.9, 0.05, {}, 0.06)}
#: study name -> its trials (the dashboard serves all three)
STUDIES = {"demo-accuracy": TRIALS, "none-accuracy": NO_FRONT, "one-accuracy": ONE_POINT}


def build_study(url: str, name: str = "demo-accuracy", trials: dict = TRIALS) -> optuna.Study:
    """Trials written through the same calls as the objective (constraints, user attrs)."""
    study = optuna.create_study(study_name=name, storage=url, directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "fhe_latency_s"])
    for number, (acc, latency, violated, measured) in trials.items():
        trial = study.ask()
        assert trial.number == number
        trial.suggest_int("n_w_bits", 2, 8)
        trial.suggest_int("module__n_layers", 1, 3)
        record_constraints(trial, {k: violated.get(k, 0.0) for k in CONSTRAINTS})
        reason = ", ".join(f"{k} violated" for k in violated)
        if "latency" in violated:  # as the objective words it (the advice counts it)
            reason = f"latency: predicted {latency} s > max {latency - violated['latency']:g} s"
        record.write(trial, feasible=not violated, reason=reason, predicted_latency_s=latency)
        if measured is not None:
            record.write(trial, measured_latency_s=measured, **measurement_conditions())
        study.tell(trial, [acc, latency])
    done = study.get_trials(deepcopy=False)
    front = pareto_front(done)
    for trial in done:
        publish_trial(study, trial, front)
    empty = ""
    if not front:  # what the search writes: why, and the limit to relax
        sentence, option, value = no_front_advice(done, 0.001, 4e9)
        empty = f"{sentence} Relax it: resume the search with {option} {value}."
    publish_front(study, front, empty_text=empty)
    return study


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@contextmanager
def running_dashboard(tmp: Path):
    """``(base_url, study_name)`` of ``autofhe dashboard`` serving :func:`build_study`."""
    url = f"sqlite:///{tmp}/autofhe.db"
    for name, trials in STUDIES.items():
        build_study(url, name, trials)
    port = free_port()
    log = tmp / "dashboard.log"  # a pipe nobody reads would fill up with request lines
    proc = subprocess.Popen(
        [AUTOFHE, "dashboard", "--storage", url, "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                get_json(f"{base}/api/studies")
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(
                        f"autofhe dashboard did not start: {log.read_text()}"
                    ) from None
                time.sleep(0.3)
        yield base, "demo-accuracy"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
