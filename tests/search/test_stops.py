"""How a search stops: Ctrl-C (to the whole process group, as a terminal sends it) and SIGTERM
in the middle of training, compilation and the latency measurement; a second Ctrl-C; and the
progress lines while it runs.

Before: Ctrl-C during `search` printed concrete's native stack dump and ``Segmentation
fault`` (exit 139), the heartbeat helper a KeyboardInterrupt traceback, and the trial stayed
RUNNING with no reason; during training skorch swallowed it and the search went on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autofhe.search.report import RUNNING_REPORT_S, ProgressReport

AUTOFHE = str(Path(sys.executable).with_name("autofhe"))
State = optuna.trial.TrialState
SEARCH = [AUTOFHE, "search", "--data", "sklearn:wine", "--spec", "spec.toml"]
#: hidden-layer networks (4 neurons): a second of training, a compilation and a latency
#: measurement to hit
SPEC = """
[study]
folds = 1

[space]
n_w_bits = [3]
n_a_bits = [3]
module__n_hidden_neurons_multiplier = [0.3]

[fixed]
module__n_layers = 2
module__lookup_bits = 5
max_epochs = 30
"""


ONE = ("--workers", "1")


def _search(tmp_path: Path, trials: int) -> subprocess.Popen:
    (tmp_path / "spec.toml").write_text(SPEC)
    return subprocess.Popen(
        # one worker: each stop interrupts the one trial the test follows
        [*SEARCH, "--trials", str(trials), "--storage", "sqlite:///s.db", "--study", "s", *ONE],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: killpg is a terminal's Ctrl-C
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def _wait_for_phase(tmp_path: Path, phase: str, timeout: float = 240) -> int:
    """The number of the first trial seen running ``phase``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (tmp_path / "s.db").exists():
            try:  # never create a table: the search is making them
                storage = optuna.storages.RDBStorage(
                    f"sqlite:///{tmp_path}/s.db", skip_table_creation=True
                )
                study = optuna.load_study(study_name="s", storage=storage)
                for t in study.get_trials(deepcopy=False, states=(State.RUNNING,)):
                    if t.system_attrs.get("autofhe_phase", "").startswith(phase):
                        return t.number
            except Exception:  # not made yet
                pass
        time.sleep(0.05)
    raise AssertionError(f"no trial reached {phase!r}")


def _clean_stderr(err: str) -> None:
    for bad in ("Segmentation fault", "Traceback", "{what}", "KeyboardInterrupt"):
        assert bad not in err, err


def _stop(tmp_path: Path, phase: str, sig: int, twice: bool = False) -> tuple[int, str]:
    """Run the search, send ``sig`` to its process group when a trial is ``phase`` (twice:
    a second Ctrl-C 0.2 s later); the number of the trial the stop ended and the search's
    stderr."""
    before = _interrupted(_trials(tmp_path)) if (tmp_path / "s.db").exists() else set()
    proc = _search(tmp_path, trials=2)
    _wait_for_phase(tmp_path, phase)
    os.killpg(proc.pid, sig)
    if twice:
        time.sleep(0.2)
        os.killpg(proc.pid, sig)
    start = time.monotonic()
    out, err = proc.communicate(timeout=120)
    code = 128 + int(sig)
    assert proc.returncode == code, (phase, out[-2000:], err)
    if twice:  # at once, not after the trial ended
        assert time.monotonic() - start < 5
    _clean_stderr(err)
    # The trial seen in ``phase`` may end before the signal lands (a 4-neuron network trains
    # in a fraction of a second, and can be pruned at a rung): the one the stop ended is the
    # trial that failed "interrupted" in this run (killed workers: ended by their helpers).
    deadline = time.time() + 30
    while not (new := _interrupted(_trials(tmp_path)) - before) and time.time() < deadline:
        time.sleep(0.5)
    (number,) = new
    landed = _trials(tmp_path)[number].system_attrs.get("autofhe_phase", "")
    assert landed.startswith(LANDS_IN[phase]), (phase, landed)
    return number, err


#: Where a stop aimed at a phase may land: the supervisor passes a Ctrl-C on within 0.2 s,
#: and a 4-neuron circuit compiles in about that, then simulates (concrete's native code too,
#: under the same handler).
LANDS_IN = {
    "training": ("training",),
    "compiling": ("compiling", "simulating"),
    "measuring": ("measuring",),
}


def _interrupted(trials) -> set[int]:
    return {
        t.number
        for t in trials
        if t.state == State.FAIL and t.user_attrs.get("reason", "").startswith("interrupted")
    }


def _trials(tmp_path: Path) -> list:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db").get_trials()


