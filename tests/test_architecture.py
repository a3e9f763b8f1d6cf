"""The package's layering: imports run one way, and only training imports torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import autofhe

ROOT = Path(autofhe.__file__).parent
#: Lowest first: a layer may import itself and the layers before it, never one after it.
LAYERS = ("errors", "params", "units", "data", "fhe", "nn", "search", "cli")
#: CLI commands that train (and so may import torch).
TRAINING_COMMANDS = {"_cmd_demo", "_cmd_search", "_cmd_worker", "_run"}
HEAVY = ("torch", "brevitas", "skorch")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every autofhe module named by an import anywhere in ``tree`` (functions included)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = module.split(".")[: len(module.split(".")) - node.level + is_package]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "autofhe" or name.startswith("autofhe.")}


def _layer(module: str) -> str | None:
    """The layer of an autofhe module (None for the top-level package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def import_graph() -> dict[str, set[str]]:
    """Layer -> layers its modules import (top-level package ``autofhe`` left out)."""
    graph: dict[str, set[str]] = {layer: set() for layer in LAYERS}
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        source = _layer(module)
        if source is None:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for target in map(_layer, _imports(tree, module, path.name == "__init__.py")):
            if target is not None and target != source:
                graph[source].add(target)
    return graph


def test_every_subpackage_has_a_layer():
    names = {p.name.removesuffix(".py") for p in ROOT.iterdir() if not p.name.startswith("_")}
    names -= {"__pycache__", "py.typed"}
    assert names <= set(LAYERS), sorted(names - set(LAYERS))


def test_imports_run_one_way_errors_data_fhe_nn_search_cli():
    graph = import_graph()
    upward = sorted(
        (source, target)
        for source, targets in graph.items()
        for target in targets
        if LAYERS.index(target) > LAYERS.index(source)
    )
    assert upward == [], f"imports against the layering (layer -> higher layer): {upward}"


def test_no_import_cycle_between_subpackages():
    graph = import_graph()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start] - seen:
            if nxt == goal or reaches(nxt, goal, seen | {nxt}):
                return True
        return False

    cycles = sorted(layer for layer in LAYERS if reaches(layer, layer, set()))
    assert cycles == [], f"subpackages on an import cycle: {cycles}"


def test_the_graph_reader_sees_function_level_and_relative_imports():
    """The checks above would be blind if the reader missed imports inside functions."""
    tree = ast.parse("def f():\n    from autofhe.nn.module import QuantMLP\n")
    assert "autofhe.nn.module" in _imports(tree, "autofhe.fhe.x", False)
    relative = ast.parse("from ..nn import module\n")
    assert "autofhe.nn" in _imports(relative, "autofhe.fhe.program", False)


def _cli_command_imports() -> set[str]:
    """Modules the CLI imports at module level or in a command that does not train."""
    body = [node for p in (ROOT / "cli").glob("*.py") for node in ast.parse(p.read_text()).body]
    modules = set()
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name in TRAINING_COMMANDS:
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom) and sub.module and not sub.level:
                modules.add(sub.module)
            elif isinstance(sub, ast.Import):
                modules |= {alias.name for alias in sub.names}
    return {m for m in modules if m.startswith("autofhe")}


def _light_modules() -> list[str]:
    fhe = sorted(_module_name(p) for p in (ROOT / "fhe").glob("*.py"))
    return [
        "autofhe",
        "autofhe.errors",
        "autofhe.params",
        "autofhe.units",
        *fhe,
        *sorted(_cli_command_imports()),
    ]


@pytest.mark.parametrize("module", _light_modules())
def test_module_imports_without_torch(module):
    """The client side, bundles, serving and every command that does not train run without
    torch (4-5 s of import and hundreds of MB): importing them must not load it."""
    code = (
        f"import sys, {module}\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stdout, (module, out.stdout)


def test_cli_commands_that_do_not_train_are_checked():
    """The list above covers what export, predict, serve and remote-predict import."""
    names = _cli_command_imports()
    assert {"autofhe.fhe.deploy", "autofhe.fhe.serve", "autofhe.fhe.bundle"} <= names
    assert "autofhe.search.study" not in names  # imports the training objective
