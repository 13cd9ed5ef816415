"""Model loading: torchvision's real weights path (download mocked), local weights, heads, freezing."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
import torchvision.models._api as tv_weights_api

from pipeline_core.errors import ModelLoadError
from pipeline_core.model import ModelAdapter, ModelSpec


def mock_download(monkeypatch, fn) -> None:
    """Replace the download torchvision's weights API makes (it imported the function itself)."""
    monkeypatch.setattr(tv_weights_api, "load_state_dict_from_url", fn)


@pytest.fixture(scope="module")
def inception_state():
    torch.manual_seed(0)
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    return model.state_dict()


def test_inception_download_failure_is_an_actionable_error(monkeypatch, tmp_path, registry):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    mock_download(monkeypatch, offline)
    model_def = registry.model("inception_v3")
    with pytest.raises(ModelLoadError) as err:
        model_def.build(ModelSpec(name="inception_v3"))
    text = str(err.value)
    assert "inception_v3_google-0cc3c7bd.pth" in text and str(tmp_path) in text and "model.weights" in text
    assert "\n" not in text


def test_inception_with_torchvision_weights_has_metadata_and_a_working_aux_head(monkeypatch, inception_state, registry):
    calls = []

    def fake_download(url, *args, **kwargs):
        calls.append(url)
        return inception_state

    mock_download(monkeypatch, fake_download)
    model_def = registry.model("inception_v3")
    info = model_def.describe(ModelSpec(name="inception_v3"))
    assert info.size == 299 and len(info.categories) == 1000 and info.categories[483] == "castle"
    module = model_def.build(ModelSpec(name="inception_v3"))
    assert calls and calls[0].endswith("inception_v3_google-0cc3c7bd.pth")
    adapter = ModelAdapter(module, info, model_def.heads, ["aux"])
    before = {k: v.clone() for k, v in module.state_dict().items() if "running" in k}
    x = torch.rand(1, 3, 256, 256, requires_grad=True)
    out = adapter(x)
    assert out.logits.shape == (1, 1000) and out.heads["aux"].shape == (1, 1000)
    assert not module.training  # eval mode: no train-mode switch to reach the aux head
    (grad,) = torch.autograd.grad(out.heads["aux"][0, 483], x)
    assert grad.abs().sum() > 0
    after = {k: v for k, v in module.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics never move
    assert all(not p.requires_grad for p in module.parameters())


def test_local_weights_for_a_fine_tuned_five_class_model(tmp_path, registry):
    model = torchvision.models.mobilenet_v2(num_classes=5)
    path = tmp_path / "flowers.pth"
    torch.save(model.state_dict(), path)
    names = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    spec = ModelSpec(name="mobilenet_v2", weights=path, categories=names, mean=(0.5,) * 3, std=(0.5,) * 3, size=128)
    model_def = registry.model("mobilenet_v2")
    assert list(model_def.describe(spec).categories) == names
    built = model_def.build(spec)
    assert built.classifier[-1].out_features == 5


def test_weights_of_the_wrong_architecture_are_a_clear_error(tmp_path, registry):
    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ModelLoadError, match="does not fit torchvision's mobilenet_v2"):
        registry.model("mobilenet_v2").build(ModelSpec(name="mobilenet_v2", weights=path))


def test_real_mobilenet_recognises_a_photo(mobilenet_path, registry):
    from plugins_photo import load

    spec = ModelSpec(name="mobilenet_v2", weights=mobilenet_path, mean=(0.5,) * 3, std=(0.5,) * 3, size=224)
    model_def = registry.model("mobilenet_v2")
    adapter = ModelAdapter(model_def.build(spec), model_def.describe(spec))
    probs = adapter(load("sunflower.png")).logits.softmax(1)
    assert adapter.categories[int(probs.argmax())] == "daisy"  # as ../shared/models/README.md says


@pytest.mark.parametrize("layout", ["plain", "state_dict", "dataparallel", "compiled", "robustness", "reference",
                                    "old"])
def test_checkpoints_saved_by_training_code_load(tmp_path, registry, layout):
    """A wrapper ({"state_dict": ...}, {"model": ..., "epoch": ...}) and key prefixes as training code
    saves them: DataParallel's module., torch.compile's _orig_mod., and the robustness library's
    robust ImageNet models (module.model. beside an attacker's copy and a normaliser)."""
    net = torchvision.models.resnet18(num_classes=5)
    own = net.state_dict()
    if layout == "plain":
        saved = own
    elif layout == "state_dict":
        saved = {"state_dict": own, "epoch": 3}
    elif layout == "dataparallel":
        saved = {f"module.{k}": v for k, v in own.items()}
    elif layout == "reference":  # torchvision's references/classification/train.py also saves its arguments
        import argparse

        saved = {"model": own, "optimizer": {}, "epoch": 5, "args": argparse.Namespace(lr=0.1, arch="resnet18")}
    elif layout == "old":  # DataParallel, from a PyTorch before batch norms counted their batches
        saved = {f"module.{k}": v for k, v in own.items() if not k.endswith("num_batches_tracked")}
    elif layout == "compiled":
        saved = {"model": {f"_orig_mod.{k}": v for k, v in own.items()}}
    else:
        other = {k: torch.zeros_like(v) for k, v in own.items()}  # the attacker's copy must not be the one read
        saved = {"model": {"module.normalizer.new_mean": torch.zeros(3, 1, 1),
                           "module.normalizer.new_std": torch.ones(3, 1, 1),
                           **{f"module.attacker.model.{k}": v for k, v in other.items()},
                           **{f"module.model.{k}": v for k, v in own.items()}},
                 "epoch": 90, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}
    path = tmp_path / "ckpt.pt"
    torch.save(saved, path)
    spec = ModelSpec(name="resnet18", weights=path, categories=[str(i) for i in range(5)])
    built = registry.model("resnet18").build(spec)
    for key, value in own.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(built.state_dict()[key], value), key


def test_a_checkpoint_of_another_architecture_is_still_refused(tmp_path, registry):
    saved = {"model": {f"module.model.{k}": v for k, v in torchvision.models.resnet18(num_classes=5).state_dict().items()}}
    path = tmp_path / "ckpt.pt"
    torch.save(saved, path)
    with pytest.raises(ModelLoadError, match="does not fit torchvision's mobilenet_v2"):
        registry.model("mobilenet_v2").build(ModelSpec(name="mobilenet_v2", weights=path,
                                                       categories=[str(i) for i in range(5)]))
