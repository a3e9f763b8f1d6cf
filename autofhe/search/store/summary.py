"""`autofhe studies` on an SQLite file without Optuna: the listing in a tenth of a second.

Opening an Optuna ``RDBStorage`` costs about a second before the first query (importing
Optuna and SQLAlchemy, alembic's schema check), which is most of what listing a few studies
takes. For an SQLite database the listing reads Optuna's tables directly, read-only (a
mistyped path is never turned into an empty database), with the standard library alone, and
counts each study's front exactly as :func:`autofhe.search.front.pareto.pareto_front` does:
feasible COMPLETE trials not dominated on (metric max, latency min), equal points once.

Anything this reader does not recognise (another database, a schema Optuna has since
changed) returns None, and the caller takes the Optuna path.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from urllib.parse import quote

from autofhe.search.front.pareto import sweep
from autofhe.search.record import StudyRecord
from autofhe.search.store.locate import sqlite_path

__all__ = ["front_size", "optuna_summaries", "sqlite_summaries"]

_VALUE = {"INF_POS": math.inf, "INF_NEG": -math.inf}


def front_size(points: list[tuple[float, float]]) -> int:
    """Distinct (metric, latency) points not dominated by another: :func:`front.sweep`'s."""
    return len(sweep(points))


def _connect(path: Path) -> sqlite3.Connection:
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=10)


def _feasible(raw: str | None) -> bool:
    """A trial's constraints (``constraints`` lists and ``constraints:<name>`` values)."""
    if raw is None:
        return True
    value = json.loads(raw)
    values = value if isinstance(value, list) else [value]
    return all(v is not None and float(v) <= 0 for v in values)


def sqlite_summaries(url: str) -> list[dict] | None:
    """``study, trials, front, metric, source`` per study of an SQLite ``url``, or None when
    the file is not an Optuna database this reader knows (the caller falls back to Optuna)."""
    path = sqlite_path(url)
    if path is None or not path.is_file():
        return None
    try:
        with _connect(path) as db:
            return _read(db)
    except (sqlite3.Error, ValueError, TypeError):
        return None


def _read(db: sqlite3.Connection) -> list[dict]:
    studies = db.execute("SELECT study_id, study_name FROM studies ORDER BY study_id").fetchall()
    counts = dict(db.execute("SELECT study_id, COUNT(*) FROM trials GROUP BY study_id"))
    attrs: dict[tuple[int, str], str] = {}
    for table, key in (
        ("study_system_attributes", "study:metric_names"),
        ("study_user_attributes", "autofhe_source"),
    ):
        for study_id, value in db.execute(
            f"SELECT study_id, value_json FROM {table} WHERE key = ?", (key,)
        ):
            attrs[(study_id, key)] = value
    values: dict[int, dict[int, float]] = {}
    study_of: dict[int, int] = {}
    for trial_id, study_id, objective, value, kind in db.execute(
        "SELECT t.trial_id, t.study_id, v.objective, v.value, v.value_type FROM trials t "
        "JOIN trial_values v ON v.trial_id = t.trial_id WHERE t.state = 'COMPLETE'"
    ):
        values.setdefault(trial_id, {})[objective] = _VALUE.get(kind, value)
        study_of[trial_id] = study_id
    infeasible = set()
    for trial_id, raw in db.execute(
        "SELECT trial_id, value_json FROM trial_system_attributes "
        "WHERE key = 'constraints' OR key LIKE 'constraints:%'"
    ):
        if trial_id in values and not _feasible(raw):
            infeasible.add(trial_id)
    points: dict[int, list[tuple[float, float]]] = {}
    for trial_id, objectives in values.items():
        if trial_id in infeasible or set(objectives) != {0, 1}:
            continue
        if any(v is None for v in objectives.values()):
            continue
        points.setdefault(study_of[trial_id], []).append((objectives[0], objectives[1]))
    rows = []
    for study_id, name in studies:
        names = json.loads(attrs.get((study_id, "study:metric_names"), "null")) or ["?"]
        source = json.loads(attrs.get((study_id, "autofhe_source"), '"-"'))
        rows.append(
            {
                "study": name,
                "trials": int(counts.get(study_id, 0)),
                "front": front_size(points.get(study_id, [])),
                "metric": names[0],
                "source": source,
            }
        )
    return rows


def optuna_summaries(storage) -> list[dict]:
    """The same rows through Optuna's own reading (any database, e.g. PostgreSQL)."""
    import optuna

    from autofhe.search.front.pareto import pareto_front

    rows = []
    for summary in optuna.get_all_study_summaries(storage=storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        rows.append(
            {
                "study": summary.study_name,
                "trials": len(trials),
                "front": len(pareto_front(trials)),
                "metric": (study.metric_names or ["?"])[0],
                "source": StudyRecord.of(study).autofhe_source or "-",
            }
        )
    return rows
