"""Workers of one machine pause at their checkpoints while one of them measures latency."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from autofhe.search.trial import quiet

# A worker: marks each unit of work (0.1 s) with its start and end times, checkpoint between.
WORKER = """
import sys, time
from autofhe.search.trial import quiet
end = time.monotonic() + float(sys.argv[2])
with quiet.working(), open(sys.argv[1], "a") as out:
    print("ready", flush=True)
    while time.monotonic() < end:
        quiet.checkpoint() if sys.argv[3] == "yes" else None
        t0 = time.time()
        time.sleep(0.1)
        out.write(f"{t0} {time.time()}\\n")
        out.flush()
"""


@pytest.fixture()
def lock(tmp_path, monkeypatch):
    path = tmp_path / "measure.lock"
    monkeypatch.setenv("AUTOFHE_MEASURE_LOCK", str(path))
    monkeypatch.setattr(quiet, "LOCK_PATH", path)
    monkeypatch.setattr(quiet, "_fds", {})
    monkeypatch.setattr(quiet, "_holding", False)
    return path


def _worker(tmp_path, seconds: float, checkpoints: bool = True) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            str(tmp_path / "units.txt"),
            str(seconds),
            "yes" if checkpoints else "no",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _units(tmp_path) -> list[tuple[float, float]]:
    text = (tmp_path / "units.txt").read_text()
    return [tuple(map(float, line.split())) for line in text.splitlines()]


@pytest.mark.skipif(quiet.fcntl is None, reason="flock is POSIX")
def test_no_other_work_runs_while_a_worker_measures(lock, tmp_path):
    workers = [_worker(tmp_path, 4.0) for _ in range(2)]
    time.sleep(0.5)
    with quiet.working(), quiet.measuring(wait_s=5) as calm:  # a worker measuring
        start = time.time()
        time.sleep(1.0)
        end = time.time()
    for proc in workers:
        proc.wait(timeout=30)
    units = _units(tmp_path)
    assert calm
    assert not [u for u in units if u[0] < end and u[1] > start]  # nothing overlapped
    assert any(u[0] >= end for u in units)  # and the workers went on afterwards
    assert any(u[1] <= start for u in units)


@pytest.mark.skipif(quiet.fcntl is None, reason="flock is POSIX")
def test_a_worker_without_checkpoints_makes_the_measurement_not_quiet(lock, tmp_path):
    busy = _worker(tmp_path, 3.0, checkpoints=False)
    t0 = time.monotonic()
    with quiet.measuring(wait_s=0.5) as calm:
        waited = time.monotonic() - t0
    busy.wait(timeout=30)
    assert calm is False and 0.4 < waited < 2.0


@pytest.mark.skipif(quiet.fcntl is None, reason="flock is POSIX")
def test_a_killed_worker_blocks_nobody(lock, tmp_path):
    dead = _worker(tmp_path, 30.0, checkpoints=False)
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait(timeout=10)
    t0 = time.monotonic()
    with quiet.measuring(wait_s=5) as calm:
        pass
    assert calm and time.monotonic() - t0 < 1.0


@pytest.mark.skipif(quiet.fcntl is None, reason="flock is POSIX")
def test_a_process_that_stopped_working_delays_nobody(lock, tmp_path):
    """Was: a process that had run a search (a test suite) held the lock for ever, and every
    measurement on the machine waited its full minute."""
    with quiet.working():
        pass
    code = (
        "import time; from autofhe.search.trial import quiet; t0 = time.monotonic()\n"
        "with quiet.measuring(wait_s=5) as calm: pass\n"
        "print(calm, time.monotonic() - t0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    calm, waited = out.stdout.split()
    assert calm == "True" and float(waited) < 1.0


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux reports CPU time only")
def test_other_processes_busy_during_a_measurement_are_seen():
    """Before: only autofhe's own workers counted, so a measurement beside any other busy
    process was stored as quiet. One process spinning per core keeps the machine busy."""
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        time.sleep(0.5)  # the interpreters started and spin
        with quiet.watching() as seen:
            time.sleep(1.0)  # this process is idle: everything seen is the others'
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert seen["others_busy"] >= 0.8
    assert seen["others_busy"] > quiet.QUIET_BUSY  # a measurement meanwhile is not quiet
