"""Wall time of `autofhe --help` and `autofhe studies`, next to `python -c pass`.

Each command runs as a user runs it (a new process of the installed entry point), several
times; the median and the slowest run are printed, with the machine's load average, since a
busy machine slows every process alike; the CPU time (user + system) of the same runs depends
much less on the load. `studies` reads a small SQLite study (6 trials) built
in a temporary directory.

    python benchmarks/cli_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AUTOFHE = str(Path(sys.executable).with_name("autofhe"))
LIMIT_S = 1.0


def _build_study(url: str) -> None:
    import optuna

    from autofhe.search import record

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="bench-accuracy", storage=url, directions=["maximize", "minimize"]
    )
    study.set_metric_names(["accuracy", "fhe_latency_s"])
    for i in range(6):
        trial = study.ask()
        trial.set_constraint("latency", 0.0 if i % 2 else 0.5)
        record.write(trial, reason="" if i % 2 else "latency: over the limit")
        study.tell(trial, [0.8 + i / 50, 0.1 * (i + 1)])


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(cmd: list[str], repeat: int, cwd: str) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each run."""
    wall, cpu = [], []
    for _ in range(repeat):
        c0, t0 = _cpu(), time.perf_counter()
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        wall.append(time.perf_counter() - t0)
        cpu.append(_cpu() - c0)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per command (default 7)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/autofhe.db"
        _build_study(url)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "autofhe --help": [AUTOFHE, "--help"],
            "autofhe studies": [AUTOFHE, "studies", "--storage", url],
        }
        load = os.getloadavg()[0]
        print(f"load average {load:.2f} on {os.cpu_count()} cores; {args.repeat} runs each")
        print(f"{'command':<18} {'wall median s':>14} {'wall max s':>11} {'CPU median s':>13}")
        over = []
        for name, cmd in commands.items():
            wall, cpu = _time(cmd, args.repeat, tmp)
            median = statistics.median(wall)
            print(f"{name:<18} {median:>14.3f} {max(wall):>11.3f} {statistics.median(cpu):>13.3f}")
            if name.startswith("autofhe") and median >= LIMIT_S:
                over.append(name)
    if over:
        print(f"over {LIMIT_S} s (median): {', '.join(over)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
