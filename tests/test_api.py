"""The Python API: the real MobileNetV2 built by the test's own code and lent to a run, the
process's torch state and the model handed back as they were, and bad input raising the line the
command prints."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import pipeline_core as pc
from pipeline_core.errors import PipelineError, RecipeError
from pipeline_core.recipe import presets
from pipeline_core.testing import TINY_CLASSES, TinyNet, tiny_recipe

from conftest import ROOT, run_cli

HALF = (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def mobilenet(mobilenet_path):
    """torchvision's MobileNetV2 with the shared ImageNet state dict, as a researcher would load it."""
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2()
    net.load_state_dict(torch.load(mobilenet_path, map_location="cpu", weights_only=True))
    return net


def _tiny() -> pc.Model:
    return pc.Model(TinyNet(), mean=HALF, std=HALF, size=32, classes=TINY_CLASSES)


def _state() -> dict:
    return {"threads": torch.get_num_threads(), "grad": torch.is_grad_enabled(), "rng": torch.get_rng_state(),
            "py": random.getstate(), "np": np.random.get_state()[1].copy(),
            "flags": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                      torch.are_deterministic_algorithms_enabled())}


@pytest.mark.slow
def test_the_real_mobilenet_from_python_draws_a_class_and_is_handed_back_as_it_was(mobilenet, tmp_path):
    mobilenet.train()  # as a notebook may have left it: the run must not touch its batch-norm statistics
    before = {k: v.clone() for k, v in mobilenet.state_dict().items()}
    torch.manual_seed(123)
    torch.set_grad_enabled(False)
    try:
        state = _state()
        out = pc.visualize(pc.Model(mobilenet, mean=HALF, std=HALF, size=224), "labels:castle", iterations=3,
                           size=64, out=tmp_path / "castle", progress=False)
        after = _state()
    finally:
        torch.set_grad_enabled(True)
    assert out.status == "completed" and out.iterations_done == 3
    assert out.images.shape == (1, 3, 64, 64) and 0 <= float(out.images.min()) <= float(out.images.max()) <= 1
    assert out.pil[0].size == (64, 64)
    assert out.targets == ["castle"] and 0 < out.probabilities[0] < 1
    assert out.video.is_file() and out.report.is_file() and out.run_json.is_file() and out.metrics
    record = json.loads(out.run_json.read_text())
    assert record["model"]["in_memory"]["class"] == "torchvision.models.mobilenetv2.MobileNetV2"
    assert record["model"]["mean"] == list(HALF) and record["model"]["size"] == 224
    # the process as it was: threads, grad mode, every RNG, determinism flags
    assert after["threads"] == state["threads"] and after["grad"] is False and after["flags"] == state["flags"]
    assert torch.equal(after["rng"], state["rng"]) and after["py"] == state["py"]
    assert np.array_equal(after["np"], state["np"])
    # the model as it was: training mode, trainable, no hook left, weights and statistics untouched
    assert mobilenet.training and all(m.training for m in mobilenet.modules())
    assert all(p.requires_grad for p in mobilenet.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in mobilenet.modules())
    assert all(torch.equal(before[k], v) for k, v in mobilenet.state_dict().items())
    # the run's own images are what the API returned
    html = out._repr_html_()
    assert "data:image/png;base64" in html and "report.html" in html and "completed" in html
    assert out._repr_png_() == out.grid.read_bytes()


