"""model.ensemble: more classifiers on every view, logits averaged; the main model's paths kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline_core.kit.tiny import TINY_CLASSES, TinyNet
from pipeline_core.model import ModelInfo
from pipeline_core.run.ensemble import Ensemble


def test_the_logits_are_the_average_of_each_model_on_its_own_input():
    main, member = TinyNet(seed=0).eval(), TinyNet(seed=1).eval()
    main_info = ModelInfo(categories=TINY_CLASSES, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=32)
    member_info = ModelInfo(categories=TINY_CLASSES, mean=(0.4, 0.45, 0.5), std=(0.2, 0.25, 0.3), size=40)
    ens = Ensemble(main, main_info, [(member, member_info)]).eval()
    image = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(member_info.mean).view(1, 3, 1, 1), torch.tensor(member_info.std).view(1, 3, 1, 1)
    own = member((F.interpolate(image, size=(40, 40), mode="bilinear", align_corners=False) - mean) / std)
    expected = (main((image - 0.5) / 0.5) + own) / 2
    assert torch.allclose(ens((image - 0.5) / 0.5), expected, atol=1e-5)


def test_the_main_models_layer_paths_and_weights_stay_its_own():
    main, member = TinyNet(seed=0), TinyNet(seed=1)
    info = ModelInfo(categories=TINY_CLASSES, mean=(0.5,) * 3, std=(0.5,) * 3, size=32)
    ens = Ensemble(main, info, [(member, info)])
    names = dict(ens.named_modules())
    for path, module in main.named_modules():
        if path:
            assert names[path] is module  # layer:PATH names the same layer with or without an ensemble
    assert any(p.startswith("ensemble.0.") for p in names)  # the member's layers, for steps that walk modules
    ens.eval()
    assert not main.training  # the main module's own flag too (InceptionV3's forward reads it)
    ens.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in main.parameters())  # moving the ensemble moves the model
    main.num_prefix_tokens = 1
    assert ens.num_prefix_tokens == 1  # the main model's own attributes read through (a ViT's, for its heads)


def test_a_model_with_its_own_ensemble_layer_is_refused_in_one_line():
    from types import SimpleNamespace

    from pipeline_core.errors import ModelLoadError
    from pipeline_core.run.engine import _with_ensemble

    main = TinyNet(seed=0)
    main.ensemble = torch.nn.Linear(2, 2)
    info = ModelInfo(categories=TINY_CLASSES, mean=(0.5,) * 3, std=(0.5,) * 3, size=32)
    member = SimpleNamespace(build=lambda spec: TinyNet(seed=1))
    recipe = SimpleNamespace(ensemble=[(member, None, info)], model_info=info,
                             model_spec=SimpleNamespace(name="tiny"),
                             model=SimpleNamespace(model=SimpleNamespace(ensemble=["tiny"])))
    with pytest.raises(ModelLoadError, match="has a layer named 'ensemble'"):
        _with_ensemble(recipe, main)


def _recipe(folder: Path, ensemble: list[str], weights: Path, iterations: int = 2) -> Path:
    text = f"""iterations: {iterations}
batch: 1
model:
  name: mobilenet_v2
  weights: {weights}
  mean: [0.5, 0.5, 0.5]
  std: [0.5, 0.5, 0.5]
  size: 224
  ensemble: {json.dumps(ensemble)}
steps:
  - step: init-noise
    size: 64
  - step: L1-loss
    target: castle
    C: 10000
    lambda: 0
  - step: bn-statistics
    source: photos
  - step: adam
    lr: 0.05
