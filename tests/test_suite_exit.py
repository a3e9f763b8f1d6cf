"""The test suite's own exit: a run keeps its status after an encrypted circuit ran (CI must
see failures), and every exit handler still runs, those registered before concrete's import
included (scikit-learn's checks remove their temporary directories so)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

A_CIRCUIT_THEN = """
import atexit
from pathlib import Path


def test_runs_a_circuit():
    # registered before concrete's import, as a check run before a process's first circuit
    atexit.register(lambda: Path("exit-handler-ran").write_text("yes"))
    from concrete import fhe

    @fhe.compiler({{"x": "encrypted"}})
    def add_one(x):
        return x + 1

    circuit = add_one.compile(range(4))
    assert circuit.encrypt_run_decrypt(2) == 3
    assert {outcome}
"""


@pytest.mark.parametrize(("outcome", "status"), [("True", 0), ("False", 1)])
def test_a_run_after_a_circuit_keeps_its_status_and_runs_every_exit_handler(
    tmp_path, outcome, status
):
    (tmp_path / "test_circuit.py").write_text(A_CIRCUIT_THEN.format(outcome=outcome))
    tests = Path(__file__).parent
    run = subprocess.run(
        # the project's conftest as a plugin, in a directory of its own
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "conftest",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "test_circuit.py",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tests), "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ("1 passed" if status == 0 else "1 failed") in run.stdout, run.stdout + run.stderr
    assert run.returncode == status, run.stdout[-2000:]
    assert (tmp_path / "exit-handler-ran").read_text() == "yes"