@pytest.mark.slow
def test_a_run_made_from_memory_keeps_its_weights_on_request_and_replays_from_its_record(tmp_path):
    model = _tiny()
    first = pc.run(tiny_recipe(), model=model, out=tmp_path / "a", progress=False, save_model=True)
    note = first.record["model"]["in_memory"]
    assert note["state_dict"] == "model_state.pt" and "pipeline_core.run" in note["replay"]
    saved = torch.load(tmp_path / "a" / "model_state.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.module.state_dict().items())
    again = pc.run(tmp_path / "a" / "run.json", model=model, out=tmp_path / "b", progress=False)
    assert torch.equal(again.images, first.images)
    with pytest.raises(PipelineError, match=r"is not empty; pass force=True"):  # a cell run again
        pc.run(tmp_path / "a" / "run.json", model=model, out=tmp_path / "b", progress=False)
    third = pc.run(tmp_path / "a" / "run.json", model=model, out=tmp_path / "b", progress=False, force=True)
    assert torch.equal(third.images, first.images)
    # the command cannot rebuild an object from memory, and says how to replay it instead
    done = run_cli("run", str(tmp_path / "a" / "run.json"), "--out", str(tmp_path / "c"))
    assert done.returncode == 2 and "passed from Python" in done.stderr and "Traceback" not in done.stderr


def test_a_recipe_as_yaml_text_or_a_file_with_set_and_seed(tmp_path):
    text = yaml.safe_dump(tiny_recipe())
    (tmp_path / "r.yaml").write_text(text)
    a = pc.run(text, model=_tiny(), set={"iterations": 2}, seed=3, out=tmp_path / "a", progress=False)
    b = pc.run(tmp_path / "r.yaml", model=_tiny(), set=["iterations=2"], seed=3, out=tmp_path / "b", progress=False)
    assert a.iterations_done == b.iterations_done == 2 and torch.equal(a.images, b.images)
    assert a.record["seed"] == 3


@pytest.mark.slow
def test_layers_and_classes_are_what_the_commands_print(mobilenet):
    done = run_cli("layers", "mobilenet_v2", "--json")
    listed = json.loads(done.stdout)["layers"]
    rows = pc.layers(pc.Model(mobilenet, mean=HALF, std=HALF, size=224))
    assert [(r["path"], r["shape"], r["channels"]) for r in rows] == \
        [(r["path"], r["shape"], r["channels"]) for r in listed]
    names = [c["name"] for c in json.loads(run_cli("classes", "mobilenet_v2", "--json").stdout)["classes"]]
    assert pc.classes(mobilenet) == names  # 1000 outputs: ImageNet's names
    assert pc.classes("mobilenet_v2") == names  # a spec string, as the command takes it


def test_a_module_that_is_not_a_module_is_refused_in_one_line(tmp_path):
    with pytest.raises(RecipeError, match=r"^model: expected a torch nn.Module.*got int$"):
        pc.run(tiny_recipe(), model=3, out=tmp_path / "x")
    with pytest.raises(RecipeError, match="got str"):  # a spec string is fine, a module in a list is not
        pc.layers(pc.Model("mobilenet_v2"))  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_typo_in_a_recipe_is_the_line_the_command_prints(tmp_path):
    data = tiny_recipe()
    data["iteratons"] = 3
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    done = run_cli("validate", str(path))
    line = done.stderr.strip()
    assert done.returncode == 2 and line.startswith("error: ")
    with pytest.raises(RecipeError) as caught:
        pc.run(path, model=_tiny(), out=tmp_path / "x")
    assert str(caught.value) == line[len("error: "):]
    with pytest.raises(RecipeError) as caught:  # the same recipe as a mapping: where it is, then the same words
        pc.run(data, model=_tiny(), out=tmp_path / "x")
    assert str(caught.value) == "recipe: " + line.split(": ", 2)[2]
    assert "did you mean 'iterations'" in str(caught.value)


@pytest.mark.slow
def test_a_layer_the_model_lacks_is_the_line_the_command_prints(mobilenet, mobilenet_path, tmp_path):
    data = tiny_recipe()
    data["steps"][1] = {"step": "channel", "layer": "features.99", "channel": 0}
    path = tmp_path / "layer.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    done = run_cli("validate", str(path), "--model", f"mobilenet_v2,weights={mobilenet_path},mean=0.5,std=0.5,size=224")
    cli_line = done.stderr.strip()
    assert done.returncode == 2
    with pytest.raises(RecipeError) as caught:
        pc.run(path, model=pc.Model(mobilenet, mean=HALF, std=HALF, size=224), out=tmp_path / "x")
    line = str(caught.value)
    # the same place and words; only the model's name (and the option that set it) differ
    assert line.split("model '")[0] == cli_line[len("error: "):].split("model '")[0]
    assert "has no layer 'features.99'; nearest: features.9, features.8" in line
    assert "pipeline_core.layers(model)" in line
    assert not (tmp_path / "x").exists()


def test_visualize_a_channel_and_a_neuron_and_dream_on_a_photo(tmp_path):
    model = _tiny()
    channel = pc.visualize(model, "features.3:5", iterations=2, size=32, out=tmp_path / "c", progress=False)
    neuron = pc.visualize(model, "neuron:features.0:1", iterations=2, size=32, out=tmp_path / "n", progress=False)
    dream = pc.visualize(model, "features.3", photo=ROOT / "recipes" / "images" / "owl.jpg", iterations=3, size=48,
                         out=tmp_path / "d", progress=False)
    assert channel.record["step_facts"]["step 4 (channel)"]["channels"] == [5]
    assert neuron.record["step_facts"]["step 3 (neuron)"]["channels"] == [1]
    assert dream.status == "completed" and min(dream.images.shape[-2:]) == 48  # the whole photo, short side 48
    with pytest.raises(RecipeError, match="give photo=PATH"):
        pc.visualize(model, "features.3")
    with pytest.raises(RecipeError, match="has no layer 'features.9'"):
        pc.visualize(model, "features.9:1", out=tmp_path / "x")


def test_the_presets_are_the_shipped_recipes_settings():
    """visualize() uses the shipped recipes' priors; a recipe retuned without its preset fails here."""
    for kind, (file, data) in presets.SOURCES.items():
        shipped = yaml.safe_load((ROOT / file).read_text())
        assert data["iterations"] == shipped["iterations"], kind
        assert len(data["steps"]) == len(shipped["steps"]), kind
        for mine, theirs in zip(data["steps"], shipped["steps"]):
            theirs = {k: v for k, v in theirs.items() if k != True}  # noqa: E712 - YAML 1.1 reads a bare on as True
            assert mine["step"] == theirs["step"], kind
            for key, value in mine.items():
                if value is not None and key != "size":
                    assert theirs.get(key) == value, (kind, mine["step"], key)


def test_an_interrupt_returns_the_partial_output_and_the_record(tmp_path, monkeypatch):
    import os
    import signal
    import threading

    from pipeline_core.run.loop import Loop

    original = Loop.run

    def interrupt_soon(self, *args, **kwargs):
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Loop, "run", interrupt_soon)
    out = pc.run(tiny_recipe(iterations=100000), model=_tiny(), out=tmp_path / "i", progress=False)
    assert out.status == "interrupted" and 0 < out.iterations_done < 100000
    assert json.loads((tmp_path / "i" / "run.json").read_text())["status"] == "interrupted"
    assert out.images.shape == (1, 3, 32, 32) and (tmp_path / "i" / "images" / "grid.png").is_file()