"""
    path = folder / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.slow
def test_a_real_two_model_ensemble_runs_and_reaches_the_members_layers(cli, tmp_path, mobilenet_path):
    pytest.importorskip("pipeline_efficientnet")
    alone = cli("run", str(_recipe(tmp_path, [], mobilenet_path)), "--out", str(tmp_path / "alone"), "--quiet",
                "--threads", "1")
    assert alone.returncode == 0, alone.stderr
    (tmp_path / "w").mkdir()
    local = tmp_path / "w" / "copy.pth"  # a member's weights named relative to the recipe
    local.write_bytes(mobilenet_path.read_bytes())
    recipe = _recipe(tmp_path, ["efficientnet-lite0", "mobilenet_v2,weights=w/copy.pth,mean=0.5,std=0.5,size=224"],
                     mobilenet_path)
    both = cli("run", str(recipe), "--out", str(tmp_path / "both"), "--quiet", "--threads", "1")
    assert both.returncode == 0, both.stderr
    one = json.loads((tmp_path / "alone" / "run.json").read_text())
    record = json.loads((tmp_path / "both" / "run.json").read_text())
    layers_alone = one["step_facts"]["step 2 (bn-statistics)"]["layers"]
    layers = record["step_facts"]["step 2 (bn-statistics)"]["layers"]
    assert layers > 2 * layers_alone  # the main model's, Lite0's and the second MobileNetV2's batch norms
    members = record["recipe"]["model"]["ensemble"]
    assert members[0] == "efficientnet-lite0"
    assert f"weights={local}" in members[1]  # absolute in the record, so the run replays from its folder
    assert "mean=[0.5, 0.5, 0.5]" in members[1] and "size=224" in members[1]
    assert record["model"]["ensemble"] == members  # the record says the picture is the ensemble's
    replay = cli("run", str(tmp_path / "both" / "run.json"), "--out", str(tmp_path / "replay"), "--quiet",
                 "--threads", "1", cwd=tmp_path / "w")  # from another folder: nothing relative is left
    assert replay.returncode == 0, replay.stderr
    alone_again = cli("run", str(recipe), "--out", str(tmp_path / "other"), "--quiet", "--threads", "1",
                      "--model", f"mobilenet_v2,weights={mobilenet_path},mean=0.5,std=0.5,size=224")
    assert alone_again.returncode == 0, alone_again.stderr
    other = json.loads((tmp_path / "other" / "run.json").read_text())
    assert other["recipe"]["model"].get("ensemble", []) == []  # --model replaces the whole model, members too
    assert record["images"][0]["target_probability"] != one["images"][0]["target_probability"]


@pytest.mark.parametrize("member, message", [
    ("no-such-model", "model.ensemble: unknown model 'no-such-model'"),
    ("mobilenet_v2,categories=[a,b]", "has 2 classes and the model 1000"),
    ("mobilenet_v2,colour=red", "model.ensemble: mobilenet_v2,colour=red: 'colour=red' is not KEY=VALUE"),
])
def test_a_bad_member_is_one_line_at_its_place(cli, tmp_path, mobilenet_path, member, message):
    recipe = _recipe(tmp_path, [member], mobilenet_path)
    done = cli("validate", str(recipe))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert f"{recipe}:9:" in lines[0] and message in lines[0], lines[0]


@pytest.mark.slow
def test_a_members_layer_is_named_under_ensemble(cli, tmp_path, mobilenet_path):
    pytest.importorskip("pipeline_efficientnet")
    text = _recipe(tmp_path, ["efficientnet-lite0"], mobilenet_path, iterations=1).read_text()
    good = text.replace("  - step: bn-statistics\n    source: photos\n",
                        "  - step: channel\n    layer: ensemble.0._blocks.3\n    channel: 5\n")
    (tmp_path / "good.yaml").write_text(good)
    done = cli("run", str(tmp_path / "good.yaml"), "--out", str(tmp_path / "good"), "--quiet", "--threads", "1")
    assert done.returncode == 0, done.stderr
    (tmp_path / "bad.yaml").write_text(good.replace("ensemble.0._blocks.3", "ensemble.0._blocks.99"))
    done = cli("run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad"), "--quiet", "--threads", "1")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "has no layer 'ensemble.0._blocks.99'" in done.stderr and "ensemble.0._blocks.9" in done.stderr


@pytest.mark.slow
def test_a_member_that_cannot_be_built_is_named_in_one_line(cli, tmp_path, mobilenet_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("not a state dict")
    recipe = _recipe(tmp_path, [f"mobilenet_v2,weights={bad},mean=0.5,std=0.5,size=224"], mobilenet_path, 1)
    done = cli("run", str(recipe), "--out", str(tmp_path / "run"), "--quiet", "--threads", "1")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "model.ensemble[0] 'mobilenet_v2,weights=" in line and f"{recipe}:9:" in line, line


@pytest.mark.slow
def test_a_member_that_must_download_is_announced_and_its_failure_is_the_runs(cli, tmp_path, mobilenet_path):
    from test_cli_run import offline_env

    recipe = _recipe(tmp_path, ["resnet18"], mobilenet_path, 1)  # torchvision's weights, not cached here
    env = offline_env(tmp_path)
    checked = cli("validate", str(recipe), env=env)
    assert checked.returncode == 0, checked.stderr
    (line,) = checked.stdout.strip().splitlines()
    assert "model.ensemble[0] (resnet18) downloads its weights" in line and str(tmp_path / "hub") in line, line
    assert "downloads the weights of mobilenet_v2" not in line  # the main model's are local
    done = cli("run", str(recipe), "--out", str(tmp_path / "run"), "--quiet", "--threads", "1", env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr  # the run failed (1), not the recipe (2)
    last = done.stderr.strip().splitlines()[-1]
    assert "model.ensemble[0] 'resnet18'" in last and "record:" in last, last  # a failed run, with its record
    assert "give the member weights=FILE" in last and "model.weights" not in last, last  # the member's own fix
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_a_members_path_with_a_comma_is_quoted_in_the_record_and_read_back(tmp_path, mobilenet_path, registry):
    from pipeline_core.recipe.loader import load_recipe
    from pipeline_core.recipe.model_arg import parse_model_arg

    (tmp_path / "w").mkdir()
    odd = tmp_path / "w" / "copy, 2.pth"
    odd.symlink_to(mobilenet_path)
    recipe = load_recipe(_recipe(tmp_path, ['mobilenet_v2,weights="w/copy, 2.pth",mean=0.5,std=0.5,size=224'],
                                 mobilenet_path), registry)
    written = recipe.model.model.ensemble[0]
    assert f'weights="{odd}"' in written  # absolute, and in quotes for the comma
    assert parse_model_arg(written).weights == odd


def test_class_map_with_members_is_refused_in_one_line(cli, tmp_path, mobilenet_path):
    text = _recipe(tmp_path, [f"mobilenet_v2,weights={mobilenet_path},mean=0.5,std=0.5,size=224"], mobilenet_path,
                   1).read_text()
    (tmp_path / "cm.yaml").write_text(text.replace("  - step: L1-loss\n    target: castle\n    C: 10000\n    lambda: 0\n",
                                                   "  - step: class-map\n    target: castle\n"))
    done = cli("run", str(tmp_path / "cm.yaml"), "--out", str(tmp_path / "run"), "--quiet", "--threads", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "class-map reads the main model's classifier only" in done.stderr.strip().splitlines()[-1]
