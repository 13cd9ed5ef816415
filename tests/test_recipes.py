"""Every recipe in recipes/: documented, valid as shipped and offline, and it really runs.

Each recipe is validated as shipped (its default model's metadata needs no download) and with
the --set flags that point it at the local MobileNetV2, through the real ``pipeline validate``
entry point; then each runs for two iterations (three for octaves) on the real MobileNetV2, cut to
one photo or one target, so the whole file stays quick on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline_core.commands.cli import main as pipeline_main
from pipeline_core.run.engine import Run
from pipeline_core.errors import RecipeError
from pipeline_core.run.progress import Progress
from pipeline_core.recipe.loader import load_recipe
from pipeline_core.testing import make_registry

from conftest import MOBILENET_SETS, RECIPES

def _is_sweep(path: Path) -> bool:
    """A sweep file (recipes/atlas.yaml) names a recipe and axes; tests/test_sweep.py covers those."""
    return "axes" in (yaml.safe_load(path.read_text(encoding="utf-8")) or {})


ALL = sorted(p.name for p in RECIPES.glob("*.yaml") if not _is_sweep(p))
try:  # the example plugin: the model recipes/best_class_ensemble.yaml adds beside the main one
    import pipeline_efficientnet.plugin as _efficientnet

    REGISTRY = make_registry(_efficientnet)
except ImportError:
    REGISTRY = make_registry()

#: every experiment the article walks through, and the recipe beyond it
EXPECTED = {
    "naive_gradient.yaml", "gradient_sign.yaml", "gradient_sign_photo.yaml", "logit_l1.yaml", "smooth_blur.yaml",
    "transform_resilience.yaml", "transform_resilience_nearest.yaml", "transform_resilience_rotation.yaml",
    "castle_from_flowers.yaml", "dalmatian_to_husky.yaml", "flowers_to_tractor.yaml",
    "flowers_to_soccer_ball.yaml", "husky_dalmatian_blend.yaml", "aux_logits.yaml", "octaves.yaml",
    "googlenet.yaml", "best_class.yaml",
}

#: what a recipe needs besides the MobileNetV2 flags to run on it (MobileNetV2 has no aux head)
EXTRA_SETS = {"aux_logits.yaml": ["steps.5.head=logits"]}


def raw(name: str) -> dict:
    return yaml.safe_load((RECIPES / name).read_text(encoding="utf-8"))


def header(name: str) -> str:
    lines = (RECIPES / name).read_text(encoding="utf-8").splitlines()
    return "\n".join(ln for ln in lines[: next(i for i, ln in enumerate(lines) if not ln.startswith("#"))])


def mobilenet_flags(mobilenet: Path) -> list[str]:
    return [s if not s.startswith("model.weights=") else f"model.weights={mobilenet}" for s in MOBILENET_SETS]


def as_set_args(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


def test_every_experiment_of_the_article_has_a_recipe():
    assert EXPECTED <= set(ALL), f"missing: {sorted(EXPECTED - set(ALL))}"


@pytest.mark.parametrize("name", ALL)
def test_header_says_what_it_shows_what_to_look_for_and_how_to_run_offline(name):
    text = header(name)
    assert "What it shows" in text and "What to look for" in text
    assert f"pipeline run recipes/{name}" in text
    for flag in ("model.name=mobilenet_v2", "model.mean=[0.5,0.5,0.5]", "model.std=[0.5,0.5,0.5]", "model.size=224"):
        assert flag in text, f"{name}: the offline command lacks {flag}"
    for extra in EXTRA_SETS.get(name, []):
        assert f"--set {extra}" in text


@pytest.mark.parametrize("name", ALL)
def test_validates_as_shipped(name, capsys):
    assert pipeline_main(["validate", str(RECIPES / name)]) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize("name", ALL)
def test_validates_offline_with_the_mobilenet_flags(name, mobilenet_path, capsys):
    sets = mobilenet_flags(mobilenet_path) + EXTRA_SETS.get(name, [])
    assert pipeline_main(["validate", str(RECIPES / name), *as_set_args(sets)]) == 0
    assert "model mobilenet_v2" in capsys.readouterr().out


def test_aux_head_is_refused_clearly_where_it_cannot_work(mobilenet_path):
    with pytest.raises(RecipeError, match="no head 'aux'"):
        load_recipe(RECIPES / "aux_logits.yaml", REGISTRY, mobilenet_flags(mobilenet_path))
    with pytest.raises(RecipeError, match="only at 299 px"):
        load_recipe(RECIPES / "aux_logits.yaml", REGISTRY, ["model.size=224"])


def test_a_many_class_many_seed_sweep_is_one_command():
    """best_class's 20 classes with --set batch=60: each class three times, from different noise."""
    recipe = load_recipe(RECIPES / "best_class.yaml", REGISTRY, ["batch=60"])
    objective = next(s for s in recipe.steps_bound if s.name == "L1-loss")
    assert recipe.plan.batch == 60 and len(set(objective.classes)) == 20
    assert all(objective.classes.count(c) == 3 for c in set(objective.classes))


def small_run_sets(name: str) -> list[str]:
    """Cut a recipe to one image and the fewest iterations it allows (octaves need one per scale); no video."""
    data = raw(name)
    iterations = 2
    sets = ["output.video=false", "device=cpu", "batch=1"]
    for i, step in enumerate(data["steps"]):
        for key in ("target", "start", "end", "images"):
            if isinstance(step.get(key), list):
                first = step[key][:1]
                if key == "images":  # --set paths are read from the shell's folder, not the recipe's
                    first = [str(RECIPES / p) for p in first]
                sets.append(f"steps.{i}.{key}={json.dumps(first)}")
        start = step.get("from")  # every step must get the chance to run
        if isinstance(start, int):
            iterations = max(iterations, start + 1)
        elif isinstance(start, float):
            iterations = max(iterations, int(1 / (1 - start)) + 1 if start < 1 else iterations)
        if step["step"] == "octave":
            iterations = max(iterations, len(step.get("scales", [0.5, 0.71, 1.0])))
    return [f"iterations={iterations}", *sets]


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_runs_a_few_iterations_on_the_real_mobilenet(name, mobilenet_path, tmp_path):
    sets = mobilenet_flags(mobilenet_path) + EXTRA_SETS.get(name, []) + small_run_sets(name)
    recipe = load_recipe(RECIPES / name, REGISTRY, sets)
    result = Run(recipe, REGISTRY, tmp_path, Progress(), device="cpu").execute()
    assert result.status == "completed", result.message
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["iterations_done"] == recipe.plan.iterations and record["model"]["name"] == "mobilenet_v2"
    assert len(record["images"]) == recipe.plan.batch
    for image in record["images"]:
        assert image["targets"], "every image records the class it was aimed at"
        assert len(image["top5"]) == 5 and image["top5"][0]["probability"] > 0
        with Image.open(tmp_path / "images" / image["file"]) as im:
            pixels = torch.from_numpy(np.array(im.convert("L"), dtype=np.float32))
        assert pixels.std() > 0.5, f"{image['file']} is a flat image"
