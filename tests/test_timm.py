"""timm models by name and vision transformers: small random-weight ViT and ConvNeXt models run
end to end through the real command (run, video, report, replay), their tokens read as a
feature map, and weights that cannot be fetched are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

timm = pytest.importorskip("timm")

import pipeline_core as pc  # noqa: E402
from pipeline_core.errors import RecipeError, RunFailed  # noqa: E402
from pipeline_core.model import ModelAdapter, ModelInfo, layer_head  # noqa: E402

from conftest import run_cli  # noqa: E402

VIT = {"name": "timm:vit_tiny_patch16_224", "kwargs": {"img_size": 64, "depth": 2, "pretrained": False}}
CONVNEXT = {"name": "timm:convnext_tiny", "size": 64,
            "kwargs": {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "pretrained": False}}


def _recipe(model: dict, layer: str, neuron_layer: str) -> dict:
    return {
        "iterations": 3, "seed": 0, "device": "cpu", "batch": 2, "model": model,
        "steps": [
            {"step": "init-noise", "scale": 0.0, "offset": 0.5, "size": 64},
            {"step": "fourier-image", "noise": 0.01},
            {"step": "skip-gradient", "gamma": 0.5, "erosion": 0.4, "required": False},
            {"step": "jitter", "pixels": 4},
            {"step": "random-scale", "scale": [0.9, 1.1]},
            {"step": "channel", "layer": layer, "channel": [3, 7]},
            {"step": "neuron", "layer": neuron_layer, "channel": 5, "weight": 0.5},
            {"step": "L1-loss", "target": "castle", "C": 10000, "lambda": 0},
            {"step": "adam", "lr": 0.05},
        ],
        "output": {"frame_every": 1},
    }


@pytest.mark.parametrize("model, layer, neuron_layer, branches", [
    (VIT, "blocks.1", "blocks.0.mlp.fc1", 4),
    (CONVNEXT, "stages.2", "stages.1", 4),
], ids=["vit", "convnext"])
def test_a_small_timm_model_runs_end_to_end_and_replays(tmp_path, model, layer, neuron_layer, branches):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(model, layer, neuron_layer), sort_keys=False))
    done = run_cli("run", str(path), "--out", str(tmp_path / "a"), "--quiet")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["status"] == "completed" and record["model"]["size"] == 64
    assert record["model"]["weights"] == "random (model.kwargs.pretrained: false)"
    assert record["model"]["mean"] == ([0.5] * 3 if "vit" in model["name"] else [0.485, 0.456, 0.406])
    facts = record["step_facts"]
    assert facts["step 2 (skip-gradient)"]["branches"] == branches  # the residual branches timm's blocks have
    assert facts["step 5 (channel)"]["channels"] == [3, 7]
    assert [i["targets"][-1]["name"] for i in record["images"]] == ["castle", "castle"]
    assert (tmp_path / "a" / "video.mp4").stat().st_size > 0 and (tmp_path / "a" / "report.html").is_file()
    again = run_cli("run", str(tmp_path / "a" / "run.json"), "--out", str(tmp_path / "b"), "--quiet")
    assert again.returncode == 0, again.stderr
    for image in record["images"]:
        assert (tmp_path / "a" / "images" / image["file"]).read_bytes() == \
            (tmp_path / "b" / "images" / image["file"]).read_bytes()


def test_transformer_tokens_are_a_feature_map_without_the_class_token():
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2).eval()
    tokens = {}
    net.blocks[1].register_forward_hook(lambda _m, _i, out: tokens.update(raw=out))
    adapter = ModelAdapter(net, ModelInfo(categories=[str(i) for i in range(1000)], size=64),
                           requested=[layer_head("blocks.1")])
    assert adapter.layer_shapes()["blocks.1"] == (192, 4, 4)  # embedding dimensions x the 4x4 patch grid
    x = torch.rand(2, 3, 64, 64)
    grid = adapter(x).layer("blocks.1")
    raw = tokens["raw"]
    assert raw.shape == (2, 17, 192)  # the class token first, then 16 patches
    assert torch.equal(grid[:, 5, 1, 2], raw[:, 1 + 1 * 4 + 2, 5])  # channel 5 at row 1, column 2
    assert torch.equal(grid.flatten(2).mean(2), raw[:, 1:].mean(1))  # the class token is left out


def test_a_timm_module_from_python_brings_its_own_preprocessing(tmp_path):
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=48, depth=1)
    rec = _recipe(VIT, "blocks.0", "blocks.0")
    out = pc.run(rec, model=net, out=tmp_path / "a", progress=False)
    model = out.record["model"]
    assert model["mean"] == [0.5] * 3 and model["size"] == 48  # timm's config, the side the ViT was built for
    assert out.targets == ["castle", "castle"]  # 1000 outputs: ImageNet's names


def test_weights_from_a_local_file(tmp_path):
    net = timm.create_model("convnext_tiny", pretrained=False, depths=[1, 1, 1, 1], dims=[8, 16, 32, 64])
    torch.save(net.state_dict(), tmp_path / "w.pth")
    model = {**CONVNEXT, "weights": str(tmp_path / "w.pth"),
             "kwargs": {k: v for k, v in CONVNEXT["kwargs"].items() if k != "pretrained"}}
    out = pc.run(_recipe(model, "stages.2", "stages.1"), out=tmp_path / "a", progress=False)
    assert out.status == "completed" and out.record["model"]["weights"] == str(tmp_path / "w.pth")
    bad = {**model, "kwargs": {**model["kwargs"], "dims": [8, 16, 32, 72]}}
    with pytest.raises(RunFailed, match=r"w.pth does not fit timm's convnext_tiny"):
        pc.run(_recipe(bad, "stages.2", "stages.1"), out=tmp_path / "b", progress=False)


def test_weights_that_cannot_be_fetched_are_one_line(tmp_path):
    """The real loading code, with the hub unreachable (offline mode, an empty cache)."""
    rec = _recipe({"name": "timm:convnext_tiny", "size": 64, "kwargs": {"depths": [1, 1, 1, 1],
                                                                       "dims": [8, 16, 32, 64]}}, "stages.2", "stages.1")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(rec, sort_keys=False))
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    done = run_cli("run", str(path), "--out", str(tmp_path / "a"), "--quiet", env=env, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr  # a model that cannot be loaded, as torchvision's
    assert "could not get the pretrained weights of timm:convnext_tiny" in lines[0]
    assert "set model.weights to a local state-dict file" in lines[0]
    assert json.loads((tmp_path / "a" / "run.json").read_text())["status"] == "failed"


def test_a_download_that_fails_is_one_line_from_python(tmp_path, monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("Temporary failure in name resolution")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    model = {**VIT, "kwargs": {"img_size": 64, "depth": 2}}
    with pytest.raises(RunFailed) as caught:
        pc.run(_recipe(model, "blocks.1", "blocks.0"), out=tmp_path / "a", progress=False)
    assert "OSError: Temporary failure in name resolution" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unknown_names_and_a_missing_timm_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(RecipeError, match=r"unknown model 'timm:convnxt_tiny'.*did you mean 'convnext_tiny'"):
        pc.run(_recipe({"name": "timm:convnxt_tiny"}, "stages.2", "stages.1"), out=tmp_path / "a")
    monkeypatch.setitem(__import__("sys").modules, "timm", None)
    with pytest.raises(RecipeError, match=r"needs timm, which is not installed: pip install 'pipeline-transfigure\[timm\]'"):
        pc.classes("timm:resnet18")
    assert not (tmp_path / "a").exists()


def test_layers_of_a_transformer_count_embedding_dimensions_as_channels():
    rows = {r["path"]: r for r in pc.layers(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64,
                                                              depth=1))}
    assert rows["blocks.0"]["shape"] == [17, 192] and rows["blocks.0"]["channels"] == 192
