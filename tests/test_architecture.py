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
LAYERS = ("errors", "params", "units", "machine", "data", "fhe", "nn", "search", "cli")
#: CLI commands that train (and so may import torch).
TRAINING_COMMANDS = {"cmd_demo", "cmd_search", "cmd_worker", "run"}
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
    assert "autofhe.search.run.study" not in names  # imports the training objective


# -- modules: no cycle anywhere, no private name taken from another module ------------------


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name_in(root, p): p for p in root.rglob("*.py")}


def _module_name_in(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere: functions included). ``from
    autofhe.search import record`` names the module ``autofhe.search.record``; the packages
    whose ``__init__`` an import passes through are left out (they import nothing here)."""
    modules = _modules(root)
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        named = {
            n
            for n in _imports_any(tree, module, path.name == "__init__.py")
            if n.split(".")[0] == root.name
        }
        targets = set()
        for name in named:
            while name and name not in modules:
                name = name.rpartition(".")[0]  # a name inside a module: the module
            if name and name != module and not modules[name].name == "__init__.py":
                targets.add(name)
        graph[module] = targets
    return graph


def _imports_any(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + is_package]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{alias.name}" for alias in node.names}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def private_imports(root: Path = ROOT) -> list[str]:
    """``module: name`` for every private name (``_x``, not dunder) one module takes from
    another: ``from a.b import _x``, or ``b._x`` on a module bound by an import."""
    modules = _modules(root)
    found = []
    for module, path in sorted(modules.items()):
        tree = ast.parse(path.read_text(), str(path))
        bound = {}  # local name -> module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in modules:
                        bound[alias.asname or alias.name] = full
                    elif node.module in modules and node.module != module:
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            found.append(f"{module}: {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in modules:
                        bound[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and bound[node.value.id] != module
            ):
                found.append(f"{module}: {bound[node.value.id]}.{node.attr}")
    return sorted(set(found))


def test_no_import_cycle_between_modules():
    assert cycles(module_graph()) == []


def test_no_module_takes_another_ones_private_names():
    assert private_imports() == []


def _fixture_package(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from pkg.sub.b import helper\n")
    # the cycle closes inside a function, through the package's import form
    (pkg / "sub" / "b.py").write_text(
        "def helper():\n    from pkg.sub import a\n    return a._secret\n"
    )
    (pkg / "sub" / "c.py").write_text("from pkg.sub.b import _hidden\n")
    return pkg


def test_the_module_checks_find_a_cycle_and_private_names(tmp_path):
    pkg = _fixture_package(tmp_path)
    assert cycles(module_graph(pkg)) == [["pkg.sub.a", "pkg.sub.b"]]
    assert private_imports(pkg) == ["pkg.sub.b: pkg.sub.a._secret", "pkg.sub.c: pkg.sub.b._hidden"]


# -- docs/ARCHITECTURE.md names the modules as they are -------------------------------------

ARCHITECTURE = ROOT.parent / "docs" / "ARCHITECTURE.md"


def _named_in_architecture() -> set[str]:
    """Module paths the page names: ``autofhe/...py`` in full, ``fhe/x.py`` from the package's
    root, or ``name.py`` / ``sub/name.py`` after its folder on the same line or under the
    section heading of its folder (``## search/...``)."""
    import re

    named, folder = set(), None
    for line in ARCHITECTURE.read_text().splitlines():
        heading = re.match(r"## (\w+(?:/\w+)*)/", line)
        if heading:
            folder = f"autofhe/{heading.group(1)}"
        elif line.startswith("## "):
            folder = None
        here = folder
        for ref in re.findall(r"`(autofhe/[\w/]+/|[\w/]+\.py)", line):
            if ref.endswith("/"):  # a folder: the bare names after it on this line are in it
                here = ref.rstrip("/")
            elif ref.startswith("autofhe/"):
                named.add(ref)
            elif "/" in ref and (ROOT / ref.split("/")[0]).is_dir():  # ``fhe/program.py``
                named.add(f"autofhe/{ref}")
            elif "/" in ref and here is None:  # ``tests/...``: not a module of the package
                continue
            elif here is not None:
                named.add(f"{here}/{ref}")
    return named


def test_architecture_page_names_every_module_and_only_real_ones():
    real = {
        str(p.relative_to(ROOT.parent))
        for p in ROOT.rglob("*.py")
        if p.name != "__init__.py" or p.parent.name == "cli"
    }
    named = _named_in_architecture()
    assert sorted(named - real) == [], "named in docs/ARCHITECTURE.md but missing"
    assert sorted(real - named) == [], "modules docs/ARCHITECTURE.md does not name"
