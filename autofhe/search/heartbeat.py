"""Storage for many workers: pooled engines, reconnection, heartbeats from a helper process.

A trial's heartbeat cannot come from a thread of the worker: concrete holds the GIL for longer
than any sensible grace period (key generation, encrypted runs), the thread starves, another
worker fails the live trial and the original then reports into a finished trial. So every
worker starts one small helper *process* (``python -m autofhe.search.heartbeat``) that

- records the heartbeat of the worker's current trial every ``interval`` seconds, whatever the
  worker is doing; when the worker dies (its stdin reaches end of file) in the middle of a
  trial, ends that trial at once, with the reason, and queues it again;
- reaps: every ``interval`` seconds, fails the study's trials whose worker stopped beating
  ``grace`` seconds ago (killed with its helper, another machine cut off) with the reason
  (which worker, silent for how long) and queues them again.

This module imports nothing from autofhe (whose package imports are lazy: no torch), so the
helper starts in about a second and holds little memory. Database errors never end the
helper; a storage call of a worker that lost its connection (a database restart) is retried
for ``RECONNECT_S``.
"""

from __future__ import annotations

import functools
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

__all__ = [
    "GRACE_S",
    "HEARTBEAT_S",
    "Heartbeat",
    "end_trial",
    "engine_kwargs",
    "make_storage",
    "reap",
    "requeue",
    "serialize_sqlite",
    "worker_id",
]

