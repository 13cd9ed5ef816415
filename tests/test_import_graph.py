"""The package's rooms import each other in one direction only, read from the source (ast, nothing imported).

A circle between rooms (commands <-> sweep, run <-> output, the host <-> the test kit) makes
every module in it load the others and breaks the first time one of them moves; the host
importing the test kit made every command import pytest. These checks are cheap: the source is
parsed, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline_core"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["pipeline_core", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()
ROOMS = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
#: public modules that are entry points above everything (the Python API, the test kit, the
#: command's ``python -m``): they may import any room, and form a room of their own
ENTRY_POINTS = {"pipeline_core.api", "pipeline_core.testing", "pipeline_core.__main__"}


def _import_time_nodes(tree: ast.Module):
    """The import statements that run when the module is imported: not inside a function, not
    under ``if TYPE_CHECKING``."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        todo.extend(ast.iter_child_nodes(node))


def _imports(name: str) -> set[str]:
    """What ``name`` imports at import time: modules of the package, and other top-level packages."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _import_time_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            while target not in MODULES and "." in target and target.startswith("pipeline_core"):
                target = target.rpartition(".")[0]
            out.add(target)
    return out - {name}


GRAPH = {name: _imports(name) for name in MODULES}


def _room(name: str) -> str:
    if name in ENTRY_POINTS:
        return "entry points"
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "face"


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_package():
    assert {"pipeline_core.commands.cli", "pipeline_core.step", "pipeline_core.testing"} <= set(MODULES)
    assert {"pipeline_core.run.record", "pipeline_core.output.frames"} <= GRAPH["pipeline_core.run.folder"]
    assert "pytest" in GRAPH["pipeline_core.testing"]
    assert "pipeline_core.kit.contract" not in GRAPH["pipeline_core.testing"]  # imported inside check_step only


def test_no_import_circle_between_rooms():
    """Each sub-package, and the public face (the top-level modules) as one room."""
    rooms: dict[str, set[str]] = {}
    why: dict[tuple[str, str], str] = {}
    for name, targets in GRAPH.items():
        for target in targets:
            if target in MODULES and target != "pipeline_core" and _room(target) != _room(name):
                rooms.setdefault(_room(name), set()).add(_room(target))
                why.setdefault((_room(name), _room(target)), f"{name} -> {target}")
    circles = _circles(rooms)
    detail = [why[(a, b)] for c in circles for a in c for b in c if (a, b) in why]
    assert not circles, f"rooms importing each other at import time: {circles}: {detail}"


def test_no_import_circle_between_modules():
    assert not _circles({k: {t for t in v if t in MODULES} for k, v in GRAPH.items()})


def _reaches(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(GRAPH.get(name, ()))
    return seen


def test_the_host_and_the_commands_never_import_pytest():
    """Only the public test kit imports pytest (its fixtures); the kit's checks live in kit/."""
    for name in MODULES:
        if name == "pipeline_core.testing":
            continue
        reached = _reaches(name)
        assert "pytest" not in reached, f"{name} imports pytest when imported"
        assert "pipeline_core.testing" not in reached, f"{name} imports the public test kit when imported"


def test_the_public_face_imports_no_private_room_when_imported():
    """Plugins import the face; it must load without the host's rooms (api and testing, the
    entry points above everything, are the exceptions)."""
    offenders = [f"{name} -> {target}" for name, targets in GRAPH.items() if _room(name) == "face"
                 for target in targets if target in MODULES and _room(target) != "face"]
    assert not offenders, offenders
