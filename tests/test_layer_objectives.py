"""Objectives on the inside of the model: each value and gradient against its formula, their
contract (check_step), the plugin API a third-party layer objective uses, and their errors.

The formula checks run on the tiny model of the testing kit, whose layers are small enough to
write each objective out by hand with torch.autograd; the contract checks run every objective
through check_step, which hooks the layer it asks for.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline_core.errors import RecipeError
from pipeline_core.hookspecs import API_VERSION, hookimpl
from pipeline_core.model import ModelAdapter, ModelOutput, layer_head
from pipeline_core.objectives import index_list
from pipeline_core.recipe.plan import Plan
from pipeline_core.recipe.schedule import Schedule
from pipeline_core.context import RunContext
from pipeline_core.testing import TINY_CLASSES, TINY_LAYERS, TINY_MODEL, TINY_SIZE, TinyNet, check_step, registered, \
    run_recipe_dict, tiny_recipe
from pipeline_plugins.objective.channel import Channel
from pipeline_plugins.objective.channel_interpolate import ChannelInterpolate
from pipeline_plugins.objective.direction import Direction
from pipeline_plugins.objective.diversity import Diversity
from pipeline_plugins.objective.layer import DeepDream
from pipeline_plugins.objective.neuron import Neuron

B = 4


def make(cls, params: dict, batch: int = B, heads=None):
    """The step bound and set up on the tiny model; (step, ctx)."""
    step = cls(cls.Params.model_validate(params), 0, Schedule.always(4))
    plan = Plan(iterations=4, batch=batch, categories=list(TINY_CLASSES), model_name=TINY_MODEL.name,
                model_size=TINY_SIZE, seed=0)
    step.bind(plan)
    adapter = ModelAdapter(TinyNet(), TINY_MODEL.info, {}, sorted(heads or step.heads))
    ctx = RunContext(plan=plan, device=torch.device("cpu"), model=adapter)
    step.setup(ctx)
    return step, ctx


def image(batch: int = B, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)


def by_hand(x: torch.Tensor, path: str) -> torch.Tensor:
    """The layer's activations computed without hooks: the tiny model's modules called in order."""
    net = TinyNet().eval()
    h = (x - 0.5) / 0.5
    idx = int(path.split(".")[1])
    for i, m in enumerate(net.features):
        h = m(h)
        if i == idx:
            return h
    raise AssertionError(path)


def loss_and_grad(step, ctx, x):
    loss = step.loss(ctx, ctx.model(x), x)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss, grad


def expected(fn, x):
    x2 = x.detach().clone().requires_grad_(True)
    want = fn(x2)
    (grad,) = torch.autograd.grad(want.sum(), x2)
    return want, grad


def close(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-3, atol=1e-6)


# -- value and gradient against the formula -----------------------------------------------------


def test_channel_is_minus_weight_times_the_channel_mean_one_channel_per_image():
    step, ctx = make(Channel, {"layer": "features.3", "channel": "0-3", "weight": 2.0})
    x = image()
    want = expected(lambda x: -2.0 * by_hand(x, "features.3").mean((2, 3))[torch.arange(B), torch.arange(B)], x)
    close(loss_and_grad(step, ctx, x), want)


def test_minimize_flips_the_sign_and_images_limits_where_it_acts():
    step, ctx = make(Channel, {"layer": "features.3", "channel": 5, "sign": "minimize", "images": [1, 3]})
    x = image()

    def fn(x):
        mean = by_hand(x, "features.3").mean((2, 3))[:, 5]
        return mean * torch.tensor([0.0, 1.0, 0.0, 1.0])

    got = loss_and_grad(step, ctx, x)
    close(got, expected(fn, x))
    assert got[1][[0, 2]].abs().sum() == 0, "images outside 'images' get no gradient"


def test_neuron_reads_the_centre_by_default_and_a_given_position():
    x = image()
    step, ctx = make(Neuron, {"layer": "features.3", "channel": [2, 7]})
    assert step.pos == (8, 8)  # the 16x16 grid's centre
    idx = torch.tensor([2, 7, 2, 7])
    close(loss_and_grad(step, ctx, x), expected(lambda x: -by_hand(x, "features.3")[torch.arange(B), idx, 8, 8], x))
    step, ctx = make(Neuron, {"layer": "features.3", "channel": 1, "x": 3, "y": 12})
    close(loss_and_grad(step, ctx, x), expected(lambda x: -by_hand(x, "features.3")[:, 1, 12, 3], x))


def test_direction_is_the_dot_product_times_the_floored_cosine_to_a_power(tmp_path):
    v = torch.linspace(-1, 1, 8)
    np.save(tmp_path / "v.npy", v.numpy())
    x = image()

    def fn(x, power):
        a = by_hand(x, "features.2").flatten(2).transpose(1, 2)  # (B, positions, C)
        dot = a @ v
        cos = dot / (a.norm(dim=2) * v.norm() + 1e-8)
        return -(dot * cos.clamp(min=0.1) ** power).mean(1)

    step, ctx = make(Direction, {"layer": "features.2", "direction": v.tolist(), "power": 2})
    close(loss_and_grad(step, ctx, x), expected(lambda x: fn(x, 2), x))
    # the same vector from a file (relative to the recipe's folder) and plain dot product at power 0
    step = Direction(Direction.Params.model_validate({"layer": "features.2", "direction": "v.npy", "power": 0}), 0,
                     Schedule.always(4))
    plan = Plan(iterations=4, batch=B, categories=list(TINY_CLASSES), model_name=TINY_MODEL.name,
                model_size=TINY_SIZE, seed=0, base_dir=tmp_path)
    step.bind(plan)
    torch.testing.assert_close(step.vector, v)
    for suffix, write in ((".pt", lambda p: torch.save(v, p)), (".txt", lambda p: np.savetxt(p, v.numpy()))):
        write(tmp_path / f"v{suffix}")
        other = Direction(Direction.Params.model_validate({"layer": "features.2", "direction": f"v{suffix}"}), 0,
                          Schedule.always(4))
        other.bind(plan)
        torch.testing.assert_close(other.vector, v)


def test_layer_is_the_weighted_mean_square_of_several_layers():
    step, ctx = make(DeepDream, {"layer": {"features.2": 1.0, "features.4": 0.25}, "weight": 3.0})
    assert step.heads == {layer_head("features.2"), layer_head("features.4")}
    x = image()

    def fn(x):
        a, b = by_hand(x, "features.2"), by_hand(x, "features.4")
        return -3.0 * (a.pow(2).flatten(1).mean(1) + 0.25 * b.pow(2).flatten(1).mean(1))

    close(loss_and_grad(step, ctx, x), expected(fn, x))


def test_channel_interpolate_walks_the_batch_from_start_to_end():
    step, ctx = make(ChannelInterpolate, {"layer": "features.3", "start": 1, "end": 9})
    x = image()
    t = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])

    def fn(x):
        m = by_hand(x, "features.3").mean((2, 3))
        return -((1 - t) * m[:, 1] + t * m[:, 9])

    close(loss_and_grad(step, ctx, x), expected(fn, x))


def test_diversity_is_each_images_mean_cosine_similarity_of_gram_matrices():
    step, ctx = make(Diversity, {"layer": "features.3", "weight": 0.5})
    x = image()

    def fn(x):
        a = by_hand(x, "features.3").flatten(2)
        g = torch.stack([(ai @ ai.T / ai.shape[1]).flatten() for ai in a])
        sims = torch.stack([torch.stack([F.cosine_similarity(g[i], g[j], dim=0) for j in range(B) if j != i]).mean()
                            for i in range(B)])
        return 0.5 * sims  # 'minimize' by default: the loss is the similarity

    close(loss_and_grad(step, ctx, x), expected(fn, x))


# -- what the adapter keeps, and the speed options ----------------------------------------------


def test_only_the_layers_in_use_are_hooked_and_nothing_outlives_the_forward_pass():
    step, ctx = make(Channel, {"layer": "features.3", "channel": 0})
    model = ctx.model
    hooked = [name for name, m in model.module.named_modules() if m._forward_hooks]
    assert hooked == ["features.3"]
    out = model(image().detach())
    assert set(out.heads) == {"layer:features.3"} and out.layer("features.3").dtype == torch.float32
    assert model._captured == {}, "the hook's capture is dropped after each forward pass"
    with pytest.raises(KeyError, match="list layer_head"):
        out.layer("features.2")


def test_bf16_and_channels_last_give_float32_activations_and_the_same_objective():
    x = image().detach()
    base, ctx = make(Channel, {"layer": "features.3", "channel": "0-3"})
    want = base.loss(ctx, ctx.model(x), x)
    for options in ({"precision": "bf16"}, {"channels_last": True}):
        adapter = ModelAdapter(TinyNet(), TINY_MODEL.info, {}, sorted(base.heads), **options)
        ctx2 = RunContext(plan=ctx.plan, device=ctx.device, model=adapter)
        out = adapter(x.clone().requires_grad_(True))
        assert out.layer("features.3").dtype == torch.float32
        got = base.loss(ctx2, out, x)
        tol = 0.05 if "precision" in options else 1e-5
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_per_image_averages_a_layer_over_the_views_of_each_image():
    a = torch.arange(2 * 3 * 2, dtype=torch.float32).view(6, 2)  # 3 views of 2 images
    out = ModelOutput(torch.zeros(6, 10), {"layer:f": a.view(6, 2, 1, 1)}).per_image(2)
    torch.testing.assert_close(out.layer("f").view(2, 2), a.view(3, 2, 2).mean(0))


# -- errors --------------------------------------------------------------------------------------


def test_a_channel_out_of_range_says_how_many_channels_the_layer_has():
    with pytest.raises(RecipeError, match=r"channel 16 is out of range: layer 'features.3' has 16 channels \(0..15\)"):
        make(Channel, {"layer": "features.3", "channel": [0, 16]}, batch=2)
    with pytest.raises(RecipeError, match="has 8 channels"):
        make(ChannelInterpolate, {"layer": "features.2", "start": 0, "end": 8})
    with pytest.raises(RecipeError, match="the direction has 3 numbers but layer 'features.2' has 8 channels"):
        make(Direction, {"layer": "features.2", "direction": [1, 2, 3]})
    with pytest.raises(RecipeError, match=r"x=40 is outside layer 'features.3', whose grid is 16x16"):
        make(Neuron, {"layer": "features.3", "channel": 0, "x": 40})


@pytest.mark.parametrize("value, message", [
    ("3-1", "runs backwards"), ("a-b", "FIRST-LAST"), ([], "empty"), ([0, -1], "negative"),
    ("0-99999999999", "more than the 4096 images")])
def test_index_ranges_are_read_or_refused_clearly(value, message):
    with pytest.raises(RecipeError, match=message):
        index_list(value, "channel")
    assert index_list("2-5", "channel") == [2, 3, 4, 5] and index_list(7, "channel") == [7]


def test_a_recipe_with_a_wrong_channel_or_layer_fails_before_the_first_iteration(tmp_path):
    recipe = tiny_recipe(batch=2)
    recipe["steps"][1] = {"step": "channel", "layer": "features.33", "channel": 0}
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+: step 1 \(channel\): key 'layer': .*no layer "
                                          r"'features.33'; nearest: features.3"):
        run_recipe_dict(recipe, tmp_path / "bad")
    recipe["steps"][1] = {"step": "channel", "layer": "features.3", "channel": 99}
    result = run_recipe_dict(recipe, tmp_path / "range", check=False)
    assert result.status == "failed" and result.iterations_done == 0
    assert "channel 99 is out of range: layer 'features.3' has 16 channels" in result.message
    recipe["steps"][1] = {"step": "diversity", "layer": "features.3", "images": [1]}
    with pytest.raises(RecipeError, match="needs at least two"):
        run_recipe_dict(recipe, tmp_path / "div")


# -- the contract and the plugin API -----------------------------------------------------------


# every built-in layer objective also meets the contract: tests/test_steps.py and tests/test_plugins.py
# run check_step on each built-in step, and tests/test_resume.py resumes and replays each


def _guide_example() -> type:
    """The layer objective docs/plugins.md shows, executed as a reader would copy it."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = text[text.index("### An objective on a layer"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    return namespace["EdgeEnergy"]


