"""The README's shell commands, run in order on a fresh copy of the project.

Every line of every ```bash block is a command, in the README's order (comment-only lines and
trailing comments are dropped). Commands run with bash in a temporary copy of the project's
tracked files, the virtual environment's ``autofhe`` and ``python`` first on PATH and the
copy's package on PYTHONPATH. A trailing ``&`` starts a server in the background (ready when
it prints its first line) and ``kill %1`` stops it.

Long commands (``make``, searches, workers, the dashboard, benchmarks: minutes each, or until
stopped) run only with ``AUTOFHE_README_LONG=1``. Without it, ``make demo`` is replaced by its
short stand-in ``autofhe demo --trials 1``, which creates the same study, so every command
after it runs as written; the long ones are still parsed by the CLI (a wrong option fails).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: the README's commands on a fresh copy (make check leaves it out)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LONG = os.environ.get("AUTOFHE_README_LONG") == "1"
#: prefixes of the commands that take minutes (or run until stopped)
LONG_PREFIXES = (
    "make ",
    "autofhe search",
    "autofhe worker",
    "autofhe demo",
    "autofhe dashboard",
    ".venv/bin/python benchmarks/",
)
STAND_INS = {"make demo": "autofhe demo --trials 1"}
#: what a command's stdout must hold (the demo: a default search, no spec, then its front and
#: the commands the Deploy section runs)
EXPECTED_OUTPUT = {
    "autofhe demo --trials 1": (
        "demo: autofhe search --data sklearn:breast_cancer --trials 1",
        "Pareto front of 'breast_cancer-accuracy'",
        "export:   autofhe export --study breast_cancer-accuracy",
        "predict:  autofhe predict --model model/ --data rows.npy --fhe execute",
    ),
    "autofhe serve --model model/ --port 8000": ("of evaluation keys once",),
}
ACTIVATE = ". .venv/bin/activate"


def readme_commands(text: str) -> list[str]:
    """The shell commands of ``text``'s ```bash blocks, in order."""
    commands = []
    # fences may be indented (a block inside a list item)
    for block in re.findall(r"^[ \t]*```bash\n(.*?)^[ \t]*```", text, flags=re.M | re.S):
        for line in block.splitlines():
            # the first `#` after whitespace outside quotes starts a comment
            words = shlex.split(line, comments=True)
            if words:
                commands.append(_code(line, words))
    return commands


def _code(line: str, words: list[str]) -> str:
    """``line`` without its trailing comment (the shortest prefix holding all ``words``)."""
    for match in re.finditer(r"\s#", line):
        try:
            if shlex.split(line[: match.start()]) == words:
                return line[: match.start()].strip()
        except ValueError:  # the `#` is inside an open quote
            continue
    return line.strip()


def is_long(command: str) -> bool:
    return command.startswith(LONG_PREFIXES)


def _fresh_copy(dest: Path) -> Path:
    """The project's tracked files (what a clone holds), copied to ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    names = [n for n in listed.stdout.split("\0") if n] if listed.returncode == 0 else []
    if not names:  # not a git checkout: everything but local state
        ignore = shutil.ignore_patterns(".git", ".venv", "*.db", "__pycache__", ".*cache")
        shutil.copytree(ROOT, dest, ignore=ignore)
        return dest
    for name in names:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_readme_commands_are_found_in_order_and_parse():
    """The extraction sees the story in order, and every autofhe command (long ones too)
    is accepted by the CLI's parser as written."""
    from autofhe.cli import build_parser

    commands = readme_commands((ROOT / "README.md").read_text())
    first = {c.split(" --")[0]: i for i, c in reversed(list(enumerate(commands)))}
    assert first["make demo"] < first["autofhe export"] < first["autofhe predict"]
    assert first["autofhe serve"] < first["autofhe remote-predict"] < commands.index("kill %1")
    assert "autofhe export --study breast_cancer-accuracy --out model/" in commands
    parser = build_parser()
    for command in commands:
        if command.startswith("autofhe "):
            words = shlex.split(command.removesuffix("&"))
            try:
                parser.parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"the README's `{command}` is not a valid autofhe command")


def test_make_demo_is_autofhe_demo():
    """One demo: the Makefile's target runs the command the README's quick start describes."""
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.M)
    assert recipe and recipe.group(1).split() == ["$(BIN)/autofhe", "demo"]


def _expected_failure(command: str) -> str | None:
    """What a command prints when it fails for a documented, known reason here."""
    if "--plot" in command and importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed"  # an optional dependency, not installed here
    return None


def _start(command: str, cwd: Path, env: dict) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()  # `serve` prints its address once it listens
    if not line:
        proc.wait(timeout=30)
        pytest.fail(f"`{command}` stopped: {proc.stderr.read()[-2000:]}")
    return proc, line


@pytest.mark.slow
def test_readme_commands_run_in_order_on_a_fresh_copy(tmp_path):
    copy = _fresh_copy(tmp_path / "autofhe")
    env = {k: v for k, v in os.environ.items() if k != "AUTOFHE_STORAGE"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(copy)
    where = subprocess.run(
        ["bash", "-c", "python -c 'import autofhe; print(autofhe.__file__)'"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip() == str(copy / "autofhe" / "__init__.py"), where.stderr
    background: list[subprocess.Popen] = []
    ran = []
    try:
        for command in readme_commands((ROOT / "README.md").read_text()):
            if command == ACTIVATE:
                if LONG:  # what sourcing it does for the commands that follow
                    env["PATH"] = f"{copy / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
                continue
            if is_long(command) and not LONG:
                if command not in STAND_INS:
                    continue
                command = STAND_INS[command]
            if command.endswith("&"):
                proc, line = _start(command[:-1].strip(), copy, env)
                for text in EXPECTED_OUTPUT.get(command[:-1].strip(), ()):
                    assert text in line, line
                background.append(proc)
                ran.append(command)
                continue
            if command == "kill %1":
                background.pop(0).terminate()
                ran.append(command)
                continue
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=copy,
                env=env,
                capture_output=True,
                text=True,
                timeout=None if LONG else 900,
            )
            expected = _expected_failure(command)
            if expected:
                assert result.returncode != 0 and expected in result.stderr, result.stderr
            else:
                assert result.returncode == 0, f"`{command}` failed:\n{result.stderr[-3000:]}"
            for text in EXPECTED_OUTPUT.get(command, ()):
                assert text in result.stdout, f"`{command}` printed:\n{result.stdout}"
            ran.append(command)
    finally:
        for proc in background:
            proc.terminate()
            proc.wait(timeout=30)
    # the deploy story ran to its end: encrypted predictions written, keys kept, server stopped
    assert "kill %1" in ran and (copy / "preds.npy").is_file() and (copy / "keys").is_dir()
