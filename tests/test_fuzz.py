"""Property-based fuzzing of the recipe loader: any input is accepted or refused with our error.

Three sources of input: random YAML-ish text, random nested structures, and random mutations
of a valid recipe (which get much deeper into validation than random structures do). For
each, ``load_recipe`` must either return a recipe or raise :class:`PipelineError` whose text
is one line; any other exception is a bug. The examples are derandomised, so the suite gives
the same result on every run, and no example database is written into the repository.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_core.errors import PipelineError
from pipeline_core.recipe.loader import load_recipe
from pipeline_core.testing import make_registry
from pipeline_core.recipe.source import Override

REGISTRY = make_registry()
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

#: Words recipes use, so random structures hit real keys and step names often.
WORDS = ["iterations", "seed", "device", "batch", "model", "name", "weights", "mean", "std", "size", "categories",
         "kwargs", "steps", "step", "output", "performance", "video", "frame_every", "fps", "checkpoint_every",
         "writers", "writer", "target", "head", "from", "until", "every", "on", "image", "view", "lr", "kernel",
         "sigma", "sizes", "scales", "split", "start", "end", "images", "threads", "precision", "tiny-test-model",
         "mobilenet_v2", *sorted(REGISTRY.steps)]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WORDS),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.sampled_from(["75%", "150%", "-3%", "%", "0.5", "cuda:0", "cpu", "auto", "1e999", "castle"]),
)
keys = st.one_of(st.sampled_from(WORDS), st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
                 st.integers(-3, 3))
structures = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=6)),
    max_leaves=30,
)

VALID: dict[str, Any] = {
    "iterations": 6,
    "seed": 1,
    "device": "cpu",
    "batch": 2,
    "model": {"name": "tiny-test-model"},
    "steps": [
        {"step": "init-noise", "scale": 0.1, "offset": 0.5, "size": 32},
        {"step": "color-jitter", "brightness": 0.1, "hue": 0.05, "until": 0.5},
        {"step": "rotate", "degrees": 10, "on": "view"},
        {"step": "interpolate", "sizes": [32, 24], "every": 2},
        {"step": "blur", "kernel": 3, "from": "25%"},
        {"step": "target-blend", "start": 1, "end": [2, 3]},
        {"step": "adam", "lr": 0.05, "betas": [0.9, 0.99]},
    ],
    "output": {"video": False, "frame_every": 2, "checkpoint_every": 3},
    "performance": {"precision": "fp32", "threads": 1},
}


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _parent(root: Any, path: tuple) -> Any:
    for part in path[:-1]:
        root = root[part]
    return root


@st.composite
def mutations(draw) -> dict[str, Any]:
    """The valid recipe with one to four random edits: replace, delete, add a key, rename a step."""
    recipe = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(recipe) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(recipe, path)
        op = draw(st.sampled_from(["replace", "replace", "delete", "add", "rename"]))
        if op == "replace":
            parent[path[-1]] = draw(structures)
        elif op == "delete":
            del parent[path[-1]]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(structures)
        elif op == "add" and isinstance(parent, list):
            parent.insert(draw(st.integers(0, len(parent))), draw(structures))
        elif op == "rename" and isinstance(recipe.get("steps"), list) and recipe["steps"]:
            index = draw(st.integers(0, len(recipe["steps"]) - 1))
            if isinstance(recipe["steps"][index], dict):
                recipe["steps"][index]["step"] = draw(st.sampled_from(sorted(REGISTRY.steps)))
    return recipe


def loads_or_refuses(text: str, folder: Path, overrides: tuple[str, ...] = ()) -> None:
    path = folder / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_recipe(path, REGISTRY, overrides)
    except PipelineError as exc:
        assert "\n" not in str(exc), str(exc)  # the command line prints it as one line
        assert str(exc).strip()


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def test_the_valid_recipe_is_valid(tmp_path):
    recipe = load_recipe(_write(tmp_path, dump(VALID)), REGISTRY)
    assert recipe.plan.batch == 2 and len(recipe.steps) == 7


def _write(folder: Path, text: str) -> Path:
    path = folder / "valid.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("abc:-[]{}&*!|>'\"#%@`,?\n\t 01."))
               | st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_random_text(text, tmp_path):
    loads_or_refuses(text, tmp_path)


@FUZZ
@given(data=structures)
def test_random_structures(data, tmp_path):
    loads_or_refuses(dump(data), tmp_path)


@FUZZ
@given(recipe=mutations())
def test_mutations_of_a_valid_recipe(recipe, tmp_path):
    loads_or_refuses(dump(recipe), tmp_path)


@FUZZ
@given(key=st.lists(st.sampled_from(WORDS) | st.integers(0, 9).map(str), min_size=1, max_size=3).map(".".join),
       value=st.text(st.characters(blacklist_categories=("Cs",)), max_size=12) | structures.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()))
def test_random_overrides(key, value, tmp_path):
    text = f"{key}={value}".replace("\n", " ")
    loads_or_refuses(dump(VALID), tmp_path, (text, Override(f"seed={value}", f"--seed {value}")))


def test_nan_and_infinity_survive_as_our_error(tmp_path):
    for value in (math.nan, math.inf, -math.inf):
        recipe = copy.deepcopy(VALID)
        recipe["steps"][-1]["lr"] = value
        loads_or_refuses(dump(recipe), tmp_path)
