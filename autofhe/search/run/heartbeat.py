"""Many workers on one study: heartbeats from a helper process, dead workers' trials ended
with a reason and queued again.

A trial's heartbeat cannot come from a thread of the worker: concrete holds the GIL for longer
than any sensible grace period (key generation, encrypted runs), the thread starves, another
worker fails the live trial and the original then reports into a finished trial. So every
worker starts one small helper *process* (``python -m autofhe.search.run.heartbeat``) that

- records the heartbeat of the worker's current trial every ``interval`` seconds, whatever the
  worker is doing; when the worker dies (its stdin reaches end of file) in the middle of a
  trial, ends that trial at once, with the reason, and queues it again;
- reaps: every ``interval`` seconds, fails the study's trials whose worker stopped beating
  ``grace`` seconds ago (killed with its helper, another machine cut off) with the reason
  (which worker, silent for how long) and queues them again.

This module imports only autofhe's storage layer and trial record (Optuna and SQLAlchemy, no
torch), so the helper starts in about a second and holds little memory. Database errors never
end the helper; a storage call of a worker that lost its connection (a database restart) is
retried for ``store.engine.RECONNECT_S``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import optuna

from autofhe.fhe.runtime import shielded
from autofhe.search import record
from autofhe.search.store.engine import make_storage, retry, running_trials

__all__ = [
    "GRACE_S",
    "HEARTBEAT_S",
    "Heartbeat",
    "end_trial",
    "reap",
    "requeue",
    "worker_id",
]

#: A worker's helper beats every HEARTBEAT_S seconds; a trial silent for GRACE_S is failed and
#: re-queued by any worker's helper (the reaper). Both integers (Optuna's storage wants them).
HEARTBEAT_S = int(os.environ.get("AUTOFHE_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("AUTOFHE_GRACE_S", str(3 * HEARTBEAT_S)))


def worker_id() -> str:
    """``host:pid`` of this process: who ran a trial (its system attribute ``autofhe_worker``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


#: A trial is queued again at most this many times (a configuration that kills its worker,
#: say by running out of memory, would otherwise be retried for ever).
MAX_RETRIES = 2


def requeue(study: optuna.Study, failed: optuna.trial.FrozenTrial, limit: int | None = MAX_RETRIES):
    """Queue ``failed``'s configuration again, as Optuna's RetryFailedTrialCallback does (system
    attributes ``failed_trial`` and ``retry_history``), unless its retry waits already; False
    when it was retried ``limit`` times already."""
    history = [*failed.system_attrs.get("retry_history", []), failed.number]
    if limit is not None and len(history) > limit:
        return False
    waiting = optuna.trial.TrialState.WAITING
    if any(
        t.system_attrs.get("failed_trial") == failed.number
        for t in study.get_trials(deepcopy=False, states=(waiting,))
    ):
        return True  # queued already, by a process killed before it could end the trial
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=failed.params,
            distributions=failed.distributions,
            system_attrs={"failed_trial": failed.number, "retry_history": history},
        )
    )
    return True


def end_trial(
    storage: optuna.storages.RDBStorage,
    study: optuna.Study,
    trial_id: int,
    reason: str,
    limit: int | None = MAX_RETRIES,
) -> bool:
    """Fail the RUNNING trial ``trial_id`` with ``reason`` (user attribute ``reason``) and queue
    its configuration again; False when another process ended it first."""
    # A second stop signal (a supervisor dying while it relays the first) waits until the
    # trial is queued again and ended. SIGKILL cannot wait: so the retry is queued *first*. A
    # process killed between the writes leaves the trial RUNNING with its retry queued, and
    # whoever ends it later (its helper, a reaper) finds the retry there. Queued last, the
    # retry was lost (the kill -9 test, 1 full suite in 3).
    with shielded():
        try:
            frozen = storage.get_trial(trial_id)
            if frozen.state != optuna.trial.TrialState.RUNNING:
                return False
            queued = limit is None or len(frozen.system_attrs.get("retry_history", [])) < limit
            if queued:
                requeue(study, frozen, limit)
            tail = "; queued again" if queued else f"; not queued again (failed {limit + 1} times)"
            record.write_stored(storage, trial_id, reason=reason + tail)
            if not storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL):
                return False
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            return False  # its worker (or another reaper) ended it meanwhile
    return True


