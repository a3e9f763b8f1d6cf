"""Quiet latency measurements: the workers of one machine pause while one of them measures.

A front model's latency is measured under real encryption while the search runs. With a
second worker training beside it, a 2-core machine measured 1.4-2.2x the quiet figure (and
up to 30x with more load), so the stored latency said more about the neighbours than about
the model. Workers on one machine therefore share two file locks (``flock``; processes on
other machines use other CPUs and are not concerned):

- *work*: every worker holds it shared while it trains, compiles or simulates, and lets go
  of it at each checkpoint (the end of an epoch, before compiling, before simulating);
- *gate*: a measuring worker takes it exclusively, so that no worker starts new work, then
  takes *work* exclusively, which it gets once every other worker has reached a checkpoint.

A worker at a checkpoint waits on *gate* while someone measures. The measuring worker waits
at most ``WAIT_S`` for the others; past it, it measures anyway and the measurement is
recorded as taken under load. Locks die with their process: a killed worker blocks nobody.

Paused workers are not the only neighbours: any process of the machine (another user's job, a
test suite) takes cores from the encrypted run. :func:`watching` measures the share of the
machine's CPU time that other processes used during the measurement (``/proc/stat`` less
this process's own time); over ``QUIET_BUSY`` the measurement is not quiet either.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no pausing, every measurement is recorded as not quiet
    fcntl = None

__all__ = [
    "LOCK_PATH",
    "QUIET_BUSY",
    "WAIT_S",
    "checkpoint",
    "measuring",
    "others_busy_now",
    "watching",
    "working",
]

#: Shared by every user's workers on this machine; override with $AUTOFHE_MEASURE_LOCK.
LOCK_PATH = Path(
    os.environ.get("AUTOFHE_MEASURE_LOCK", Path(tempfile.gettempdir()) / "autofhe-measure.lock")
)
#: How long a measuring worker waits for the others to pause (seconds).
WAIT_S = float(os.environ.get("AUTOFHE_QUIET_WAIT_S", "60"))

#: The share of the machine's CPU time other processes may use during a quiet measurement
#: (0.2: 40% of one core on 2 cores). Measured: a CPU burner on one of 2 cores made encrypted
#: runs 1.3-2x slower; background daemons and the heartbeat helpers stay under 0.05.
QUIET_BUSY = float(os.environ.get("AUTOFHE_QUIET_BUSY", "0.2"))

_fds: dict[str, int] = {}
_holding = False  # this process holds *work* shared


def _fd(kind: str) -> int | None:
    if fcntl is None:
        return None
    if kind not in _fds:
        path = f"{LOCK_PATH}.{kind}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return None  # an unwritable temp folder: measure without pausing anyone
        _fds[kind] = fd
    return _fds[kind]


def _try(fd: int, mode: int, deadline: float) -> bool:
    """Take ``fd``'s lock in ``mode``, polling until ``deadline`` (monotonic seconds)."""
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


@contextmanager
def working() -> Iterator[None]:
    """This process works (holds *work* shared) for the duration of the block.

    Only while working: a process that ran a search and went on to something else (a test
    suite, a notebook) would otherwise make every measurement on the machine wait in vain.
    """
    global _holding
    fd = _fd("work")
    if fd is None or _holding:  # no locks here, or an outer block already holds it
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_SH)
    _holding = True
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        _holding = False


def checkpoint() -> None:
    """Let a measuring worker in: release *work*, wait while *gate* is taken, retake *work*."""
    work, gate = _fd("work"), _fd("gate")
    if not _holding or work is None or gate is None:
        return
    fcntl.flock(work, fcntl.LOCK_UN)
    fcntl.flock(gate, fcntl.LOCK_SH)  # blocks while another worker measures
    fcntl.flock(gate, fcntl.LOCK_UN)
    fcntl.flock(work, fcntl.LOCK_SH)


@contextmanager
def measuring(wait_s: float | None = None) -> Iterator[bool]:
    """Hold the machine's other workers at their checkpoints while the block runs.

    Yields whether they all paused within ``wait_s`` (default ``WAIT_S``): False means the
    measurement is taken beside other work and must be recorded as such.
    """
    global _holding
    work, gate = _fd("work"), _fd("gate")
    if work is None or gate is None:
        yield False
        return
    was_holding = _holding
    if _holding:
        fcntl.flock(work, fcntl.LOCK_UN)
        _holding = False
    deadline = time.monotonic() + (WAIT_S if wait_s is None else wait_s)
    # the gate first (no new work starts), waiting out another worker's measurement
    gated = _try(gate, fcntl.LOCK_EX, deadline + 120)
    quiet = gated and _try(work, fcntl.LOCK_EX, deadline)
    try:
        yield quiet
    finally:
        if quiet:
            fcntl.flock(work, fcntl.LOCK_UN)
        if gated:
            fcntl.flock(gate, fcntl.LOCK_UN)
        if was_holding:
            fcntl.flock(work, fcntl.LOCK_SH)
            _holding = True


def _cpu_ticks() -> tuple[int, int] | None:
    """The machine's ``(busy, total)`` CPU ticks since boot, all cores (None: no /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks) - idle, sum(ticks)


@contextmanager
def watching() -> Iterator[dict]:
    """Measure what other processes take from the machine while the block runs.

    Yields a dict that holds, after the block, ``others_busy``: the share of every core's
    time that processes other than this one kept busy (0: idle neighbours; 1: all cores);
    absent where the machine does not say (no ``/proc/stat``).
    """
    out: dict = {}
    start, own = _cpu_ticks(), time.process_time()
    try:
        yield out
    finally:
        end, own_s = _cpu_ticks(), time.process_time() - own
        if start is not None and end is not None and end[1] > start[1]:
            tick_s = 1 / os.sysconf("SC_CLK_TCK")
            busy_s, total_s = (end[0] - start[0]) * tick_s, (end[1] - start[1]) * tick_s
            out["others_busy"] = round(min(1.0, max(0.0, busy_s - own_s) / total_s), 3)


def others_busy_now(seconds: float = 1.0) -> float | None:
    """The share of the machine's CPU time other processes use over the next ``seconds``."""
    with watching() as seen:
        time.sleep(seconds)
    return seen.get("others_busy")
