"""The Optuna-free `autofhe studies` listing agrees with Optuna's own reading of the file."""

from __future__ import annotations

import math
import subprocess
import sys

import optuna
import pytest

from autofhe.search.price.feasibility import record_constraints
from autofhe.search.store.summary import front_size, optuna_summaries, sqlite_summaries


@pytest.mark.parametrize(
    "points, size",
    [
        ([], 0),
        ([(0.9, 1.0)], 1),
        ([(0.9, 1.0), (0.9, 1.0)], 1),  # equal points count once
        ([(0.9, 1.0), (0.9, 2.0)], 1),  # same metric, slower: dominated
        ([(0.9, 1.0), (0.8, 1.0)], 1),  # same latency, lower metric: dominated
        ([(0.9, 1.0), (0.8, 0.5), (0.7, 0.1), (0.6, 0.2)], 3),
        ([(0.9, math.inf), (0.8, 0.5)], 2),
    ],
)
def test_front_size(points, size):
    assert front_size(points) == size


def _study(url: str, name: str, values, source=None, metric="accuracy"):
    study = optuna.create_study(study_name=name, storage=url, directions=["maximize", "minimize"])
    study.set_metric_names([metric, "fhe_latency_s"])
    if source:
        study.set_user_attr("autofhe_source", source)
    for value, violation in values:
        trial = study.ask()
        if value == "fail":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        if value == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        record_constraints(trial, {"latency": violation, "compile": 0.0})
        study.tell(trial, list(value))
    study.ask()  # one RUNNING trial


def test_sqlite_listing_equals_optunas(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _study(
        url,
        "a-accuracy",
        [
            ((0.9, 0.5), 0.0),
            ((0.95, 0.2), 1.5),  # infeasible: would dominate everything
            ((0.9, 0.5), 0.0),  # the same point again
            ((0.8, 0.1), 0.0),
            ((0.7, 0.3), 0.0),  # dominated
            ((0.6, math.inf), 0.0),
            ("fail", 0),
            ("pruned", 0),
        ],
        source="/data/a.npy",
    )
    _study(url, "b-r2", [((-math.inf, 0.2), 0.0), ((0.3, 0.05), 0.0)], metric="r2")
    _study(url, "empty", [])
    fast = sqlite_summaries(url)
    assert fast == optuna_summaries(url)
    assert [r["front"] for r in fast] == [2, 1, 0]
    assert fast[0]["trials"] == 9 and fast[0]["source"] == "/data/a.npy"


def test_not_an_optuna_file_falls_back(tmp_path):
    (tmp_path / "x.db").write_bytes(b"not a database at all")
    assert sqlite_summaries(f"sqlite:///{tmp_path}/x.db") is None
    assert sqlite_summaries(f"sqlite:///{tmp_path}/missing.db") is None
    assert not (tmp_path / "missing.db").exists()  # read-only: nothing created
    assert sqlite_summaries("postgresql://u@127.0.0.1/db") is None


def test_studies_command_imports_no_optuna(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    _study(url, "a-accuracy", [((0.9, 0.5), 0.0)])
    code = (
        "import sys; from autofhe.cli import main; code = main(['studies', '--storage', "
        f"{url!r}]); print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('optuna', 'sqlalchemy', 'torch', 'numpy'))); sys.exit(code)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "a-accuracy" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"
