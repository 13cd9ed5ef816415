"""``pipeline schema``: the JSON Schema editors use accepts every shipped recipe and rejects bad ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from conftest import RECIPES, run_cli
from pipeline_core.recipe.schema import recipe_schema

jsonschema = pytest.importorskip("jsonschema", reason="install the test extra: pip install '.[test]'")

ROOT = Path(__file__).resolve().parents[1]
#: every shipped recipe, recipes/inside/ too; sweep files (a recipe plus axes) are not recipes
SHIPPED = sorted(p for p in RECIPES.glob("**/*.yaml") if "axes" not in (yaml.safe_load(p.read_text()) or {}))


@pytest.fixture(scope="module")
def validator(registry):
    schema = recipe_schema(registry)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator, data) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_recipe_matches_the_schema(path, validator):
    assert _errors(validator, yaml.safe_load(path.read_text(encoding="utf-8"))) == []


GOOD = {
    "iterations": 10,
    "model": {"name": "mobilenet_v2", "mean": [0.5, 0.5, 0.5]},
    "steps": [
        {"step": "init-noise", "size": 64},
        {"step": "blur", "kernel": 3, "until": "75%"},
        {"step": "L1-loss", "target": "castle", "lambda": 0.002},
        {"step": "gradient-step", "lr": 0.1},
    ],
}


def _change(path: tuple, value) -> dict:
    data = copy.deepcopy(GOOD)
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize("data, where", [
    (_change(("steps", 1, "step"), "blurr"), "steps/1/step"),               # unknown step
    (_change(("steps", 1, "kernal"), 3), "steps/1"),                        # unknown key of a step
    (_change(("steps", 1, "kernel"), "three"), "steps/1/kernel"),           # wrong type
    (_change(("steps", 1, "until"), [0.5]), "steps/1/until"),               # schedule keys are typed too
    (_change(("steps", 3), {"lr": 0.1}), "steps/3"),                        # no 'step' key
    (_change(("iterations",), 0), "iterations"),
    (_change(("model", "mean"), [0.5]), "model/mean"),
    (_change(("itarations",), 10), ""),                                     # unknown top-level key
    (_change(("steps",), []), "steps"),
])
def test_the_schema_rejects_bad_recipes(data, where, validator):
    assert _errors(validator, GOOD) == []
    errors = _errors(validator, data)
    assert errors, "the schema accepted a bad recipe"
    assert any(e.split(":")[0] == where for e in errors), errors


@pytest.mark.slow
def test_the_cli_writes_a_schema_with_installed_plugin_steps(tmp_path):
    out = tmp_path / "recipe.schema.json"
    result = run_cli("schema", "--out", str(out))
    assert result.returncode == 0, result.stderr
    schema = json.loads(out.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    steps = schema["properties"]["steps"]["items"]["properties"]["step"]["enum"]
    assert {"blur", "L1-loss", "init-noise"} <= set(steps)
    from pipeline_core.host.manager import build_registry

    installed = build_registry()  # the same environment as the subprocess
    assert set(steps) == set(installed.steps)
    writers = schema["$defs"]["OutputSection"]["properties"]["writers"]["items"]["properties"]["writer"]
    assert set(writers.get("enum", [])) == set(installed.writers)
    if "total-variation" in installed.steps:  # the example plugin package is installed
        validator = jsonschema.Draft202012Validator(schema)
        for path in sorted((ROOT / "examples").glob("*/recipes/*.yaml")):
            assert _errors(validator, yaml.safe_load(path.read_text(encoding="utf-8"))) == [], path
        bad = _change(("steps", 2), {"step": "total-variation", "power": 3})
        assert any(e.startswith("steps/2/power") for e in _errors(validator, bad))
        bad = {**GOOD, "output": {"writers": [{"writer": "gif", "tile": 2}]}}
        assert any(e.startswith("output/writers/0/tile") for e in _errors(validator, bad))
