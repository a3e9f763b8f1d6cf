"""This process's database engines and Optuna storage, the one retry policy, and the only
SQL autofhe runs on Optuna's own tables.

Every engine has a small pool checked before use (it survives a database restart) and, on
SQLite, takes the write lock when a transaction begins. Every wait on a database goes through
:func:`retry`: a call is repeated while its error is *transient* (a lost connection, a
creation race) for a bounded time, and the last error is raised. Imports: Optuna and
SQLAlchemy, nothing of autofhe but its errors (the heartbeat helper starts in a second).
"""

from __future__ import annotations

import functools
import json
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from autofhe.errors import StorageError

__all__ = [
    "RECONNECT_S",
    "StorageError",
    "engine",
    "engine_kwargs",
    "lost_connection",
    "make_storage",
    "missing_driver",
    "retry",
    "rewrite_finished_trial",
    "running_trials",
    "serialize_sqlite",
    "transaction",
]

T = TypeVar("T")

#: How long a storage call waits for a lost database to come back before it gives up.
RECONNECT_S = float(os.environ.get("AUTOFHE_RECONNECT_S", "120"))
#: Seconds an SQLite writer waits for another worker's transaction before giving up.
SQLITE_LOCK_TIMEOUT_S = 60
#: Connections per engine: a worker uses one at a time; two engines (Optuna's and autofhe's)
#: and the helper's make at most 3 * (POOL_SIZE + POOL_OVERFLOW) per worker.
POOL_SIZE, POOL_OVERFLOW = 2, 2
#: How long processes that create the same tables at once retry (the loser finds them made).
CREATE_RACE_S = 10.0


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


def lost_connection(exc: BaseException) -> bool:
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


def retry(
    work: Callable[[], T],
    transient: Callable[[BaseException], bool],
    seconds: float,
    before_retry: Callable[[], Any] | None = None,
) -> T:
    """``work()``, repeated while it raises an error ``transient`` accepts, for at most
    ``seconds`` (a random 0.5-1.5 s apart, so racing processes spread out); any other error,
    or the last one, is raised."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return work()
        except Exception as exc:
            if not transient(exc) or time.monotonic() > deadline:
                raise
        if before_retry is not None:
            before_retry()
        time.sleep(0.5 + random.random())


def _reconnecting(method: Callable) -> Callable:
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return retry(
            lambda: method(self, *args, **kwargs),
            lost_connection,
            RECONNECT_S,
            # drop the session bound to the dead connection
            before_retry=self.scoped_session.remove,
        )

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
    storage = retry(
        lambda: _ReconnectingStorage(
            url, engine_kwargs=engine_kwargs(url, role), skip_table_creation=not create
        ),
        lambda exc: not isinstance(exc, ImportError),  # a creation race, a database starting
        CREATE_RACE_S,
    )
    serialize_sqlite(storage.engine)  # workers must not both pop the same waiting trial
    _STORAGES[key] = storage
    return storage


def missing_driver(url: str, exc: ImportError) -> StorageError:
    """The error for a storage URL whose database driver is not installed, with the fix."""
    cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
    module = cause.name or "its driver"
    if url.startswith("postgresql"):
        fix = "pip install 'autofhe[postgres]'"
    elif url.startswith("mysql"):
        fix = "pip install pymysql and use a mysql+pymysql:// URL"
    else:
        fix = f"install the Python package that provides {module!r}"
    return StorageError(
        f"storage {url!r} needs a database driver that is not installed ({module}); {fix}."
    )


_ENGINES: dict[tuple[str, int], sa.Engine] = {}


def engine(url: str) -> sa.Engine:
    """This process's SQLAlchemy engine for ``url`` (autofhe's tables; Optuna has its own in
    :func:`make_storage`): one small pool shared by every reader and writer."""
    key = (url, os.getpid())
    if key not in _ENGINES:
        try:
            _ENGINES[key] = serialize_sqlite(sa.create_engine(url, **engine_kwargs(url, "autofhe")))
        except ImportError as exc:
            raise missing_driver(url, exc) from None
    return _ENGINES[key]


def _database_error(exc: SQLAlchemyError) -> StorageError:
    error = StorageError(f"database error: {str(exc).splitlines()[0]}")
    error.__cause__ = exc
    return error


def transaction(engine: sa.Engine, work: Callable[[sa.Connection], T]) -> T:
    """``work(conn)`` in one transaction (committed on success, rolled back on error), run
    again while the database is restarting (for up to RECONNECT_S); other database errors
    are a :class:`StorageError` (its ``__cause__`` the SQLAlchemy error)."""

    def once() -> T:
        with engine.begin() as conn:
            return work(conn)

    try:
        return retry(once, lost_connection, RECONNECT_S)
    except SQLAlchemyError as exc:
        raise _database_error(exc) from exc


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


def running_trials(storage: optuna.storages.RDBStorage, study_id: int) -> tuple[Any, list]:
    """The database's clock now, and ``(trial_id, started, last heartbeat, worker JSON)`` of
    the study's RUNNING trials, in one look (Optuna's API has no call that returns the
    heartbeats of every running trial)."""
    with storage.engine.connect() as conn:
        now = conn.execute(sa.select(sa.func.now())).scalar()
        return now, conn.execute(_RUNNING, {"study_id": study_id}).all()


_ATTR_TABLES = {"system": "trial_system_attributes", "user": "trial_user_attributes"}


def rewrite_finished_trial(
    storage: optuna.storages.RDBStorage,
    trial_id: int,
    system: dict[str, Any] | None = None,
    user: dict[str, Any] | None = None,
) -> None:
    """Set attributes of a finished trial, in one transaction.

    Optuna refuses to update a finished trial; a resume that changes the study's limits must
    re-judge its trials' feasibility (``constraints`` system attributes, the record's
    ``feasible`` and ``reason``). Values are stored as Optuna stores them (JSON). A study
    object loaded before this call keeps its cached trials: load it again.
    """

    def work(conn: sa.Connection) -> None:
        for kind, values in (("system", system or {}), ("user", user or {})):
            table = _ATTR_TABLES[kind]
            for key, value in values.items():
                row = {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                updated = conn.execute(
                    sa.text(
                        f"UPDATE {table} SET value_json = :value_json "
                        "WHERE trial_id = :trial_id AND key = :key"
                    ),
                    row,
                )
                if updated.rowcount == 0:
                    conn.execute(
                        sa.text(
                            f"INSERT INTO {table} (trial_id, key, value_json) "
                            "VALUES (:trial_id, :key, :value_json)"
                        ),
                        row,
                    )

    transaction(storage.engine, work)
