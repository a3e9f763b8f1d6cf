"""Which database and which study a command means, found without importing the search.

Commands that only read a study (``studies``, ``pareto``, ``trials``, ``export``...) must
answer in well under a second; ``autofhe.search.run.study`` imports torch and scikit-learn, so the
look-up lives here with nothing heavier than Optuna and SQLAlchemy, imported when called.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from autofhe.errors import ParameterError, StorageError

__all__ = [
    "DEFAULT_STORAGE",
    "SCHEMES",
    "STORAGE_ENV",
    "artifact_dir",
    "artifact_store",
    "check_study_name",
    "check_writable",
    "find_study",
    "foreign_study",
    "has_tables",
    "is_autofhe_study",
    "load_study",
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
    """``--storage``, else ``$AUTOFHE_STORAGE``, else an SQLite file in the working directory.

    An empty value and a database that keeps nothing (SQLite in memory) are refused by name:
    a study must outlive the command, and every worker must reach it.
    """
    if url is not None and not url.strip():
        raise ParameterError("--storage is empty; pass a URL such as sqlite:///autofhe.db.")
    env = os.environ.get(STORAGE_ENV)
    if url is None and env is not None and not env.strip():
        raise ParameterError(f"${STORAGE_ENV} is set but empty; unset it or set it to a URL.")
    url = url or env or DEFAULT_STORAGE
    scheme = url.split(":", 1)[0] if "://" in url else None
    if scheme not in SCHEMES:
        raise ParameterError(
            f"storage {url!r} has an unknown scheme; use an SQLAlchemy URL such as "
            "sqlite:///autofhe.db or postgresql://user@host/db."
        )
    if scheme == "sqlite" and sqlite_path(url) is None:
        raise ParameterError(
            f"storage {url!r} is an in-memory SQLite database: the study would vanish with "
            "this command and no other worker could reach it; pass a file, e.g. "
            "sqlite:///autofhe.db."
        )
    return url


#: Optuna keeps study names in a 512-character column; names also appear in commands we print.
MAX_STUDY_NAME = 256


def check_study_name(name: str | None) -> str | None:
    """``--study`` as given, or a ParameterError: empty, too long, or with control characters
    (a newline would break every command printed with the name)."""
    if name is None:
        return None
    if not name.strip():
        raise ParameterError("--study is empty; pass a name, or leave --study out.")
    if len(name) > MAX_STUDY_NAME:
        raise ParameterError(
            f"--study of {len(name)} characters is too long; use at most {MAX_STUDY_NAME}."
        )
    if any(not ch.isprintable() for ch in name):
        raise ParameterError(
            f"--study {name!r} holds a control character (newline, tab...); use printable "
            "characters only."
        )
    return name


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
    """Names of the studies in ``url``; nothing is created (a database without Optuna's tables
    holds none)."""
    if not has_tables(url):
        return []
    return [s.study_name for s in open_storage(url).get_all_studies()]


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


def artifact_store(url: str, write: bool = False):
    """Where front models are stored and read: the database itself, so a worker anywhere
    needs only the URL; a folder only when the user names one in $AUTOFHE_ARTIFACTS (created
    by a search, never by a reader)."""
    import optuna

    from autofhe.search.store.tables import DatabaseArtifactStore, ParetoStore

    if os.environ.get("AUTOFHE_ARTIFACTS"):
        folder = artifact_dir(url)
        if write:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            raise StorageError(
                f"$AUTOFHE_ARTIFACTS={folder} is not a folder; set it to the folder the search "
                "stored its models in, or unset it (models are stored in the database)."
            )
        return optuna.artifacts.FileSystemArtifactStore(str(folder))
    legacy = artifact_dir(url) if url.startswith("sqlite:///") else None
    return DatabaseArtifactStore(ParetoStore(url, create=write), legacy)


#: Optuna's tables a database must hold for a reader to open it (it never creates them).
OPTUNA_TABLES = ("studies", "trials", "alembic_version")


def has_tables(url: str, names=OPTUNA_TABLES) -> bool:
    """Whether the database at ``url`` holds every table of ``names`` (a read-only look; a
    missing SQLite file holds none and is not created)."""
    import sqlalchemy as sa

    db = sqlite_path(url)
    if db is not None and not db.is_file():  # connecting would create it
        return False
    with _reading(url):
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            present = set(sa.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    return set(names) <= present


@contextmanager
def _reading(url: str) -> Iterator[None]:
    """Database and driver errors as one StorageError line."""
    try:
        yield
    except StorageError:
        raise
    except ImportError as exc:
        from autofhe.search.store.engine import missing_driver

        raise missing_driver(url, exc) from None
    except Exception as exc:  # driver errors, alembic, a file that is not a database
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise StorageError(f"cannot read storage {url!r}: {type(exc).__name__}: {first}") from None


def open_storage(url: str, create: bool = False):
    """The process's pooled storage on ``url``; a database that cannot be read is one line.

    ``create`` False (every command but ``search`` / ``worker``): nothing is ever created, not
    Optuna's tables in an empty or foreign database, and a database without them is a
    StorageError.
    """
    from autofhe.search.store.engine import make_storage

    require_database_file(url)  # never leave an empty database behind a mistyped path
    if not create and not has_tables(url):
        raise StorageError(
            f"no Optuna study in {url} (it holds none of Optuna's tables; nothing was "
            "created); run `autofhe search` first, or check --storage."
        )
    with _reading(url):
        return make_storage(url, create=create)


def is_autofhe_study(study) -> bool:
    """Made by autofhe: autofhe's two objectives and its fingerprint (a user attribute; a
    search also registers the study in autofhe's own table first, which ``search`` checks)."""
    from autofhe.search.record import StudyRecord  # dataclasses: not at `studies`' start-up

    return len(study.directions) == 2 and StudyRecord.of(study).is_autofhe


def foreign_study(study, url: str) -> ParameterError:
    """The error for a study autofhe did not make (it reads and writes its own only)."""
    n = len(study.directions)
    return ParameterError(
        f"study {study.study_name!r} in {url} was not made by autofhe ({n} objective"
        f"{'s' if n != 1 else ''}, no autofhe fingerprint); autofhe writes to and reports on "
        "its own studies only: pass another --study name (or use Optuna's own CLI for it)."
    )


def find_study(url: str, name: str):
    """Study ``name`` when ``url`` holds it (read, nothing created), else None; a study
    autofhe did not make is refused (what ``search`` checks before it writes anything)."""
    import optuna

    if name not in study_names(url):
        return None
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    if not is_autofhe_study(study):
        raise foreign_study(study, url)
    return study


def load_study(url: str, name: str | None, autofhe_only: bool = True):
    """Study ``name`` on ``url`` (or the database's only study when ``name`` is None), read
    without creating anything; ``autofhe_only``: a study autofhe did not make is refused."""
    import optuna

    storage = open_storage(url)
    names = [s.study_name for s in storage.get_all_studies()]
    study = optuna.load_study(study_name=resolve_study(name, names, url), storage=storage)
    if autofhe_only and not is_autofhe_study(study):
        raise foreign_study(study, url)
    return study
