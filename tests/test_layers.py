"""Looking inside the model end to end: ``pipeline layers``, layer paths checked where the
recipe names them, the recipes of recipes/inside/, and a run with only layer objectives through
everything a run makes (run.json, video, final images, validate, resume and replay).

The recipes are tested as recipes/ are in test_recipes.py: documented, valid as shipped, and
run for a few iterations on the real MobileNetV2 with the very --set flags their header gives,
on small images so the file stays quick on a CPU.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline_core.commands.cli import main as pipeline_main
from pipeline_core.recipe.loader import load_recipe
from pipeline_core.run.engine import Run
from pipeline_core.run.progress import Progress
from pipeline_core.testing import make_registry, run_recipe_dict, tiny_recipe

from conftest import MOBILENET, RECIPES, ROOT, run_cli
from test_resume import SelfSignalPlugin, pngs, resume, run, with_signal

INSIDE = RECIPES / "inside"
ALL = sorted(p.name for p in INSIDE.glob("*.yaml"))
REGISTRY = make_registry()
#: what cuts a recipe's batch for the quick run (its per-image lists must still fit the batch)
SMALLER = {"mobilenet_channels.yaml": ["batch=4", "steps.4.channel=0-3"]}


def header(name: str) -> str:
    lines = (INSIDE / name).read_text(encoding="utf-8").splitlines()
    return "\n".join(ln for ln in lines[: next(i for i, ln in enumerate(lines) if not ln.startswith("#"))])


def offline_sets(name: str, mobilenet: Path) -> list[str]:
    """The --set values of the header's offline command, with the weights' real path."""
    text = header(name)
    command = " ".join(ln.lstrip("#").strip().rstrip("\\").strip()
                       for ln in text.splitlines()[text.splitlines().index(next(
                           ln for ln in text.splitlines() if "pipeline run recipes/inside/" in ln)):])
    words = shlex.split(command)
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    return [f"model.weights={mobilenet}" if s.startswith("model.weights=") else s for s in sets]


# -- pipeline layers ---------------------------------------------------------------------------


@pytest.mark.slow
def test_layers_lists_every_path_type_shape_and_channel_count_of_the_real_model(mobilenet_path):
    proc = run_cli("layers", f"mobilenet_v2,weights={mobilenet_path},mean=0.5,std=0.5,size=224", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("mobilenet_v2: 212 layers") and "224x224" in lines[0]
    assert lines[-1].startswith("note: all 52 BatchNorm2d layers are folded")  # these weights have none left
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[2:-1]}
    assert rows["features.14.conv.0"] == ["Conv2dNormActivation", "576", "576x14x14"]
    assert rows["features.10"] == ["InvertedResidual", "64", "64x14x14"]
    assert rows["classifier.1"] == ["Linear", "1000", "1000"]
    assert len(rows) == 212


def test_layers_of_a_model_without_its_weights_json_and_match(capsys):
    """InceptionV3 is listed from its skeleton: no download, yet the shapes are the real ones."""
    assert pipeline_main(["layers", "inception_v3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    layers = {row["path"]: row for row in data["layers"]}
    assert data["input_size"] == 299
    assert layers["Mixed_6e"]["shape"] == [768, 17, 17] and layers["Mixed_6e"]["channels"] == 768
    assert layers["AuxLogits"]["calls"] == 0  # the auxiliary head does not run in eval mode
    assert pipeline_main(["layers", "inception_v3", "--match", "Mixed_7c.branch_pool", "--size", "160"]) == 0
    out = capsys.readouterr().out
    assert "at 160x160" in out and "Mixed_7c.branch_pool.conv" in out and "Mixed_6e " not in out


def test_layers_of_a_plugin_model_are_the_testing_kits_tiny_layers():
    from pipeline_core.commands.layers import list_layers
    from pipeline_core.testing import TINY_LAYERS

    name, side, rows = list_layers("tiny-test-model", REGISTRY)
    assert (name, side) == ("tiny-test-model", 32)
    got = {r.path: tuple(r.shape) for r in rows if r.path in TINY_LAYERS}
    assert got == TINY_LAYERS and len(rows) == 8  # features itself, its six modules and fc


@pytest.mark.parametrize("argv, message", [
    (["mobilenet_v9"], "unknown model 'mobilenet_v9'"),
    (["inception_v3", "--size", "99999"], "give a side from 8 to 1024 px"),
    (["inception_v3", "--size", "16"], "inception_v3 cannot run on a 16x16 px input"),
])
def test_layers_refuses_what_it_cannot_list_in_one_line(argv, message, capsys):
    assert pipeline_main(["layers", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# -- wrong layer paths, where the recipe names them --------------------------------------------


def test_a_wrong_layer_path_fails_validation_offline_at_its_line_with_the_nearest_paths(tmp_path, capsys):
    text = (INSIDE / "diverse_channel.yaml").read_text(encoding="utf-8").replace("layer: Mixed_5d", "layer: Mixed5d")
    bad = tmp_path / "diverse.yaml"
    bad.write_text(text, encoding="utf-8")
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.strip() == "layer: Mixed5d")
    assert pipeline_main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"diverse.yaml:{line}: step 5 (diversity): key 'layer': model 'inception_v3' has no layer 'Mixed5d'" in err
    assert "nearest: Mixed_5d" in err and "pipeline layers inception_v3" in err


def test_a_wrong_layer_path_given_with_set_names_the_option(mobilenet_path, capsys):
    sets = [a for s in offline_sets("neurons.yaml", mobilenet_path) for a in ("--set", s)]
    sets[-1] = "steps.3.layer=features.10.conv.9"
    assert pipeline_main(["validate", str(INSIDE / "neurons.yaml"), *sets]) == 2
    err = capsys.readouterr().err
    assert "--set steps.3.layer=features.10.conv.9" in err and "nearest: features.10.conv" in err


# -- the recipes ---------------------------------------------------------------------------------


def test_there_is_a_recipe_for_each_way_of_looking_inside():
    assert {"deepdream.yaml", "mobilenet_channels.yaml", "neurons.yaml", "diverse_channel.yaml",
            "class_and_layer.yaml"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_header_says_what_it_shows_what_to_look_for_and_how_to_run_offline(name):
    text = header(name)
    assert "What it shows" in text and "What to look for" in text
    assert f"pipeline run recipes/inside/{name}" in text
    for flag in ("model.name=mobilenet_v2", "model.mean=[0.5,0.5,0.5]", "model.std=[0.5,0.5,0.5]", "model.size=224"):
        assert flag in text, f"{name}: the offline command lacks {flag}"
    model = yaml.safe_load((INSIDE / name).read_text(encoding="utf-8"))["model"]["name"]
    assert model == "inception_v3" or "MobileNetV2's" in text, "a recipe for another model says so"


def test_every_recipe_matches_the_editors_schema():
    import jsonschema

    from pipeline_core.recipe.schema import recipe_schema

    validator = jsonschema.Draft202012Validator(recipe_schema(REGISTRY))
    for name in ALL:
        data = yaml.safe_load((INSIDE / name).read_text(encoding="utf-8"))
        assert [e.message for e in validator.iter_errors(data)] == [], name


@pytest.mark.parametrize("name", ALL)
def test_validates_as_shipped_with_its_layer_paths_checked(name, capsys):
    assert pipeline_main(["validate", str(INSIDE / name)]) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize("name", ALL)
def test_runs_a_few_iterations_on_the_real_mobilenet_with_its_headers_flags(name, mobilenet_path, tmp_path):
    data = yaml.safe_load((INSIDE / name).read_text(encoding="utf-8"))
    iterations = 3 if any(s["step"] == "octave" for s in data["steps"]) else 2
    sets = offline_sets(name, mobilenet_path) + [f"iterations={iterations}", "output.video=false", "device=cpu",
                                                 "steps.0.size=64", "model.size=96", *SMALLER.get(name, [])]
    recipe = load_recipe(INSIDE / name, REGISTRY, sets)
    result = Run(recipe, REGISTRY, tmp_path, Progress(), device="cpu").execute()
    assert result.status == "completed", result.message
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["iterations_done"] == iterations and record["model"]["name"] == "mobilenet_v2"
    assert len(record["images"]) == recipe.plan.batch
    classes = any(s.cls.name in ("L1-loss", "cross-entropy") for s in recipe.steps)
    for image in record["images"]:
        assert bool(image["targets"]) == classes  # a layer objective aims at no class
        with Image.open(tmp_path / "images" / image["file"]) as im:
            pixels = np.array(im.convert("L"), dtype=np.float32)
        assert pixels.std() > 0.5, f"{image['file']} is a flat image"
    assert pipeline_main(["validate", str(tmp_path / "run.json")]) == 0  # its record validates, to be replayed


# -- a run with only layer objectives, through everything a run makes ------------------------


def _layer_only(**changes) -> dict:
    recipe = tiny_recipe(iterations=8, seed=3, batch=2, **changes)
    recipe["steps"][1:2] = [{"step": "channel", "layer": "features.3", "channel": [2, 5]},
                            {"step": "diversity", "layer": "features.2", "weight": 0.5, "from": 2}]
    return recipe


@pytest.fixture(scope="module")
def layer_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layer-only")
    recipe = _layer_only(output={"video": True, "frame_every": 2})
    return run_recipe_dict(recipe, folder / "run"), recipe


def test_a_layer_only_run_records_images_without_targets_and_makes_its_video(layer_run):
    result, _recipe = layer_run
    run_dir = result.run_dir
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["iterations_done"] == 8
    assert [im["targets"] for im in record["images"]] == [[], []]
    # named for what the channel objective made of them (diversity, a batch-wide term, names nothing)
    assert [im["file"] for im in record["images"]] == ["000_features-3-ch-2.png", "001_features-3-ch-5.png"]
    assert all(len(im["top5"]) == 5 for im in record["images"])
    assert (run_dir / "video.mp4").stat().st_size > 0 and (run_dir / "images" / "grid.png").is_file()


def test_a_layer_only_run_replays_to_the_same_bytes(layer_run, tmp_path):
    result, _recipe = layer_run
    recipe = load_recipe(result.run_dir / "run.json", REGISTRY)
    again = Run(recipe, REGISTRY, tmp_path / "replay", Progress(), device="cpu").execute()
    assert again.status == "completed"
    for name in ("000_features-3-ch-2.png", "001_features-3-ch-5.png"):
        assert (tmp_path / "replay" / "images" / name).read_bytes() == (result.run_dir / "images" / name).read_bytes()


def test_a_layer_only_run_resumes_after_an_interrupt_to_the_same_bytes(tmp_path):
    registry = make_registry(SelfSignalPlugin())
    recipe = _layer_only()
    straight = run(recipe, tmp_path / "straight", registry)
    stopped = run(with_signal(recipe, 5), tmp_path / "stopped", registry, armed=True)
    assert straight.status == "completed" and stopped.status == "interrupted"
    assert resume(tmp_path / "stopped", registry).status == "completed"
    assert pngs(tmp_path / "stopped") == pngs(tmp_path / "straight")