def _check_requeued(tmp_path: Path, number: int, reason: str) -> None:
    """Trial ``number`` ended FAIL with ``reason``; its configuration waits to run again."""
    deadline = time.time() + 30  # a killed worker's trial is ended (then queued) by its helper

    def requeued(trials) -> bool:
        return any(t.system_attrs.get("failed_trial") == number for t in trials)

    trials = _trials(tmp_path)
    while not requeued(trials) and time.time() < deadline:
        time.sleep(0.5)
        trials = _trials(tmp_path)
    stopped = trials[number]
    assert stopped.state == State.FAIL
    assert stopped.user_attrs["reason"].startswith(reason), stopped.user_attrs["reason"]
    assert not [t for t in trials if t.state == State.RUNNING]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    assert len(retry) == 1 and retry[0].state == State.WAITING
    assert retry[0].params == stopped.params


STOPPED = (
    "autofhe: stopped: the running trials ended as interrupted and were queued again; "
    "resume with the same command."
)


@pytest.mark.slow
def test_every_stop_ends_its_trial_interrupted_and_a_rerun_completes_the_study(tmp_path):
    """One study stopped four times, each run resuming the last: Ctrl-C in the latency
    measurement, in training and in compilation, then a double Ctrl-C; a last run completes
    it with nothing lost.

    The measurement comes first: only a trial entering the front is measured, and the first
    trial to complete in an empty study always enters it. Later, a trial the earlier stops
    let complete may dominate the next two, and no trial would reach 'measuring' (CI, stop
    38: the third run's two trials stayed off the front)."""
    stops = []
    for phase, twice in (
        ("measuring", False),
        ("training", False),
        ("compiling", False),
        ("training", True),
    ):
        number, err = _stop(tmp_path, phase, signal.SIGINT, twice)
        if twice:  # the workers were killed: their helpers end the trials
            _check_requeued(tmp_path, number, "interrupted")
        else:
            assert err.strip().splitlines() == [STOPPED]
            _check_requeued(tmp_path, number, "interrupted (SIGINT) in worker ")
        stops.append(number)
    # the search goes on where it stopped: the configurations queued before the stops (the
    # plan's first trials), then the interrupted ones
    waiting = sum(t.state == State.WAITING for t in _trials(tmp_path))
    again = _search(tmp_path, trials=waiting)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    trials = _trials(tmp_path)
    assert all(t.state.is_finished() for t in trials)
    assert sorted(t.number for t in trials if t.state == State.FAIL) == sorted(stops)
    # each stopped trial was run again once: to the end, or until a later stop (whose own
    # retry is checked the same way)
    for number in stops:
        (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == number]
        assert retry.state in (State.COMPLETE, State.PRUNED) or retry.number in stops
        assert retry.params == trials[number].params


@pytest.mark.slow
def test_sigterm_mid_training_exits_143_and_queues_the_trial_again(tmp_path):
    number, err = _stop(tmp_path, "training", signal.SIGTERM)
    assert err.strip().splitlines() == [STOPPED]
    _check_requeued(tmp_path, number, "interrupted (SIGTERM) in worker ")


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_says_when_trials_start_run_and_end(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("autofhe.search.report.time.monotonic", clock)
    study = optuna.create_study(directions=["maximize", "minimize"])
    done = study.ask()
    study.tell(done, [0.5, 0.1])  # before this run: not counted in it
    lines: list[str] = []
    report = ProgressReport(study, total=2, out=lambda line, flush: lines.append(line))
    running = study.ask({"module__n_layers": optuna.distributions.IntDistribution(1, 3)})
    study._storage.set_trial_system_attr(running._trial_id, "autofhe_phase", "compiling")
    report(study)
    assert lines[-1].endswith(
        f"trial {running.number} started: {running.params['module__n_layers']} layer"
        + ("s" if running.params["module__n_layers"] != 1 else "")
        + ", ?/? bits"
    )
    clock.now += RUNNING_REPORT_S - 1
    report(study)
    assert len(lines) == 1  # nothing new, and not yet half a minute
    clock.now += 2
    report(study)
    assert lines[-1].split("] ", 1)[1].startswith(f"trial {running.number}: compiling (")
    study.tell(running, [0.9, 0.2])
    report(study)
    assert lines[-1].split("] ", 1)[1] == (
        f"trial {running.number}: 0.9000, 0.2 s | this run 1/2 | study: 2 finished, "
        "2 feasible, front 2"
    )
    pruned = study.ask()
    pruned.set_user_attr("reason", "latency: priced 6 s > max 5 s")
    study.tell(pruned, state=State.PRUNED)
    report(study)
    assert (
        f"trial {pruned.number}: pruned (latency: priced 6 s > max 5 s) | this run 2/2"
        in (lines[-1])
    )
