"""Which database and which study a command means, found without importing the search.

Commands that only read a study (``studies``, ``pareto``, ``trials``, ``export``...) must
answer in well under a second; ``autofhe.search.study`` imports torch and scikit-learn, so the
look-up lives here with nothing heavier than Optuna and SQLAlchemy, imported when called.
"""

from __future__ import annotations

import os
from pathlib import Path

from autofhe.errors import ParameterError, StorageError

__all__ = [
    "DEFAULT_STORAGE",
    "SCHEMES",
    "STORAGE_ENV",
    "artifact_dir",
    "artifact_store",
    "check_writable",
    "load_study",
    "missing_driver",
    "open_storage",
    "require_database_file",
    "resolve_storage",
    "resolve_study",
    "sqlite_path",
    "study_names",
]

DEFAULT_STORAGE = "sqlite:///autofhe.db"
STORAGE_ENV = "AUTOFHE_STORAGE"
SCHEMES = (
    "sqlite",
    "postgresql",
    "postgresql+psycopg2",
    "postgresql+psycopg",
    "mysql",
    "mysql+pymysql",
)


def sqlite_path(url: str) -> Path | None:
    """The database file of an ``sqlite:///`` URL (None for other databases and memory)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///") :])
    return None


def require_database_file(url: str) -> None:
    """Refuse an SQLite URL whose file does not exist: opening it would create an empty
    database behind a mistyped path."""
    db = sqlite_path(url)
    if db is not None and not db.is_file():
        raise StorageError(
            f"no database file {str(db)!r} (storage {url}); run `autofhe search` first, or "
            "pass --storage / set $AUTOFHE_STORAGE to the study database."
        )


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


def check_writable(url: str) -> None:
    """Refuse an SQLite database this process cannot write (a search or worker would fail
    at its first commit with Optuna's "invalid data in the commit" message)."""
    db = sqlite_path(url)
    if db is None:
        return
    import tempfile

    folder = db.parent if str(db.parent) else Path(".")
    if not folder.is_dir():
        raise StorageError(
            f"storage {url}: the folder {str(folder)!r} does not exist; create it, or pass "
            "--storage with a file in an existing folder."
        )
    try:
        if db.exists():
            os.close(os.open(db, os.O_RDWR))  # what permissions and an immutable flag allow
        with tempfile.TemporaryFile(dir=folder):  # SQLite writes its journal next to the file
            pass
    except OSError as exc:
        where = db if db.exists() and exc.filename == str(db) else folder
        raise StorageError(
            f"storage {url} is not writable ({exc.strerror}: {where}); a search writes its "
            "trials there: fix the permissions, or pass --storage with a writable file."
        ) from None


def resolve_storage(url: str | None) -> str:
    """``--storage``, else ``$AUTOFHE_STORAGE``, else an SQLite file in the working directory."""
    url = url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    scheme = url.split(":", 1)[0] if "://" in url else None
    if scheme not in SCHEMES:
        raise ParameterError(
            f"storage {url!r} has an unknown scheme; use an SQLAlchemy URL such as "
            "sqlite:///autofhe.db or postgresql://user@host/db."
        )
    return url


def artifact_dir(url: str) -> Path:
    """The folder of file artifacts: $AUTOFHE_ARTIFACTS, else (older studies) next to an
    SQLite file (``<db>.artifacts``), else ./autofhe-artifacts."""
    if os.environ.get("AUTOFHE_ARTIFACTS"):
        return Path(os.environ["AUTOFHE_ARTIFACTS"])
    db = sqlite_path(url)
    if db is not None:
        return db.with_name(db.name + ".artifacts")
    return Path("autofhe-artifacts")


def study_names(url: str) -> list[str]:
    """Names of the studies in ``url``; a missing SQLite file is an error, never created."""
    require_database_file(url)
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return optuna.get_all_study_names(storage=url)
    except (SQLAlchemyError, ImportError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StorageError(f"cannot read storage {url!r}: {first}") from None


def resolve_study(name: str | None, names: list[str], url: str) -> str:
    """``--study`` when given and present; without it, the only study of the database.

    Parameters
    ----------
    name : str or None
        What the user passed as ``--study``.
    names : list of str
        The studies of the database (:func:`study_names`).
    url : str
        The storage URL, for the messages.
    """
    listed = ", ".join(names) or "none"
    if name is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise ParameterError(f"no study in {url}; create one with `autofhe search`.")
        raise ParameterError(
            f"{len(names)} studies in {url} ({listed}); choose one with --study NAME."
        )
    if name not in names:
        raise ParameterError(f"no study {name!r} in {url}; studies there: {listed}.")
    return name


def artifact_store(url: str):
    """Where front models are stored and read: the database itself, so a worker anywhere
    needs only the URL; a folder only when the user names one in $AUTOFHE_ARTIFACTS."""
    import optuna

    from autofhe.search.pareto import DatabaseArtifactStore, ParetoStore

    if os.environ.get("AUTOFHE_ARTIFACTS"):
        folder = artifact_dir(url)
        folder.mkdir(parents=True, exist_ok=True)
        return optuna.artifacts.FileSystemArtifactStore(str(folder))
    legacy = artifact_dir(url) if url.startswith("sqlite:///") else None
    return DatabaseArtifactStore(ParetoStore(url), legacy)


def open_storage(url: str):
    """The process's pooled storage on ``url``; a database that cannot be read is one line.

    heartbeat.py, not study.py: study.py imports the training side (torch)."""
    from autofhe.search.heartbeat import GRACE_S, HEARTBEAT_S, make_storage

    require_database_file(url)  # never leave an empty database behind a mistyped path
    try:
        return make_storage(url, HEARTBEAT_S, GRACE_S)
    except ImportError as exc:
        raise missing_driver(url, exc) from None
    except Exception as exc:  # driver errors, alembic, a file that is not a database
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise StorageError(f"cannot read storage {url!r}: {type(exc).__name__}: {first}") from None


def load_study(url: str, name: str | None):
    """Study ``name`` on ``url`` (or the database's only study when ``name`` is None)."""
    import optuna

    storage = open_storage(url)
    names = [s.study_name for s in storage.get_all_studies()]
    return optuna.load_study(study_name=resolve_study(name, names, url), storage=storage)