def reap(storage: optuna.storages.RDBStorage, study: optuna.Study, grace: float) -> list[int]:
    """Fail (with a reason) and queue again the study's RUNNING trials whose worker stopped
    beating more than ``grace`` seconds ago, or never beat and started that long ago (a
    worker killed between asking for a trial and its first beat); their numbers.

    Heartbeats are compared with the database's clock, as Optuna records them; start times
    are the workers' local time, as Optuna records those.
    """
    from datetime import datetime

    now, rows = running_trials(storage, storage.get_study_id_from_name(study.study_name))
    now = now.replace(tzinfo=None)
    ended = []
    for trial_id, started, beat, worker in rows:
        if beat is not None:
            silent = (now - beat.replace(tzinfo=None)).total_seconds()
        else:
            silent = (datetime.now() - started.replace(tzinfo=None)).total_seconds()
        if silent <= grace:
            continue
        who = json.loads(worker) if worker else "an unknown worker"
        reason = (
            f"interrupted: its worker {who} sent no heartbeat for {silent:.0f} s (killed, or cut "
            "off from the database)"
        )
        if end_trial(storage, study, trial_id, reason):
            ended.append(storage.get_trial(trial_id).number)
    return ended


class Heartbeat:
    """The helper process of one worker: beats for the current trial, reaps stale ones, and
    when the worker dies in the middle of a trial, ends that trial with a reason at once.

    Use :meth:`start` right after a trial is asked for and :meth:`stop` before it is told.
    """

    def __init__(
        self,
        url: str,
        study_name: str,
        storage: optuna.storages.RDBStorage,
        interval: int = HEARTBEAT_S,
        grace: int = GRACE_S,
    ):
        self.storage = storage
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",  # not by path: its folder would shadow the standard library (select)
                "autofhe.search.run.heartbeat",
                url,
                study_name,
                str(interval),
                str(grace),
                worker_id(),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        # Wait until it beats: a trial asked for before would go stale while it starts.
        ready = self.proc.stdout.readline()
        if ready.strip() != b"ready":
            self.proc.wait()
            raise RuntimeError(
                f"the heartbeat helper did not start (exit code {self.proc.returncode}); "
                "its error is above."
            )

    def _send(self, line: str) -> None:
        try:
            self.proc.stdin.write(f"{line}\n".encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the helper died: the reaper of another worker still recovers this trial

    def start(self, trial_id: int) -> None:
        # the first beat from here: a trial with no heartbeat row is reaped only after grace
        self.storage.record_heartbeat(trial_id)
        self._send(str(trial_id))

    def stop(self) -> None:
        self._send("-")

    def close(self) -> None:
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _any(_exc: BaseException) -> bool:
    return True


def _serve(url: str, study_name: str, interval: int, grace: int, worker: str) -> None:
    """The helper's loop; ends when the worker closes stdin or dies. Its worker's Ctrl-C is
    not its own: it goes on until the worker has ended its trial and closed the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = make_storage(url, role="heartbeat")
    study = optuna.load_study(study_name=study_name, storage=storage)
    try:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the worker stopped while this helper started: nothing to do
        return
    current: int | None = None
    buffer = b""
    next_beat = next_reap = 0.0
    failing = False
    while True:
        due = min(next_beat, next_reap) if current is not None else next_reap
        ready, _, _ = select.select([0], [], [], max(0.0, due - time.monotonic()))
        if ready:
            chunk = os.read(0, 4096)
            if not chunk:  # the worker is gone; in the middle of a trial, it died there
                if current is not None:
                    reason = f"interrupted: its worker {worker} ended in the middle of it (killed?)"

                    def end(trial_id=current, why=reason) -> bool:
                        return end_trial(storage, study, trial_id, why)

                    try:  # the worker is gone: whatever stops the database, try for a while
                        retry(end, _any, 30.0)
                    except Exception:
                        pass  # the reaper of another worker ends it after the grace period
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                current = None if line.strip() in (b"-", b"") else int(line)
            next_beat = time.monotonic() + interval  # the worker just beat
            continue
        now = time.monotonic()
        try:
            if current is not None and now >= next_beat:
                storage.record_heartbeat(current)
                next_beat = now + interval
            if now >= next_reap:
                next_reap = now + interval
                reap(storage, study, grace)
            failing = False
        except Exception as exc:  # never die of a database error: retry on the next tick
            next_beat, next_reap = now + 1.0, now + 1.0
            if not failing:
                print(f"autofhe heartbeat: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
            failing = True


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