EdgeEnergy = _guide_example()


class _EdgePlugin:
    PIPELINE_API = ">=1.2,<2"

    @hookimpl
    def register_steps(self, registry):
        registry.add_step(EdgeEnergy)


def test_the_guides_layer_objective_works_through_the_public_api(isolated_registry, tmp_path):
    assert API_VERSION.split(".")[0] == "1" and float(API_VERSION) >= 1.2
    assert set(TINY_LAYERS) <= {n for n, _ in TinyNet().named_modules() if n}
    check_step(EdgeEnergy, {"layer": "features.3", "channel": 4}, dtypes=(torch.float32,))
    with registered(_EdgePlugin(), isolated_registry, name="edge-plugin"):
        recipe = tiny_recipe(batch=2)
        recipe["steps"][1] = {"step": "edge-energy", "layer": "features.3", "channel": 4}
        result = run_recipe_dict(recipe, tmp_path / "run", registry=isolated_registry)
    assert result.status == "completed"


def test_a_layer_objective_runs_under_bf16_channels_last_and_several_views(tmp_path):
    recipe = tiny_recipe(batch=2, performance={"precision": "bf16", "channels_last": True})
    recipe["steps"][1:2] = [{"step": "crops", "views": 3, "size": 24},
                            {"step": "neuron", "layer": "features.3", "channel": [1, 2]},
                            {"step": "layer", "layer": "features.2", "weight": 0.1}]
    result = run_recipe_dict(recipe, tmp_path / "run")
    assert result.status == "completed" and result.iterations_done == 4


