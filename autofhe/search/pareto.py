"""autofhe's own tables, next to Optuna's in the same database.

- ``autofhe_studies``: per study, the dataset (npz bytes, so a worker on another machine needs
  only the storage URL), its fingerprint, task, metric and spec;
- ``autofhe_pareto_snapshots`` / ``autofhe_pareto_points``: the Pareto front after each
  change, with measured latency and the artifact of each front model.

SQLAlchemy lives here only; database errors surface as :class:`StorageError`.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from autofhe.errors import StorageError

__all__ = ["ParetoStore", "StorageError", "pareto_front", "serialize_sqlite"]

#: Seconds an SQLite writer waits for another worker's transaction before giving up.
SQLITE_LOCK_TIMEOUT_S = 60


def serialize_sqlite(engine: sa.Engine) -> sa.Engine:
    """Make every transaction on an SQLite ``engine`` take the write lock when it begins.

    SQLite ignores ``SELECT ... FOR UPDATE``, so two workers can both read a WAITING trial
    (the enqueued seed, a retried one) and both start it; the second then crashes when it
    reports a trial that is already COMPLETE. ``BEGIN IMMEDIATE`` serializes such read-then-
    write sequences, which is what PostgreSQL's row locks give Optuna. Other engines are
    returned unchanged.
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


metadata = sa.MetaData()

studies = sa.Table(
    "autofhe_studies",
    metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("task", sa.String(32), nullable=False),
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    # 4 GB: MySQL's plain BLOB would stop at 64 KB
    sa.Column("dataset", sa.LargeBinary(length=2**32 - 1), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

snapshots = sa.Table(
    "autofhe_pareto_snapshots",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_name", sa.String(512), nullable=False, index=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("n_complete", sa.Integer, nullable=False),
)

points = sa.Table(
    "autofhe_pareto_points",
    metadata,
    sa.Column(
        "snapshot_id", sa.Integer, sa.ForeignKey("autofhe_pareto_snapshots.id"), primary_key=True
    ),
    sa.Column("trial_number", sa.Integer, primary_key=True),
    sa.Column("metric", sa.Float, nullable=False),
    sa.Column("predicted_latency_s", sa.Float, nullable=False),
    sa.Column("measured_latency_s", sa.Float, nullable=True),
    sa.Column("artifact_id", sa.String(128), nullable=True),
)


def pareto_front(trials) -> list:
    """Feasible COMPLETE trials not dominated on (metric max, latency min), by metric.

    Trials with exactly the same values are one point: the first to complete stands for it.
    It is the one whose latency was measured and whose model was stored when it entered the
    front (with several workers, trial numbers do not give the order in which trials finish).
    """
    import optuna

    done = [
        t
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE
        and t.values is not None
        and all(v <= 0 for v in t.constraints.values())
    ]
    front = []
    for t in done:
        m, lat = t.values
        dominated = any(
            (o.values[0] >= m and o.values[1] <= lat) and (o.values[0] > m or o.values[1] < lat)
            for o in done
        )
        if not dominated:
            front.append(t)
    first: dict[tuple, object] = {}
    for t in sorted(front, key=_completion_order):
        first.setdefault(tuple(t.values), t)
    return sorted(first.values(), key=lambda t: (-t.values[0], t.values[1], t.number))


def _completion_order(trial) -> tuple:
    done = trial.datetime_complete
    return (done is None, done.timestamp() if done else 0.0, trial.number)


class ParetoStore:
    """Reads and writes autofhe's tables on an SQLAlchemy URL."""

    def __init__(self, url: str):
        try:
            self.engine = serialize_sqlite(sa.create_engine(url))
            metadata.create_all(self.engine)
        except ImportError as exc:
            raise StorageError(
                f"storage {url!r} needs a database driver that is not installed ({exc.name}); "
                "for PostgreSQL: pip install 'autofhe[postgres]'."
            ) from None
        except SQLAlchemyError as exc:
            raise StorageError(
                f"cannot open storage {url!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
            ) from exc

    @contextmanager
    def session(self) -> Iterator[sa.Connection]:
        """A transaction: committed on success, rolled back on error, always closed."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {str(exc).splitlines()[0]}") from exc

    # -- studies ------------------------------------------------------------------------------
    def register_study(self, name: str, ds, metric: str, spec: dict) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, X=ds.X, y=ds.y)
        with self.session() as conn:
            conn.execute(
                studies.insert().values(
                    study_name=name,
                    fingerprint=ds.fingerprint,
                    task=ds.task,
                    metric=metric,
                    source=ds.source,
                    spec=json.dumps(spec),
                    dataset=buf.getvalue(),
                    created=time.time(),
                )
            )

    def study_info(self, name: str) -> dict | None:
        with self.session() as conn:
            row = conn.execute(sa.select(studies).where(studies.c.study_name == name)).first()
        if row is None:
            return None
        info = dict(row._mapping)
        info["spec"] = json.loads(info["spec"])
        return info

    @staticmethod
    def decode_data(info: dict) -> tuple[np.ndarray, np.ndarray]:
        """X and y of a :meth:`study_info` row (stored as npz bytes, never pickle)."""
        with np.load(io.BytesIO(info["dataset"]), allow_pickle=False) as z:
            return z["X"], z["y"]

    # -- Pareto snapshots ---------------------------------------------------------------------
    def latest_front(self, name: str) -> list[dict]:
        with self.session() as conn:
            snap = conn.execute(
                sa.select(snapshots.c.id)
                .where(snapshots.c.study_name == name)
                .order_by(snapshots.c.id.desc())
                .limit(1)
            ).scalar()
            if snap is None:
                return []
            rows = conn.execute(
                sa.select(points)
                .where(points.c.snapshot_id == snap)
                .order_by(points.c.metric.desc(), points.c.predicted_latency_s)
            ).all()
        return [dict(r._mapping) for r in rows]

    def snapshot_count(self, name: str) -> int:
        with self.session() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(snapshots)
                    .where(snapshots.c.study_name == name)
                ).scalar()
            )

    def save_front(self, name: str, front: list, n_complete: int) -> bool:
        """Store a new snapshot when the front's trials changed; returns whether it did."""
        current = {p["trial_number"] for p in self.latest_front(name)}
        if current == {t.number for t in front}:
            return False
        with self.session() as conn:
            snap = conn.execute(
                snapshots.insert().values(
                    study_name=name, created=time.time(), n_complete=n_complete
                )
            ).inserted_primary_key[0]
            for t in front:
                conn.execute(
                    points.insert().values(
                        snapshot_id=snap,
                        trial_number=t.number,
                        metric=t.values[0],
                        predicted_latency_s=t.values[1],
                        measured_latency_s=t.user_attrs.get("measured_latency_s"),
                        artifact_id=t.user_attrs.get("artifact_id"),
                    )
                )
        return True
