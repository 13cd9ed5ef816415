"""skip-gradient: the backward pass favours skip connections; the forward pass is untouched."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from conftest import MOBILENET_SETS, RECIPES
from pipeline_core.errors import RecipeError
from pipeline_core.model import ModelAdapter, ModelInfo
from pipeline_core.recipe.schedule import Schedule
from pipeline_core.testing import TinyNet, check_step, run_recipe_dict, tiny_recipe
from pipeline_plugins.transform.skip_gradient import SkipGradient, SkipGradientParams, residual_branches


class _Residual(nn.Module):
    """``x + a * x`` in the shape of torchvision's MobileNetV2 block."""

    use_res_connect = True

    def __init__(self, a: float):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1) * a)

    def forward(self, x):
        return x + self.conv(x)


class _ResNetOfOne(nn.Module):
    def __init__(self, a: float = 3.0):
        super().__init__()
        self.block = _Residual(a)

    def forward(self, x):
        return self.block(x).mean((2, 3))


class _Ctx:
    def __init__(self, module: nn.Module):
        self.model = ModelAdapter(module, ModelInfo(categories=["0", "1", "2"], mean=(0.0,) * 3, std=(1.0,) * 3,
                                                    size=None))
        self.device = torch.device("cpu")
        self.iteration = 0


