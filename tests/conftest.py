"""Shared fixtures: small seeded datasets and the benchmark protocol's split."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import datasets
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

# Two test processes share two cores (make test): one thread each for torch and for the
# BLAS / OpenMP pools. With the default of a thread per core their threads spin against each
# other: the in-process training tests (tests/nn, compile, plan) took 103 s of wall time and
# 190 s of CPU instead of about 40 / 75.
torch.set_num_threads(1)
threadpool_limits(1)


def split(name: str):
    """The benchmark protocol: 75/25 stratified split, random_state=0, standardized."""
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    regression = name == "diabetes"
    Xtr, Xte, ytr, yte = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=None if regression else y
    )
    scaler = StandardScaler().fit(Xtr)
    return (
        scaler.transform(Xtr).astype(np.float32),
        scaler.transform(Xte).astype(np.float32),
        ytr,
        yte,
    )


@pytest.fixture(scope="session")
def breast_cancer():
    return split("breast_cancer")


@pytest.fixture(scope="session")
def wine():
    return split("wine")


@pytest.fixture(scope="session")
def digits():
    return split("digits")


@pytest.fixture(scope="session")
def diabetes():
    return split("diabetes")


@pytest.fixture()
def toy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return X, y


@pytest.fixture(scope="session")
def key_cache_config(tmp_path_factory):
    """concrete's insecure key cache: fine for tests, never for bundles."""
    from concrete import fhe

    return fhe.Configuration(
        enable_unsafe_features=True,
        use_insecure_key_cache=True,
        insecure_key_cache_location=str(tmp_path_factory.mktemp("keys")),
    )


@pytest.fixture(scope="session", autouse=True)
def cost_model_cache(tmp_path_factory):
    """A fixed cost model in a private cache: no test (nor the workers and CLI processes it
    starts) spends a minute calibrating, and the user's cache is never touched."""
    import json

    from autofhe.fhe import latency

    cache = tmp_path_factory.mktemp("autofhe-cache")
    model = latency.CostModel(
        base=0.003, per_byte=1e-8, seconds_per_unit=1e-3, seconds_per_pbs=1e-3, cores=2
    )
    (cache / f"latency-{latency._machine_key()}.json").write_text(json.dumps(model.to_json()))
    old = os.environ.get("AUTOFHE_CACHE")
    os.environ["AUTOFHE_CACHE"] = str(cache)
    latency.CACHE_DIR = cache
    yield cache
    if old is None:
        os.environ.pop("AUTOFHE_CACHE", None)
    else:
        os.environ["AUTOFHE_CACHE"] = old


def require_services() -> bool:
    """In CI (AUTOFHE_REQUIRE_SERVICES=1) a missing service is a failure, not a skip."""
    return os.environ.get("AUTOFHE_REQUIRE_SERVICES") == "1"


@pytest.fixture()
def pg_url(request):
    """A fresh database on the test server ($AUTOFHE_TEST_PG_URL, a superuser URL; `.ci/run`
    starts one), dropped afterwards. Skipped without it on a laptop, a failure in CI.

    A test marked ``restarts_postgres`` has the server to itself: it waits for the tests using
    it to end, and they wait for it (a restart cut the connections of a test beside it, and
    its database's DROP failed with AdminShutdown).
    """
    import uuid

    import sqlalchemy as sa

    base = os.environ.get("AUTOFHE_TEST_PG_URL")
    if not base:
        if require_services():
            pytest.fail("AUTOFHE_TEST_PG_URL is not set: .ci/run must start PostgreSQL")
        pytest.skip("no PostgreSQL server ($AUTOFHE_TEST_PG_URL)")
    exclusive = request.node.get_closest_marker("restarts_postgres") is not None
    with _server_lock(base, exclusive):
        name = f"w_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        yield base.rsplit("/", 1)[0] + "/" + name
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


@contextlib.contextmanager
def _server_lock(url: str, exclusive: bool):
    """A readers-writer lock on the test server, shared by the test processes (pytest-xdist):
    shared for a test that uses it, exclusive for one that restarts it. A turnstile lock,
    taken on the way in, keeps new readers out while the writer waits (flock has no queue)."""
    import fcntl
    import hashlib
    import tempfile

    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    base = Path(tempfile.gettempdir()) / f"autofhe-test-pg-{key}"
    with open(f"{base}.turnstile", "a") as turn, open(f"{base}.lock", "a") as lock:
        fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turn, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """Take concrete's exit hook off (it ends concrete's dataflow runtime, unused here).

    Once concrete has run an encrypted circuit, the hook ends the process itself: with
    status 0, so CI would take a failed run for success, and before the exit handlers
    registered ahead of concrete's import, so a test process that ran scikit-learn's estimator
    checks before its first circuit left their ``sklearn_testing_*`` directories in /tmp (4 to
    8 per run, passing runs included)."""
    import atexit
    import sys

    compiler = sys.modules.get("concrete.compiler")
    if compiler is not None:
        atexit.unregister(compiler._terminate_df_parallelization)


def pytest_collection_modifyitems(session, config, items):
    """Slow tests first (their order among themselves, and the others', unchanged): with
    several test processes the long ones start early and the short ones fill the gaps, so no
    process is left running a long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