#: A worker's helper beats every HEARTBEAT_S seconds; a trial silent for GRACE_S is failed and
#: re-queued by any worker's helper (the reaper). Both integers (Optuna's storage wants them).
HEARTBEAT_S = int(os.environ.get("AUTOFHE_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("AUTOFHE_GRACE_S", str(3 * HEARTBEAT_S)))
#: How long a storage call waits for a lost database to come back before it gives up.
RECONNECT_S = float(os.environ.get("AUTOFHE_RECONNECT_S", "120"))
#: Seconds an SQLite writer waits for another worker's transaction before giving up.
SQLITE_LOCK_TIMEOUT_S = 60
#: Connections per engine: a worker uses one at a time; two engines (Optuna's and autofhe's)
#: and the helper's make at most 3 * (POOL_SIZE + POOL_OVERFLOW) per worker.
POOL_SIZE, POOL_OVERFLOW = 2, 2


def engine_kwargs(url: str, role: str = "autofhe") -> dict[str, Any]:
    """SQLAlchemy engine options: a small pool checked before use (survives a restart)."""
    if url.startswith("sqlite"):
        return {}
    kwargs: dict[str, Any] = {
        "pool_size": POOL_SIZE,
        "max_overflow": POOL_OVERFLOW,
        "pool_pre_ping": True,
        "pool_recycle": 3600,
    }
    if url.startswith("postgresql"):
        # names each process's connections in pg_stat_activity (who holds how many)
        kwargs["connect_args"] = {"application_name": f"{role}-{os.getpid()}"}
    return kwargs


def serialize_sqlite(engine: sa.Engine) -> sa.Engine:
    """Make every transaction on an SQLite ``engine`` take the write lock when it begins.

    SQLite ignores ``SELECT ... FOR UPDATE``, so two workers can both read a WAITING trial
    (the enqueued seed, a retried one) and both start it. ``BEGIN IMMEDIATE`` serializes such
    read-then-write sequences, which is what PostgreSQL's row locks give Optuna. Other engines
    are returned unchanged.
    """
    if engine.dialect.name != "sqlite":
        return engine

    @sa.event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # the driver's own BEGIN would be DEFERRED
        dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_LOCK_TIMEOUT_S * 1000}")

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed are dropped
    return engine


def _lost_connection(exc: BaseException) -> bool:
    """A database that went away (restart, network), as opposed to a bad statement."""
    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    if isinstance(cause, sa.exc.PendingRollbackError):  # a session left on a dead connection
        return True
    if not isinstance(cause, DBAPIError):
        return False
    if cause.connection_invalidated:
        return True
    text = str(cause.orig).lower()
    if not isinstance(cause, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return False
    # SQLite: only a busy lock is worth waiting for (not a read-only file, a missing table)
    return any(w in text for w in ("locked", "connection", "server", "terminat", "starting up"))


def _reconnecting(method: Callable) -> Callable:
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        deadline = time.monotonic() + RECONNECT_S
        while True:
            try:
                return method(self, *args, **kwargs)
            except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as exc:
                if not _lost_connection(exc) or time.monotonic() > deadline:
                    raise
                self.scoped_session.remove()  # drop the session bound to the dead connection
                time.sleep(0.5 + random.random())

    return call


class _ReconnectingStorage(optuna.storages.RDBStorage):
    """RDBStorage whose calls wait out a database restart instead of failing the trial."""


_NOT_DATABASE_CALLS = {
    "check_trial_is_updatable",
    "get_all_versions",
    "get_current_version",
    "get_failed_trial_callback",
    "get_head_version",
    "get_heartbeat_interval",
    "get_heartbeat_stale_trial_callback",
    "remove_session",
    "upgrade",
}
for _name, _method in vars(optuna.storages.RDBStorage).items():
    if callable(_method) and not _name.startswith("_") and _name not in _NOT_DATABASE_CALLS:
        setattr(_ReconnectingStorage, _name, _reconnecting(_method))
for _name in ("_get_stale_trial_ids", "_get_trials"):
    setattr(_ReconnectingStorage, _name, _reconnecting(getattr(optuna.storages.RDBStorage, _name)))

_STORAGES: dict[tuple, optuna.storages.RDBStorage] = {}


def make_storage(url: str, role: str = "worker", create: bool = True) -> optuna.storages.RDBStorage:
    """This process's Optuna storage for ``url`` (one pooled engine per process and URL).

    ``create``: make Optuna's tables when they are missing (only a search does). Creating
    them races when several processes open a new database at once (UNIQUE or "already
    exists" errors, alembic's version row): the loser retries and finds them made.
    Heartbeats are recorded through it; stale trials are reaped by :func:`reap` (with a reason,
    which Optuna's own stale-trial check cannot write), not by Optuna.
    """
    key = (url, os.getpid(), create)
    if key in _STORAGES:
        return _STORAGES[key]
    for attempt in range(8):
        try:
            storage = _ReconnectingStorage(
                url, engine_kwargs=engine_kwargs(url, role), skip_table_creation=not create
            )
            break
        except ImportError:
            raise
        except Exception:
            if attempt == 7:
                raise
            time.sleep(0.2 + random.random())
    serialize_sqlite(storage.engine)  # workers must not both pop the same waiting trial
    _STORAGES[key] = storage
    return storage


def worker_id() -> str:
    """``host:pid`` of this process: who ran a trial (its system attribute ``autofhe_worker``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


#: A trial is queued again at most this many times (a configuration that kills its worker,
#: say by running out of memory, would otherwise be retried for ever).
MAX_RETRIES = 2


def requeue(study: optuna.Study, failed: optuna.trial.FrozenTrial, limit: int | None = MAX_RETRIES):
    """Queue ``failed``'s configuration again, as Optuna's RetryFailedTrialCallback does (system
    attributes ``failed_trial`` and ``retry_history``); False when it was retried ``limit``
    times already."""
    history = [*failed.system_attrs.get("retry_history", []), failed.number]
    if limit is not None and len(history) > limit:
        return False
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
    try:
        frozen = storage.get_trial(trial_id)
        if frozen.state != optuna.trial.TrialState.RUNNING:
            return False
        queued = limit is None or len(frozen.system_attrs.get("retry_history", [])) < limit
        tail = "; queued again" if queued else f"; not queued again (failed {limit + 1} times)"
        storage.set_trial_user_attr(trial_id, "reason", reason + tail)
        if not storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL):
            return False
    except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
        return False  # its worker (or another reaper) ended it meanwhile
    requeue(study, storage.get_trial(trial_id), limit)
    return True


_RUNNING = sa.text(
    "SELECT t.trial_id, t.datetime_start, h.heartbeat, w.value_json FROM trials t "
    "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
    "LEFT JOIN trial_system_attributes w ON w.trial_id = t.trial_id AND w.key = 'autofhe_worker' "
    "WHERE t.study_id = :study_id AND t.state = 'RUNNING'"
).columns(
    sa.column("trial_id", sa.Integer),
    sa.column("datetime_start", sa.DateTime),
    sa.column("heartbeat", sa.DateTime),
    sa.column("value_json", sa.Text),
)


def reap(storage: optuna.storages.RDBStorage, study: optuna.Study, grace: float) -> list[int]:
    """Fail (with a reason) and queue again the study's RUNNING trials whose worker stopped
    beating more than ``grace`` seconds ago, or never beat and started that long ago (a
    worker killed between asking for a trial and its first beat); their numbers.

    Heartbeats are compared with the database's clock, as Optuna records them; start times
    are the workers' local time, as Optuna records those.
    """
    from datetime import datetime

    with storage.engine.connect() as conn:
        now = conn.execute(sa.select(sa.func.now())).scalar().replace(tzinfo=None)
        rows = conn.execute(_RUNNING, {"study_id": study._study_id}).all()
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
                "autofhe.search.heartbeat",
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
                    _retrying(end_trial, storage, study, current, reason)
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


def _retrying(work, *args, seconds: float = 30.0) -> None:
    """``work(*args)`` until it runs without a database error, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            work(*args)
            return
        except Exception:
            if time.monotonic() > deadline:
                return
            time.sleep(1.0)


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