def test_the_package_face_is_the_api():
    import pipeline_core.run.engine  # noqa: F401 - the sub-package imported first: still callable

    import inspect

    assert callable(pc.run) and pc.visualize is pc.api.visualize
    assert list(inspect.signature(pc.run).parameters)[:3] == ["recipe", "model", "set"]
    with pytest.raises(PipelineError):
        pc.run({"steps": []}, model=_tiny())


def test_a_model_family_makes_its_models_by_name_when_a_recipe_names_them():
    from pipeline_core.errors import PluginError
    from pipeline_core.registry import Registry
    from pipeline_core.testing import TINY_MODEL

    made = []

    def make(name):
        if name != "small":
            raise KeyError(f"unknown model 'toy:{name}': the toy family has small only")
        made.append(name)
        return TINY_MODEL

    registry = Registry()
    registry._as("toys").add_model_family("toy", make)
    assert registry.model("toy:small") is TINY_MODEL and registry.model("toy:small") is TINY_MODEL
    assert made == ["small"]  # made once, then kept
    with pytest.raises(KeyError, match="the toy family has small only"):
        registry.model("toy:large")
    registry._as("other").add_model_family("toy", make)  # a clash: refused, reported, the first keeps it
    assert registry.families["toy"].plugin == "toys" and "already registers it" in registry.problems[-1]
    with pytest.raises(PluginError, match="plain word"):
        registry.add_model_family("to y", make)
    assert "model toy:NAME" in registry.plugins["toys"].registers


@pytest.mark.slow
def test_the_models_command_names_the_families(cli):
    done = cli("models")
    assert done.returncode == 0 and "timm:NAME  (pipeline_plugins.timm_models)" in done.stdout
