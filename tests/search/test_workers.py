"""Many worker processes on one study: a real PostgreSQL server and SQLite, with faults.

The PostgreSQL tests need $AUTOFHE_TEST_PG_URL (a superuser URL; `.ci/run` starts a server):
they skip without it on a laptop and fail in CI (AUTOFHE_REQUIRE_SERVICES=1). Every trial is
a quantized linear model trained for a few epochs (about a second), so counts, not models,
are what these tests look at.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from autofhe.data import load_dataset
from autofhe.search.front.pareto import pareto_front
from autofhe.search.plan.spec import load_spec
from autofhe.search.run.study import open_study
from autofhe.search.run.workers import run_workers
from autofhe.search.store.tables import ParetoStore

from specs import fast_spec

#: workers are processes that train: tens of seconds each (make check leaves them out)
pytestmark = pytest.mark.slow

AUTOFHE = str(Path(sys.executable).with_name("autofhe"))
OPTUNA = str(Path(sys.executable).with_name("optuna"))
SPEC = fast_spec(max_epochs=2)
State = optuna.trial.TrialState


@pytest.fixture(scope="module")
def wine():
    return load_dataset("sklearn:wine")


def _study(url, wine, tmp_path, name="w"):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    open_study(wine, load_spec(spec), url, name, seed=0)
    return name


def _env(home: Path, **extra) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "AUTOFHE_ARTIFACTS"}
    return {**env, "HOME": str(home), "PYTHONWARNINGS": "ignore", **extra}


def _workers(url, name, n, trials, tmp_path, **env) -> list[subprocess.Popen]:
    """``n`` `autofhe worker` processes, each with its own working directory and HOME."""
    procs = []
    for i in range(n):
        cwd = tmp_path / f"worker{i}"
        cwd.mkdir(exist_ok=True)
        cmd = [AUTOFHE, "worker", "--storage", url, "--study", name, "--trials", str(trials)]
        log = open(cwd / "log", "w")
        procs.append(
            subprocess.Popen(
                [*cmd, "--seed", str(i)],
                cwd=cwd,
                env=_env(cwd / "home", **env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (Linux)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def _wait(procs, timeout=300) -> list[int]:
    deadline = time.time() + timeout
    return [p.wait(timeout=max(1, deadline - time.time())) for p in procs]


def _log(tmp_path, i) -> str:
    return (tmp_path / f"worker{i}" / "log").read_text()[-2000:]


def _trials(url, name):
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _check_complete_run(url, name, tmp_path, codes, expected):
    trials = _trials(url, name)
    states = {s.name: sum(t.state == s for t in trials) for s in State}
    print(f"{len(trials)} trials, states {states}, exit codes {codes}")
    assert codes == [0] * len(codes), [_log(tmp_path, i) for i in range(len(codes))]
    assert sorted(t.number for t in trials) == list(range(expected))  # 0 lost, 0 duplicated
    assert states["FAIL"] == 0 and states["RUNNING"] == 0 and states["WAITING"] == 0
    assert not any("failed_trial" in t.system_attrs for t in trials)  # nothing was retried
    return trials


def _best_trials_cli(url, name) -> list[dict]:
    out = subprocess.run(
        [OPTUNA, "best-trials", "--storage", url, "--study-name", name, "-f", "json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    ).stdout
    return json.loads(out)


#: trials per worker of the four-worker runs: enough for every worker to ask, tell and store
#: fronts while the others do (each trial about a second of training)
PER_WORKER = 3


def _four_workers(url, wine, tmp_path):
    name = _study(url, wine, tmp_path)
    start = time.time()
    procs = _workers(
        url, name, 4, PER_WORKER, tmp_path, AUTOFHE_HEARTBEAT_S="2", AUTOFHE_GRACE_S="15"
    )
    return name, procs, start


def _front_matches_optuna(url, name, trials):
    front = pareto_front(trials)
    best = _best_trials_cli(url, name)
    assert front
    # optuna lists every trial of an equal point; our front keeps the first of each
    listed = {
        tuple(b["values"].values() if isinstance(b["values"], dict) else b["values"]) for b in best
    }
    assert {tuple(t.values) for t in front} == listed
    assert {t.number for t in front} <= {b["number"] for b in best}
    stored = ParetoStore(url).latest_front(name)
    assert {p["trial_number"] for p in stored} == {t.number for t in front}
    return front


def _export_from_elsewhere(url, name, tmp_path):
    """`autofhe export` from a third directory with another HOME and only the URL."""
    third = tmp_path / "third"
    third.mkdir()
    result = subprocess.run(
        [AUTOFHE, "export", "--storage", url, "--study", name, "--out", "model"],
        cwd=third,
        env=_env(third / "home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (third / "model" / "model.json").is_file()
    # nothing was written to a folder next to any worker
    assert not list(tmp_path.glob("worker*/autofhe-artifacts"))
    return third / "model"


# -- PostgreSQL ---------------------------------------------------------------------------------


def test_four_workers_on_postgres_lose_nothing_and_pool_connections(pg_url, wine, tmp_path):
    name, procs, _ = _four_workers(pg_url, wine, tmp_path)
    db = pg_url.rsplit("/", 1)[1]
    # autocommit: each look is its own transaction (a transaction sees one stats snapshot)
    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    peak_total, peak_per_process = 0, {}
    sessions_before = None
    with admin.connect() as conn:
        sessions_before = conn.exec_driver_sql(
            f"SELECT sessions FROM pg_stat_database WHERE datname = '{db}'"
        ).scalar()
        while any(p.poll() is None for p in procs):
            rows = conn.exec_driver_sql(
                "SELECT application_name, count(*) FROM pg_stat_activity "
                f"WHERE datname = '{db}' AND pid <> pg_backend_pid() GROUP BY 1"
            ).all()
            peak_total = max(peak_total, sum(n for _, n in rows))
            for app, n in rows:
                peak_per_process[app] = max(peak_per_process.get(app, 0), n)
            time.sleep(0.5)
        opened = (
            conn.exec_driver_sql(
                f"SELECT sessions FROM pg_stat_database WHERE datname = '{db}'"
            ).scalar()
            - sessions_before
        )
    admin.dispose()
    codes = _wait(procs)
    print(
        f"PostgreSQL connections: peak {peak_total} at once, {opened} opened in the run; "
        f"peak per engine {max(peak_per_process.values())} ({len(peak_per_process)} engines)"
    )
    trials = _check_complete_run(pg_url, name, tmp_path, codes, 4 * PER_WORKER)
    assert max(peak_per_process.values()) <= 4  # pool_size 2 + max_overflow 2
    assert peak_total <= 4 * 3 * 4  # 4 workers x 3 engines (optuna, autofhe, heartbeat) x 4
    assert opened <= 60  # pooled: not one session per look (1,153 in 10 minutes before)
    _front_matches_optuna(pg_url, name, trials)
    _export_from_elsewhere(pg_url, name, tmp_path)


def test_killed_worker_trial_is_retried_within_twice_the_grace(pg_url, wine, tmp_path):
    grace = 8  # the retry waits for a survivor to finish its trial: keep that a small part
    name = _study(pg_url, wine, tmp_path)
    per_worker = 4
    procs = _workers(
        pg_url, name, 3, per_worker, tmp_path, AUTOFHE_HEARTBEAT_S="1", AUTOFHE_GRACE_S=str(grace)
    )
    # `autofhe worker` supervises one child process that runs the trials: kill that child, as
    # the kernel's OOM killer would (no chance to clean up), and leave the supervisor alone
    supervisor = procs[0]
    storage = optuna.storages.RDBStorage(pg_url)
    study = optuna.load_study(study_name=name, storage=storage)
    deadline = time.time() + 120
    killed = None
    while killed is None and time.time() < deadline:
        tags = {f":{pid}": pid for pid in _children(supervisor.pid)}
        for t in study.get_trials(deepcopy=False, states=(State.RUNNING,)):
            pid = tags.get(":" + t.system_attrs.get("autofhe_worker", "").rsplit(":", 1)[-1])
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed_at = datetime.datetime.now()
                killed, tag = t.number, f":{pid}"
                break
        time.sleep(0.05)
    assert killed is not None, "the worker never ran a trial"
    codes = _wait(procs[1:])
    assert supervisor.wait(timeout=60) != 0  # it says its worker was killed
    assert "killed by SIGKILL" in _log(tmp_path, 0)
    trials = study.get_trials()
    assert codes == [0, 0], [_log(tmp_path, i) for i in (1, 2)]
    assert trials[killed].state == State.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state in (State.COMPLETE, State.PRUNED)
    # the same configuration: what the killed trial had drawn is kept, the rest is drawn
    assert trials[killed].params.items() <= retries[0].params.items()
    waited = (retries[0].datetime_start - killed_at).total_seconds()
    print(f"trial {killed} killed; retried as trial {retries[0].number} after {waited:.1f} s")
    assert waited <= 2 * grace
    # nothing else lost: the victim's finished trials, its killed one, per_worker per survivor
    by_victim = [t for t in trials if t.system_attrs.get("autofhe_worker", "").endswith(tag)]
    assert len(trials) == 2 * per_worker + len(by_victim)
    assert [t.number for t in trials if t.state == State.FAIL] == [killed]
    assert all(t.state.is_finished() for t in trials)


@pytest.mark.restarts_postgres
def test_workers_ride_out_a_postgres_restart(pg_url, wine, tmp_path):
    restart = os.environ.get("AUTOFHE_TEST_PG_RESTART")
    if not restart:
        if os.environ.get("AUTOFHE_REQUIRE_SERVICES") == "1":
            pytest.fail("AUTOFHE_TEST_PG_RESTART is not set: .ci/run must export it")
        pytest.skip("no command to restart the PostgreSQL server ($AUTOFHE_TEST_PG_RESTART)")
    name = _study(pg_url, wine, tmp_path)
    procs = _workers(pg_url, name, 2, 5, tmp_path, AUTOFHE_HEARTBEAT_S="2", AUTOFHE_GRACE_S="20")
    study = optuna.load_study(study_name=name, storage=pg_url)
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(study.get_trials(deepcopy=False, states=(State.COMPLETE,))) >= 2:
            break
        time.sleep(0.2)
    subprocess.run(shlex.split(restart), check=True, stdout=subprocess.DEVNULL, timeout=60)
    restarted_at = datetime.datetime.now()
    codes = _wait(procs)
    trials = _check_complete_run(pg_url, name, tmp_path, codes, 10)
    after = sum(t.datetime_start > restarted_at for t in trials)
    print(f"PostgreSQL restarted; {after} of 10 trials started after it")
    assert after >= 2  # mid-search: the workers went on after the restart


# -- SQLite -------------------------------------------------------------------------------------


def test_four_workers_on_sqlite_lose_nothing(wine, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    name, procs, _ = _four_workers(url, wine, tmp_path)
    codes = _wait(procs)
    trials = _check_complete_run(url, name, tmp_path, codes, 4 * PER_WORKER)
    _front_matches_optuna(url, name, trials)
    model = _export_from_elsewhere(url, name, tmp_path)
    # the model is in the database, not in a folder next to it
    assert not (tmp_path / "s.db.artifacts").exists()
    # a failure after an encrypted execution still exits non-zero, with one line
    import numpy as np

    np.save(tmp_path / "X.npy", wine.X[:2].astype(np.float32))
    result = subprocess.run(
        [
            AUTOFHE,
            "predict",
            "--model",
            str(model),
            "--data",
            str(tmp_path / "X.npy"),
            "--fhe",
            "execute",
            "--out",
            str(tmp_path / "missing" / "p.npy"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(tmp_path / "home"),
    )
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_first_runs_create_one_study_and_join_it(backend, tmp_path, request):
    url = (
        f"sqlite:///{tmp_path}/new.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    )
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    cmd = [
        AUTOFHE,
        "search",
        "--data",
        "sklearn:wine",
        "--spec",
        str(spec),
        "--storage",
        url,
        "--study",
        "first",
        "--workers",
        "1",
    ]
    # two racing first runs; between them they run the plan's 3 queued first trials
    procs = [
        subprocess.Popen(
            [*cmd, "--trials", trials],
            cwd=tmp_path,
            env=_env(tmp_path / "home"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for trials in ("2", "1")
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    trials = _trials(url, "first")
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert all(t.state.is_finished() for t in trials)
    count = "SELECT count(*) FROM autofhe_studies"
    assert ParetoStore(url).transact(lambda conn: conn.exec_driver_sql(count).scalar()) == 1


def test_search_with_workers_reports_failed_children(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    ParetoStore(url, create=True)  # an empty autofhe database: no study "nope" in it
    assert run_workers(url, "nope", 2, 2, None, 0, None).codes == [2, 2]


# -- heartbeats and trials ended elsewhere (in-process, SQLite) ---------------------------------


def test_heartbeat_goes_on_while_the_worker_holds_the_gil(tmp_path):
    import ctypes

    from autofhe.search.run.heartbeat import Heartbeat, reap
    from autofhe.search.store.engine import make_storage

    url = f"sqlite:///{tmp_path}/h.db"
    storage = make_storage(url)
    study = optuna.create_study(study_name="h", storage=storage, directions=["maximize"])
    trial = study.ask()
    storage.set_trial_system_attr(trial._trial_id, "autofhe_worker", "host:123")
    beat = Heartbeat(url, "h", storage, interval=1, grace=3)
    try:
        beat.start(trial._trial_id)
        # libc sleep through PyDLL keeps the GIL, as concrete's key generation does: a
        # heartbeat thread of this process would be silent for 6 s, twice the grace period
        ctypes.PyDLL(None).sleep(6)
        assert reap(storage, study, 3) == []
        assert storage.get_trial(trial._trial_id).state == State.RUNNING
        beat.stop()
        time.sleep(5)  # no beats once stopped: the helper's own reaper fails it
        failed = storage.get_trial(trial._trial_id)
        assert failed.state == State.FAIL
        reason = failed.user_attrs["reason"]
        assert reason.startswith("interrupted: its worker host:123 sent no heartbeat for ")
        assert reason.endswith("; queued again")
    finally:
        beat.close()
    retries = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state == State.WAITING


def test_a_trial_whose_worker_died_before_its_first_beat_is_reaped(tmp_path):
    """Killed between ask and the first heartbeat: no heartbeat row, which Optuna's stale
    check never looks at (the trial stayed RUNNING for ever)."""
    from autofhe.search.run.heartbeat import Heartbeat
    from autofhe.search.store.engine import make_storage

    url = f"sqlite:///{tmp_path}/u.db"
    storage = make_storage(url)
    study = optuna.create_study(study_name="u", storage=storage, directions=["maximize"])
    orphan = study.ask()  # never beaten
    live = study.ask()
    beat = Heartbeat(url, "u", storage, interval=1, grace=2)  # another worker's helper
    try:
        beat.start(live._trial_id)
        deadline = time.monotonic() + 10
        while storage.get_trial(orphan._trial_id).state == State.RUNNING:
            assert time.monotonic() < deadline, "the never-beaten trial was not reaped"
            time.sleep(0.5)
        failed = storage.get_trial(orphan._trial_id)
        assert failed.state == State.FAIL
        assert (failed.datetime_complete - failed.datetime_start).total_seconds() >= 2  # grace
        assert "an unknown worker sent no heartbeat" in failed.user_attrs["reason"]
        assert storage.get_trial(live._trial_id).state == State.RUNNING  # it beats: kept
    finally:
        beat.close()
    retries = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state == State.WAITING


def test_a_trial_ended_by_another_process_is_skipped_not_a_crash(tmp_path, capsys):
    from autofhe.search.run.loop import _tell
    from autofhe.search.store.engine import make_storage

    storage = make_storage(f"sqlite:///{tmp_path}/t.db")
    study = optuna.create_study(study_name="t", storage=storage, directions=["maximize"])
    trial = study.ask()
    storage.set_trial_state_values(trial._trial_id, State.FAIL)  # a reaper took it for dead
    assert (
        _tell(study, storage, trial, [1.0], None) is None
    )  # was: ValueError: Cannot tell a FAIL trial
    assert "trial 0 was ended by another process" in capsys.readouterr().err
    assert study.trials[0].state == State.FAIL
    assert _tell(study, storage, study.ask(), [0.5], None).state == State.COMPLETE


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["studies", "--storage", "sqlite:///{tmp}/missing/x.db"], "no database file"),
        (["studies", "--storage", "sqlite:///{tmp}/typo.db"], "no database file"),
        (["studies", "--storage", "sqlite:///{tmp}/notadb.db"], "cannot read storage"),
        (["studies", "--storage", "postgresql://u@127.0.0.1:notaport/db"], "notaport"),
        (["studies", "--storage", "mysql://u@127.0.0.1/db"], "pip install pymysql"),
        (
            ["export", "--study", "s", "--storage", "sqlite:///{tmp}/typo.db", "--out", "m"],
            "no database file",
        ),
        (["worker", "--study", "s", "--storage", "sqlite:///{tmp}/typo.db"], "no database file"),
        (
            ["search", "--data", "sklearn:wine", "--storage", "postgresql://u@h:notaport/db"],
            "notaport",
        ),
        (["search", "--data", "sklearn:wine", "--workers", "0"], "--workers 0"),
    ],
)
def test_bad_storage_input_is_one_line_exit_2_and_creates_nothing(tmp_path, args, pattern):
    (tmp_path / "notadb.db").write_text("not a database\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = subprocess.run(
        [AUTOFHE, *(a.format(tmp=tmp_path) for a in args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert pattern in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "notadb.db").read_text() == "not a database\n"


@pytest.fixture()
def read_only_db(tmp_path):
    """An Optuna database this process cannot write: mode 0444 for a user; for root (whom
    permissions do not stop) the immutable flag, where the file system has one."""
    import hashlib

    path = tmp_path / "ro.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if os.geteuid() != 0:
        path.chmod(0o444)
    elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without the immutable flag")
    yield path
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # never changed


@pytest.mark.parametrize(
    "args",
    [
        ["search", "--data", "sklearn:iris", "--trials", "1"],
        ["worker", "--study", "s", "--trials", "1"],
    ],
)
def test_a_read_only_database_is_one_line_exit_2(read_only_db, args, tmp_path):
    """Was: "StorageInternalError: An exception is raised during the commit ... exceeding max
    length", exit 1."""
    result = subprocess.run(
        [AUTOFHE, *args, "--storage", f"sqlite:///{read_only_db}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "is not writable" in line and str(read_only_db) in line
    listing = subprocess.run(
        [AUTOFHE, "studies", "--storage", f"sqlite:///{read_only_db}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0 and "s " in listing.stdout  # reading still works


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ('[fixed]\nmax_epochs = "x"\n', "cannot be trained"),
        ("[fixed]\nbatch_size = -3\n", "cannot be trained"),
        ("[space]\nmax_epochs = { low = 1, high = 5, step = 0 }\n", "search space"),
        ("space = 5\n", "[space] must be a section"),
        ('fixed = "x"\n', "[fixed] must be a section"),
    ],
)
def test_a_spec_whose_trials_would_all_crash_is_refused_before_any_write(tmp_path, spec, pattern):
    (tmp_path / "bad.toml").write_text(spec)
    result = subprocess.run(
        [
            AUTOFHE,
            "search",
            "--data",
            "sklearn:wine",
            "--spec",
            "bad.toml",
            "--trials",
            "1",
            "--storage",
            f"sqlite:///{tmp_path}/s.db",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert pattern in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]  # no database written


def test_search_exit_code_reflects_its_failed_workers(tmp_path, monkeypatch, capsys):
    from autofhe import cli
    from autofhe.search.run import workers
    from autofhe.search.run.workers import Outcome

    (tmp_path / "spec.toml").write_text(SPEC)
    calls = []

    def one_worker_failed(*args, **kwargs):
        calls.append(args)
        return Outcome(codes=[0, 3], pids=[101, 102])

    monkeypatch.setattr(workers, "run_workers", one_worker_failed)
    argv = [
        "search",
        "--data",
        "sklearn:wine",
        "--spec",
        str(tmp_path / "spec.toml"),
        "--storage",
        f"sqlite:///{tmp_path}/s.db",
        "--trials",
        "2",
        "--workers",
        "2",
    ]
    assert cli.main(argv) == 3  # was 0 with a partial front
    assert len(calls) == 1
    err = capsys.readouterr().err
    assert "1 of 2 workers failed (worker 2 (pid 102) exited with code 3)" in err


def test_search_runs_one_worker_per_available_core_by_default(tmp_path, monkeypatch):
    from autofhe.cli import main
    from autofhe.cli import search as command
    from autofhe.search.run import workers
    from autofhe.search.run.workers import Outcome

    (tmp_path / "spec.toml").write_text(SPEC)
    asked = []
    monkeypatch.setattr(command, "available_cores", lambda: 3)
    monkeypatch.setattr(workers, "run_workers", lambda *a, **k: asked.append(a[2]) or Outcome())
    argv = ["search", "--data", "sklearn:wine", "--spec", str(tmp_path / "spec.toml")]
    argv += ["--storage", f"sqlite:///{tmp_path}/s.db"]
    assert main([*argv, "--timeout", "1m"]) == 0
    assert main([*argv, "--trials", "5"]) == 0
    assert main([*argv, "--trials", "2"]) == 0  # a third worker would get no trial
    assert main([*argv, "--trials", "5", "--workers", "1"]) == 0
    assert asked == [3, 3, 2, 1]


@pytest.mark.parametrize(
    ("cpu_max", "pinned", "expected"),
    [
        ("max 100000\n", {0, 1, 2, 3}, 4),  # no quota: the CPUs it is pinned to
        ("150000 100000\n", {0, 1, 2, 3}, 2),  # docker --cpus 1.5
        ("50000 100000\n", {0, 1}, 1),
        ("800000 100000\n", {5}, 1),  # pinned to one CPU, whatever the quota
        (None, {0, 1, 2}, 3),  # no cgroup v2 file
    ],
)
def test_available_cores_counts_affinity_and_container_quota(
    tmp_path, monkeypatch, cpu_max, pinned, expected
):
    import os

    from autofhe.machine import available_cores

    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: pinned)
    assert available_cores(path) == expected


def test_a_process_killed_between_queueing_the_retry_and_ending_the_trial_loses_nothing(tmp_path):
    """end_trial queues the retry first: a process SIGKILLed right after leaves the trial
    RUNNING with its retry waiting; the next to end it (a helper, a reaper) ends it and
    queues nothing twice. Queued last, a kill between the writes lost the retry."""
    from autofhe.search.run.heartbeat import end_trial, requeue

    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(storage=url, study_name="s")
    trial = study.ask()
    trial.suggest_int("x", 0, 10)
    storage = study._storage
    frozen = storage.get_trial(trial._trial_id)
    assert requeue(study, frozen)  # the first writer, killed here
    assert end_trial(storage, study, trial._trial_id, "interrupted (its worker died)")
    trials = study.get_trials()
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert trials[0].user_attrs["reason"] == "interrupted (its worker died); queued again"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].params == trials[0].params
    assert not end_trial(storage, study, trial._trial_id, "again")  # ended: nothing more
    assert len(study.get_trials()) == 2
