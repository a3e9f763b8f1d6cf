"""Bad, hostile and edge-case input to every command: one line on stderr, exit 2, and nothing
written anywhere (every file byte-compared; tables and trials counted on PostgreSQL).

The world each row runs in: an autofhe SQLite database with one small study and its exported
bundle, a database of plain Optuna studies (multi- and single-objective, names a search would
choose), a SQLite file of another application, and data files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import sqlalchemy as sa

from autofhe.data import load_dataset
from autofhe.search.plan.spec import load_spec
from autofhe.search.run.study import open_study
from autofhe.search.run.workers import run_workers

#: one autofhe process per row (make check leaves them out)
pytestmark = pytest.mark.slow

AUTOFHE = str(Path(sys.executable).with_name("autofhe"))
#: quantized linear models trained for 2 epochs: a trial takes about a second
SPEC = """
[study]
folds = 1

[space]
n_w_bits = { low = 2, high = 4 }
n_a_bits = { low = 2, high = 4 }

[fixed]
module__n_layers = 1
max_epochs = 2
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The files every row starts from (copied per row)."""
    root = tmp_path_factory.mktemp("world")
    (root / "spec.toml").write_text(SPEC)
    ds = load_dataset("sklearn:wine")
    url = f"sqlite:///{root}/autofhe.db"
    open_study(ds, load_spec(root / "spec.toml"), url, "w", seed=0)
    run_workers(url, "w", 1, 2, None, 0, None)
    subprocess.run(
        [AUTOFHE, "export", "--storage", url, "--study", "w", "--out", "model"],
        cwd=root,
        check=True,
        capture_output=True,
    )
    foreign = f"sqlite:///{root}/foreign.db"
    optuna.create_study(
        study_name="iris-accuracy", storage=foreign, directions=["maximize", "minimize"]
    ).optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=2)
    optuna.create_study(study_name="single", storage=foreign).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2
    )
    with sqlite3.connect(root / "app.db") as db:  # another application's database
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO users (name) VALUES ('ada')")
    np.save(root / "X.npy", ds.X[:3])
    (root / "keyfile").write_text("not a folder")
    (root / "empty").write_text("")
    (root / "emptydir").mkdir()
    (root / "dangling").symlink_to(root / "nowhere")
    (root / "linkdir").symlink_to(root / "emptydir")
    (root / "readonly").mkdir(mode=0o555)
    return root


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` and a digest of its content (links by their target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = "link:" + os.readlink(path)
        elif path.is_file():
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[key] = "dir"
    return out


def _run(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AUTOFHE_STORAGE")}
    return subprocess.run(
        [AUTOFHE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**environment, "PYTHONWARNINGS": "ignore", **env},
    )


OURS = "sqlite:///autofhe.db"
FOREIGN = "sqlite:///foreign.db"
SEARCH = ["search", "--data", "sklearn:wine", "--spec", "spec.toml", "--trials", "1"]
REMOTE = ["remote-predict", "--url", "http://127.0.0.1:9", "--model", "model", "--data", "X.npy"]

ROWS = [
    # foreign studies are never taken over, whatever the command
    (["search", "--data", "sklearn:iris", "--trials", "1", "--storage", FOREIGN], "not made by"),
    ([*SEARCH, "--storage", FOREIGN, "--study", "single"], "not made by autofhe (1 objective"),
    (["worker", "--storage", FOREIGN, "--study", "single"], "not made by autofhe"),
    (["worker", "--storage", FOREIGN, "--study", "iris-accuracy"], "not made by autofhe"),
    (["pareto", "--storage", FOREIGN, "--study", "single"], "not made by autofhe"),
    (["pareto", "--storage", FOREIGN, "--study", "iris-accuracy"], "not made by autofhe"),
    (["export", "--storage", FOREIGN, "--study", "single", "--out", "m2"], "not made by"),
    # another application's database: nothing of Optuna's or ours is created in it
    (["pareto", "--storage", "sqlite:///app.db"], "no Optuna study in"),
    (["trials", "--storage", "sqlite:///app.db"], "no Optuna study in"),
    (["export", "--storage", "sqlite:///app.db", "--out", "m2"], "no Optuna study in"),
    ([*SEARCH, "--storage", "sqlite:///app.db", "--seed", "-1"], "--seed -1"),
    # storage URLs that cannot persist, empty values
    ([*SEARCH, "--storage", "sqlite://"], "in-memory SQLite database"),
    ([*SEARCH, "--storage", "sqlite:///:memory:"], "in-memory SQLite database"),
    (["studies", "--storage", ""], "--storage is empty"),
    ([*SEARCH, "--storage", OURS, "--study", ""], "--study is empty"),
    (["pareto", "--storage", OURS, "--study", ""], "--study is empty"),
    # numbers and names
    ([*SEARCH, "--storage", OURS, "--seed", "-1"], "--seed -1: pass an integer from 0"),
    ([*SEARCH, "--storage", OURS, "--seed", str(2**32)], "--seed 4294967296"),
    ([*SEARCH, "--storage", OURS, "--workers", "1000"], "--workers 1000: pass 1 to"),
    ([*SEARCH, "--storage", OURS, "--workers", "0"], "--workers 0: pass 1 to"),
    ([*SEARCH, "--storage", OURS, "--study", "x" * 600], "--study of 600 characters"),
    ([*SEARCH, "--storage", OURS, "--study", "a\nb"], "control character"),
    (["worker", "--storage", OURS, "--study", "w", "--seed", "-3"], "--seed -3"),
    (["export", "--storage", OURS, "--out", "m2", "--min-accuracy", "nan"], "finite"),
    (["export", "--storage", OURS, "--out", "m2", "--max-latency", "inf"], "finite"),
    # export's --out: links and paths under a file, refused before anything is read
    (["export", "--storage", OURS, "--out", "dangling"], "is a symbolic link"),
    (["export", "--storage", OURS, "--out", "linkdir"], "is a symbolic link"),
    (["export", "--storage", OURS, "--out", "keyfile/model"], "is a file"),
    (["export", "--storage", OURS, "--out", "keyfile"], "is a file"),
    # remote-predict's --keys and --url, checked before any key is made
    (
        [*REMOTE, "--keys", "keyfile"],
        "--keys keyfile is a file",
    ),
    (
        [*REMOTE, "--keys", "empty"],
        "--keys empty is a file",
    ),
    (
        ["remote-predict", "--url", "ftp://x", "--model", "model", "--data", "X.npy"],
        "not an http(s) URL",
    ),
]


@pytest.mark.parametrize(("args", "message"), ROWS, ids=[" ".join(a)[:60] for a, _ in ROWS])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, tmp_path, args, message):
    root = tmp_path / "w"
    shutil.copytree(world, root, symlinks=True)
    before = _snapshot(root)
    result = _run(args, root)
    assert result.returncode == 2, (result.stdout[-500:], result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert _snapshot(root) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_keys_in_a_folder_this_user_cannot_write(world, tmp_path):
    root = tmp_path / "w"
    shutil.copytree(world, root, symlinks=True)
    result = _run(
        [*REMOTE, "--keys", "readonly/keys"],
        root,
    )
    assert result.returncode == 2 and "is not a folder this user can write" in result.stderr


def test_artifacts_folder_set_but_missing_is_said_and_not_created(world, tmp_path):
    """Before: "set $AUTOFHE_ARTIFACTS" while it was set, and an empty folder created."""
    root = tmp_path / "w"
    shutil.copytree(world, root, symlinks=True)
    before = _snapshot(root)
    result = _run(
        ["export", "--storage", OURS, "--out", "m2"], root, AUTOFHE_ARTIFACTS=str(root / "arts")
    )
    assert result.returncode == 2
    assert f"$AUTOFHE_ARTIFACTS={root / 'arts'} is not a folder" in result.stderr
    assert _snapshot(root) == before


def test_predictions_go_to_exactly_the_path_given(world, tmp_path):
    """Before: `--out preds.txt` said it wrote preds.txt and wrote preds.txt.npy."""
    root = tmp_path / "w"
    shutil.copytree(world, root, symlinks=True)
    result = _run(
        ["predict", "--model", "model", "--data", "X.npy", "--fhe", "disable", "--out", "p.txt"],
        root,
    )
    assert result.returncode == 0, result.stderr
    assert "written to p.txt" in result.stdout
    assert (root / "p.txt").is_file() and not (root / "p.txt.npy").exists()
    assert len(np.load(root / "p.txt")) == 3


def test_printed_commands_quote_the_study_name(world, tmp_path):
    """A name with a space or a quote is printed as one shell word in the commands."""
    root = tmp_path / "w"
    shutil.copytree(world, root, symlinks=True)
    result = _run([*SEARCH, "--storage", OURS, "--study", "my study's"], root)
    assert result.returncode == 0, result.stderr
    assert "autofhe export --study 'my study'\"'\"'s' --storage" in result.stdout


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "args",
    [
        ["studies"],
        ["trials"],
        ["pareto"],
        ["export", "--out", "m2"],
        ["worker", "--study", "w"],
    ],
)
def test_reading_an_empty_postgres_database_creates_nothing(pg_url, tmp_path, args):
    """Before: `trials` or `studies` on an empty database (the maintenance database `postgres`
    among them) created Optuna's 13 tables."""
    result = _run([*args, "--storage", pg_url], tmp_path)
    assert _tables(pg_url) == set()
    if args == ["studies"]:
        assert result.returncode == 0 and f"no studies in {pg_url}" in result.stdout
    else:
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
        assert "no Optuna study in" in result.stderr or "no study" in result.stderr


