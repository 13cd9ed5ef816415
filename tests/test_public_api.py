"""The plugin API is exactly what hookspecs.PUBLIC_API promises, importable from where it says.

Internals move (they did once, into sub-packages); these tests make sure no such move can break
a plugin, and that nothing becomes public by accident.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_core.hookspecs import PUBLIC_API

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", sorted(PUBLIC_API))
def test_every_promised_name_imports_from_its_documented_module(module):
    # a fresh interpreter: an import that only works because another module was imported first fails here
    names = ", ".join(n for n in PUBLIC_API[module] if n != "__version__")
    code = f"from {module} import {names}" if names else f"import {module}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("module", sorted(PUBLIC_API))
def test_each_module_offers_exactly_the_promised_names(module):
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC_API[module])
    assert all(hasattr(mod, name) for name in mod.__all__)


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


@pytest.mark.parametrize("module", sorted(m for m in PUBLIC_API if m != "pipeline_core"))
def test_whatever_a_public_module_defines_is_promised_or_private(module):
    path = ROOT / (module.replace(".", "/") + ".py")
    defined = {n for n in _top_level_names(path) if not n.startswith("_")}
    unpromised = defined - set(PUBLIC_API[module])
    assert not unpromised, f"{module} defines {sorted(unpromised)}: add them to PUBLIC_API or make them private (_name)"


def test_the_private_rooms_are_sub_packages_and_the_face_is_the_api():
    top = {p.stem for p in (ROOT / "pipeline_core").glob("*.py")} - {"__init__", "__main__"}
    assert {f"pipeline_core.{m}" for m in top} == set(PUBLIC_API) - {"pipeline_core"}
    rooms = {p.name for p in (ROOT / "pipeline_core").iterdir() if (p / "__init__.py").is_file()}
    assert rooms == {"recipe", "run", "output", "host", "commands", "sweep", "scoring", "kit"}


def test_the_built_in_plugins_use_only_the_public_api():
    """Built-ins register like third-party plugins, and import like them too."""
    offenders = []
    paths = sorted((ROOT / "plugins").rglob("*.py"))
    assert len(paths) > 30  # every step module, in the folders of their kinds
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline_core"):
                promised = PUBLIC_API.get(node.module)
                bad = [a.name for a in node.names if promised is None or a.name not in promised]
                if bad:
                    offenders.append(f"{path.relative_to(ROOT)}: from {node.module} import {', '.join(bad)}")
    assert not offenders, offenders


def test_the_plan_and_schedule_steps_are_handed_are_public_and_the_old_paths_still_give_them():
    """bind(plan) and self.schedule were typed by classes in the private recipe room (API 1.6)."""
    from pipeline_core.plan import Plan
    from pipeline_core.recipe.plan import Plan as OldPlan
    from pipeline_core.recipe.schedule import Schedule as OldSchedule
    from pipeline_core.schedule import Schedule

    assert OldPlan is Plan and OldSchedule is Schedule
    plan = Plan(iterations=4, batch=2, categories=["cat", "dog"], model_name="m", model_size=32, seed=0)
    assert plan.per_image("dog") == [1, 1] and Schedule.always(4).progress(3) == 1.0
