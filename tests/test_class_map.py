"""class-map: the target's class activation map, weighted toward the centre of the grid."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from pipeline_core.errors import RecipeError
from pipeline_core.model import ModelAdapter, ModelInfo
from pipeline_core.testing import check_step
from pipeline_plugins.objective.class_map import ClassMap, ClassMapParams, find_classifier, pooled_layer


def test_the_step_keeps_the_step_contract():
    check_step(ClassMap, {"target": [1, 2]})


class _Ctx:
    def __init__(self, module: nn.Module, size: int | None = 224):
        info = ModelInfo(categories=[str(i) for i in range(1000)], mean=(0.5,) * 3, std=(0.5,) * 3, size=size)
        self.model, self.device = ModelAdapter(module, info), torch.device("cpu")


def _step(ctx, classes: list[int], **params) -> ClassMap:
    step = ClassMap(ClassMapParams(target=classes, **params))
    step.classes = classes
    step.setup(ctx)
    return step


@pytest.fixture(scope="module")
def mobilenet(mobilenet_path):
    module = torchvision.models.mobilenet_v2()
    module.load_state_dict(torch.load(mobilenet_path, map_location="cpu", weights_only=True))
    return module.eval()


def test_every_position_alike_is_the_logit_and_the_centre_is_the_centres_evidence(mobilenet):
    ctx = _Ctx(mobilenet)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    flat = _step(ctx, [1, 483], sigma=None)
    assert flat.layer_path == "features" and flat.classifier_path == "classifier.1"
    out = ctx.model(x)
    assert torch.allclose(flat.value(out), out.logits[[0, 1], [1, 483]], rtol=1e-4, atol=1e-3)
    centre = _step(ctx, [1, 483], sigma=0.02)  # a narrow Gaussian: the middle position only
    out = ctx.model(x)
    feats = out.layer("features")
    cam = torch.einsum("bchw,bc->bhw", feats, mobilenet.classifier[1].weight[[1, 483]])
    expected = cam[:, 3, 3] + mobilenet.classifier[1].bias[[1, 483]]
    assert torch.allclose(centre.value(out), expected, rtol=1e-4, atol=1e-3)
    assert not torch.allclose(centre.value(out), out.logits[[0, 1], [1, 483]], atol=0.1)


def test_the_gradient_favours_the_middle_of_the_image(mobilenet):
    ctx = _Ctx(mobilenet)
    grads = {}
    for sigma in (None, 0.1):
        step = _step(ctx, [1], sigma=sigma)
        x = torch.full((1, 3, 224, 224), 0.5, requires_grad=True)
        step.loss(ctx, ctx.model(x), x).sum().backward()
        g = x.grad.abs().sum(1)[0]
        grads[sigma] = float(g[56:168, 56:168].sum() / g.sum())  # the middle quarter's share
    assert grads[0.1] > 1.6 * grads[None], grads


@pytest.mark.parametrize("name, classifier, layer", [
    ("resnet18", "fc", "layer4"), ("mobilenet_v2", "classifier.1", "features"), ("googlenet", "fc", "inception5b"),
])
def test_the_classifier_and_the_map_it_pools_are_found_in_torchvision_models(name, classifier, layer):
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    module = getattr(torchvision.models, name)(**kwargs).eval()
    assert find_classifier(module, 1000) == classifier
    assert pooled_layer(module, classifier, 96, torch.device("cpu")) == layer  # not the 1x1 pooled output


def test_a_head_that_does_more_than_average_is_refused_in_one_line():
    class NormedHead(nn.Module):  # a norm after the pooling, as ConvNeXt: the map's average is not the input
        def __init__(self):
            super().__init__()
            self.features = nn.Conv2d(3, 8, 3, stride=4)
            self.norm = nn.LayerNorm(8)
            self.fc = nn.Linear(8, 1000)

        def forward(self, x):
            return self.fc(self.norm(self.features(x).mean((2, 3))))

    with pytest.raises(RecipeError, match="does more than average") as info:
        _step(_Ctx(NormedHead(), size=64), [3])
    assert "use L1-loss" in info.value.message and "\n" not in info.value.message
    with pytest.raises(RecipeError, match="layer .features. is not the map whose average"):
        _step(_Ctx(NormedHead(), size=64), [3], layer="features")