def _grad(ctx, step: SkipGradient | None, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    view = step.apply(ctx, x) if step is not None else x
    ctx.model(view).logits.sum().backward()
    return x.grad


def test_the_branch_gradient_is_scaled_by_gamma_and_the_forward_pass_is_not():
    ctx = _Ctx(_ResNetOfOne(a=3.0))
    x = torch.rand(1, 3, 4, 4)
    plain = _grad(ctx, None, x)
    before = ctx.model(x).logits
    step = SkipGradient(SkipGradientParams(gamma=0.25), 0, Schedule.always(4))
    step.bind(None)
    step.setup(ctx)
    assert step.paths == ["block.conv"] and step.record() == {"branches": 1}
    scaled = _grad(ctx, step, x)
    # d/dx of mean(x + 3x) is (1 + 3) / 16 per pixel; with the branch's share times 0.25: (1 + 0.75) / 16
    assert torch.allclose(plain, torch.full_like(x, 4 / 16))
    assert torch.allclose(scaled, torch.full_like(x, 1.75 / 16))
    assert torch.equal(ctx.model(x).logits, before)


def test_outside_its_schedule_the_gradient_is_the_plain_one():
    ctx = _Ctx(_ResNetOfOne(a=3.0))
    step = SkipGradient(SkipGradientParams(gamma=0.25), 0, Schedule.always(4))
    step.setup(ctx)
    x = torch.rand(1, 3, 4, 4)
    assert torch.allclose(_grad(ctx, step, x), torch.full_like(x, 1.75 / 16))
    ctx.iteration = 1  # the loop did not call the step this iteration
    assert torch.allclose(_grad(ctx, None, x), torch.full_like(x, 4 / 16))
    ctx.iteration = 0
    with torch.no_grad():  # scoring passes without gradients go through the hook untouched
        scored = ctx.model(x).logits
    assert torch.equal(scored, ctx.model(x).logits.detach())


def test_residual_blocks_are_found_in_torchvision_models_and_not_in_inception():
    mobilenet = residual_branches(torchvision.models.mobilenet_v2())
    assert len(mobilenet) == 10 and mobilenet[0] == "features.3.conv"
    assert residual_branches(torchvision.models.resnet18()) == [f"layer{i}.{j}.bn2" for i in (1, 2, 3, 4)
                                                                for j in (0, 1)]
    assert len(residual_branches(torchvision.models.resnet50())) == 16
    assert residual_branches(torchvision.models.googlenet(init_weights=False, aux_logits=False)) == []


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_residual_models_run_forward_and_backward_with_it(arch):
    # ResNet blocks add the skip to the branch's output in place: the hook must not return a view
    torch.manual_seed(0)
    ctx = _Ctx(getattr(torchvision.models, arch)().eval())
    x = torch.rand(1, 3, 64, 64)
    plain, before = _grad(ctx, None, x), ctx.model(x).logits
    step = SkipGradient(SkipGradientParams(gamma=0.5), 0, Schedule.always(4))
    step.setup(ctx)
    scaled = _grad(ctx, step, x)
    assert torch.equal(ctx.model(x).logits, before)
    assert torch.isfinite(scaled).all() and float((scaled - plain).norm()) > 0.01 * float(plain.norm())


def test_a_model_without_skips_or_a_wrong_layer_is_refused_in_one_line():
    with pytest.raises(RecipeError, match="no residual blocks") as info:
        SkipGradient(SkipGradientParams()).setup(_Ctx(TinyNet().eval()))
    assert "\n" not in str(info.value)
    lenient = SkipGradient(SkipGradientParams(required=False))
    ctx = _Ctx(TinyNet().eval())
    lenient.setup(ctx)
    assert lenient.record() == {"branches": 0,
                                "note": "the model has no residual blocks: its gradient is the plain one"}
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(lenient.apply(ctx, x), x)
    with pytest.raises(RecipeError, match="has no module 'features.9'"):
        SkipGradient(SkipGradientParams(layers=["features.9"])).setup(_Ctx(TinyNet().eval()))
    with pytest.raises(RecipeError, match="use on: view"):
        SkipGradient(SkipGradientParams(on="image")).bind(None)
    with pytest.raises(ValueError):
        SkipGradientParams(gamma=0)


def test_skip_gradient_contract_on_named_layers(tmp_path):
    check_step(SkipGradient, {"gamma": 0.5, "layers": ["features.3"]})
    recipe = tiny_recipe(iterations=4)
    recipe["steps"].insert(1, {"step": "skip-gradient", "gamma": 0.3, "layers": ["features.0"], "until": 0.5})
    result = run_recipe_dict(recipe, tmp_path / "run")
    assert result.record["step_facts"] == {"step 1 (skip-gradient)": {"branches": 1}}


@pytest.mark.slow
def test_best_class_recipe_runs_it_on_the_real_mobilenet(cli, mobilenet_path, tmp_path):
    """The recipe's own skip-gradient entry on the real model finds its ten residual blocks.

    Small on purpose (one 64 px image of one of its classes, 4 iterations: about two seconds of
    loop): the branches are counted on the model, whatever the batch or the image size."""
    out = tmp_path / "run"
    sets = [a for s in MOBILENET_SETS for a in ("--set", s)]
    small = ["iterations=4", "batch=1", "L1-loss.target=castle", "steps.0.size=64", "output.video=false"]
    proc = cli("run", str(RECIPES / "best_class.yaml"), *sets, *(a for s in small for a in ("--set", s)),
               "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["step_facts"]["step 2 (skip-gradient)"] == {"branches": 10, "erosion": 0.4}


class _SeededCtx(_Ctx):
    def __init__(self, module: nn.Module, seed: int = 0):
        super().__init__(module)
        self.seed = seed

    def generator(self, step):
        if not hasattr(self, "_generator"):
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator


def _eroded_logits(seed: int, iterations: int = 2) -> list[torch.Tensor]:
    ctx = _SeededCtx(_ResNetOfOne(a=3.0), seed)
    step = SkipGradient(SkipGradientParams(gamma=1.0, erosion=0.5), 0, Schedule.always(4))
    step.setup(ctx)
    x = torch.ones(3, 3, 4, 4)
    out = []
    for i in range(iterations):
        ctx.iteration = i
        out.append(ctx.model(step.apply(ctx, x.clone().requires_grad_(True))).logits.detach()[:, 0])
    return out


def test_erosion_scales_each_images_branch_by_its_own_draw_and_replays_from_the_seed():
    first, second = _eroded_logits(seed=0)
    # x + 3 * u * x with u in [0.5, 1.5]: the mean is 1 + 3u, between 2.5 and 5.5, per image
    assert ((first >= 2.5) & (first <= 5.5)).all() and ((second >= 2.5) & (second <= 5.5)).all()
    assert len(set(first.tolist())) == 3  # each image of the batch sees its own model
    assert not torch.equal(first, second)  # and each iteration another one
    again = _eroded_logits(seed=0)
    assert torch.equal(again[0], first) and torch.equal(again[1], second)
    assert not torch.equal(_eroded_logits(seed=1)[0], first)


def test_without_erosion_the_forward_pass_draws_nothing():
    ctx = _Ctx(_ResNetOfOne(a=3.0))  # no generator at all: it would fail if one were drawn on
    step = SkipGradient(SkipGradientParams(gamma=0.5), 0, Schedule.always(4))
    step.setup(ctx)
    x = torch.ones(2, 3, 4, 4)
    assert torch.equal(ctx.model(step.apply(ctx, x)).logits[:, 0], torch.full((2,), 4.0))