class _NoSkeletonPlugin:
    """A model plugin that offers no skeleton: its layer paths can be checked only once it is built."""

    @hookimpl
    def register_models(self, registry):
        from dataclasses import replace

        registry.add_model(replace(TINY_MODEL, name="tiny-no-skeleton", skeleton=None))


def test_without_a_skeleton_a_wrong_path_fails_when_the_model_is_built_still_on_its_line(isolated_registry, tmp_path):
    with registered(_NoSkeletonPlugin(), isolated_registry, name="no-skeleton"):
        recipe = tiny_recipe(batch=2, model={"name": "tiny-no-skeleton"})
        recipe["steps"][1] = {"step": "channel-interpolate", "layer": "features.3", "start": 0, "end": 1,
                              "end_layer": "features.44"}
        result = run_recipe_dict(recipe, tmp_path / "run", registry=isolated_registry, check=False)
    assert result.status == "failed" and result.iterations_done == 0
    assert re.search(r"run\.recipe\.yaml:\d+: step 1 \(channel-interpolate\): key 'end_layer': model "
                     r"'tiny-no-skeleton' has no layer 'features.44'; nearest: features.4", result.message)


@pytest.mark.parametrize("step, names", [
    ({"step": "neuron", "layer": "features.3", "channel": [1, 4]}, ["000_features-3-neuron-1.png",
                                                                     "001_features-3-neuron-4.png"]),
    ({"step": "layer", "layer": "features.2"}, ["000_layer-features-2.png", "001_layer-features-2.png"]),
    ({"step": "channel-interpolate", "layer": "features.3", "start": 1, "end": 6},
     ["000_features-3-ch-1-to-6-0-00.png", "001_features-3-ch-1-to-6-1-00.png"]),
    ({"step": "channel", "layer": "features.3", "channel": 2, "images": [1]}, ["000_image.png",
                                                                              "001_features-3-ch-2.png"]),
])
def test_images_without_a_class_are_named_for_what_their_objective_made(step, names, tmp_path):
    recipe = tiny_recipe(iterations=2, batch=2)
    recipe["steps"][1:2] = [step]
    result = run_recipe_dict(recipe, tmp_path / "run")
    assert [im["file"] for im in result.record["images"]] == names
    assert all((tmp_path / "run" / "images" / n).is_file() for n in names)