def test_a_role_without_create_privilege_reads_everything_and_creates_nothing(
    pg_url, world, tmp_path
):
    """`studies`, `trials`, `pareto` and `export` on an autofhe database and on an empty one,
    as a role that may read but not create: no error from the server, nothing created."""
    ds = load_dataset("sklearn:wine")
    open_study(ds, load_spec(world / "spec.toml"), pg_url, "w", seed=0)
    run_workers(pg_url, "w", 1, 2, None, 0, None)
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    role = f"reader_{pg_url.rsplit('_', 1)[1]}"
    db = pg_url.rsplit("/", 1)[1]
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        conn.exec_driver_sql(f"REVOKE CREATE ON DATABASE {db} FROM PUBLIC")
        conn.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    admin.dispose()
    reader = pg_url.replace("//autofhe@", f"//{role}@", 1)
    tables = _tables(pg_url)
    studies = optuna.get_all_study_names(storage=pg_url)
    for args in (["studies"], ["trials"], ["pareto"], ["export", "--out", "m"]):
        result = _run([*args, "--storage", reader], tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stderr.strip() == "", (args, result.stderr)
    assert (tmp_path / "m" / "model.json").is_file()
    assert _tables(pg_url) == tables
    assert optuna.get_all_study_names(storage=pg_url) == studies
