"""autofhe's own tables, next to Optuna's in the same database.

- ``autofhe_studies``: per study, the dataset (npz bytes, so a worker on another machine needs
  only the storage URL), its fingerprint, task, metric and spec;
- ``autofhe_pareto_snapshots`` / ``autofhe_pareto_points``: the Pareto front after each
  change, with measured latency and the artifact of each front model;
- ``autofhe_artifacts``: the front models themselves (zip archives of a few KB), so a worker
  anywhere stores them where every reader of the database finds them.

SQLAlchemy lives here only; database errors surface as :class:`StorageError`.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from autofhe.errors import StorageError
from autofhe.search.record import TrialRecord
from autofhe.search.store.engine import (
    CREATE_RACE_S,
    engine,
    missing_driver,
    retry,
    transaction,
)

__all__ = [
    "DatabaseArtifactStore",
    "ParetoStore",
    "StorageError",
]

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

artifacts = sa.Table(
    "autofhe_artifacts",
    metadata,
    sa.Column("artifact_id", sa.String(128), primary_key=True),
    sa.Column("data", sa.LargeBinary(length=2**32 - 1), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

_CREATED: set[tuple[str, int]] = set()  # (url, pid) whose tables this process made sure of


def _create_tables(url: str, eng: sa.Engine) -> None:
    """Make autofhe's tables once per process; processes that race to create them retry
    (the loser finds them made)."""
    key = (url, os.getpid())
    if key in _CREATED:
        return
    race = (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError)
    retry(lambda: metadata.create_all(eng), lambda exc: isinstance(exc, race), CREATE_RACE_S)
    _CREATED.add(key)


class ParetoStore:
    """Reads and writes autofhe's tables on an SQLAlchemy URL; ``create``: make them when they
    are missing (a search does; every reader finds them or reads nothing)."""

    def __init__(self, url: str, create: bool = False):
        try:
            self.engine = engine(url)
            if create:
                _create_tables(url, self.engine)
            self.tables = create or sa.inspect(self.engine).has_table(studies.name)
        except ImportError as exc:
            raise missing_driver(url, exc) from None
        except (SQLAlchemyError, ValueError) as exc:  # ValueError: e.g. a port that is no number
            raise StorageError(
                f"cannot open storage {url!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
            ) from None

    def transact(self, work):
        """``work(conn)`` in one transaction (:func:`engine.transaction`)."""
        return transaction(self.engine, work)

    # -- studies ------------------------------------------------------------------------------
    def register_study(self, name: str, ds, metric: str, spec: dict) -> bool:
        """Store the study's data and settings; False when another process registered it first
        (the caller then joins that study after checking it holds the same data)."""
        buf = io.BytesIO()
        np.savez_compressed(buf, X=ds.X, y=ds.y)
        row = studies.insert().values(
            study_name=name,
            fingerprint=ds.fingerprint,
            task=ds.task,
            metric=metric,
            source=ds.source,
            spec=json.dumps(spec),
            dataset=buf.getvalue(),
            created=time.time(),
        )
        try:
            self.transact(lambda conn: conn.execute(row))
        except StorageError as exc:
            if isinstance(exc.__cause__, sa.exc.IntegrityError):
                return False
            raise
        return True

    def study_info(self, name: str) -> dict | None:
        if not self.tables:
            return None
        row = self.transact(
            lambda conn: conn.execute(
                sa.select(studies).where(studies.c.study_name == name)
            ).first()
        )
        if row is None:
            return None
        info = dict(row._mapping)
        info["spec"] = json.loads(info["spec"])
        return info

    def study_spec(self, name: str) -> dict | None:
        """The settings registered with study ``name`` (None: not one of autofhe's), read
        without its data."""
        if not self.tables:
            return None
        spec = self.transact(
            lambda conn: conn.execute(
                sa.select(studies.c.spec).where(studies.c.study_name == name)
            ).scalar()
        )
        return None if spec is None else json.loads(spec)

    def set_spec(self, name: str, spec: dict) -> None:
        """Replace a registered study's settings (a resume that changes its limits)."""
        change = studies.update().where(studies.c.study_name == name).values(spec=json.dumps(spec))
        self.transact(lambda conn: conn.execute(change))

    @staticmethod
    def decode_data(info: dict) -> tuple[np.ndarray, np.ndarray]:
        """X and y of a :meth:`study_info` row (stored as npz bytes, never pickle)."""
        with np.load(io.BytesIO(info["dataset"]), allow_pickle=False) as z:
            return z["X"], z["y"]

    # -- Pareto snapshots ---------------------------------------------------------------------
    def latest_front(self, name: str) -> list[dict]:
        if not self.tables:
            return []

        def read(conn) -> list[dict]:
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

        return self.transact(read)

    def snapshot_count(self, name: str) -> int:
        count = sa.select(sa.func.count()).select_from(snapshots)
        return int(
            self.transact(
                lambda conn: conn.execute(count.where(snapshots.c.study_name == name)).scalar()
            )
        )

    def save_front(self, name: str, front: list, n_complete: int) -> bool:
        """Store a new snapshot when the front's trials changed; returns whether it did."""
        current = {p["trial_number"] for p in self.latest_front(name)}
        if current == {t.number for t in front}:
            return False

        def write(conn) -> None:
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
                        measured_latency_s=TrialRecord.of(t).measured_latency_s,
                        artifact_id=TrialRecord.of(t).artifact_id,
                    )
                )

        self.transact(write)
        return True


class DatabaseArtifactStore:
    """An Optuna artifact store on the ``autofhe_artifacts`` table of a study's database.

    ``fallback`` is a folder read when an artifact is not in the table: the folder that older
    studies kept next to their SQLite file.
    """

    def __init__(self, store: ParetoStore, fallback: Path | None = None):
        self.store = store
        self.fallback = fallback

    def open_reader(self, artifact_id: str) -> BinaryIO:
        from optuna.artifacts.exceptions import ArtifactNotFound

        data = self.store.transact(
            lambda conn: conn.execute(
                sa.select(artifacts.c.data).where(artifacts.c.artifact_id == artifact_id)
            ).scalar()
        )
        if data is not None:
            return io.BytesIO(data)
        if self.fallback is not None and (self.fallback / artifact_id).is_file():
            return open(self.fallback / artifact_id, "rb")
        raise ArtifactNotFound(f"artifact {artifact_id!r} is not in the database")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        row = {"artifact_id": artifact_id, "data": content_body.read(), "created": time.time()}
        self.store.transact(lambda conn: conn.execute(artifacts.insert().values(**row)))

    def remove(self, artifact_id: str) -> None:
        from optuna.artifacts.exceptions import ArtifactNotFound

        delete = artifacts.delete().where(artifacts.c.artifact_id == artifact_id)
        deleted = self.store.transact(lambda conn: conn.execute(delete).rowcount)
        if not deleted:
            raise ArtifactNotFound(f"artifact {artifact_id!r} is not in the database")
