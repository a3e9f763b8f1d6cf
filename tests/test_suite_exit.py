"""The test suite's own exit: a failed run exits non-zero after an encrypted circuit ran (CI
must see failures), and still runs every exit handler (files other code removes at exit)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FAILING = """
import atexit
from pathlib import Path

from concrete import fhe


def test_runs_a_circuit_then_fails():
    atexit.register(lambda: Path("exit-handler-ran").write_text("yes"))

    @fhe.compiler({"x": "encrypted"})
    def add_one(x):
        return x + 1

    circuit = add_one.compile(range(4))
    assert circuit.encrypt_run_decrypt(2) == 3
    assert False, "this run must fail"
"""


def test_a_failed_run_after_a_circuit_exits_1_and_runs_the_exit_handlers(tmp_path):
    (tmp_path / "test_fails.py").write_text(FAILING)
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
            "test_fails.py",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tests), "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "1 failed" in run.stdout, run.stdout + run.stderr
    assert run.returncode == 1, run.stdout[-2000:]
    assert (tmp_path / "exit-handler-ran").read_text() == "yes"
