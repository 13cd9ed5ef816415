"""jitter and random-scale: seeded, differentiable, shape-keeping changes of what the model sees."""

from __future__ import annotations

import pytest
import torch

from pipeline_core.context import RunContext
from pipeline_core.model import ModelAdapter
from pipeline_core.recipe.plan import Plan
from pipeline_core.recipe.loader import entry_model
from pipeline_core.recipe.schedule import Schedule
from pipeline_core.testing import TINY_CLASSES, TINY_MODEL, TinyNet, check_step, run_recipe_dict, tiny_recipe
from pipeline_plugins.transform.jitter import Jitter
from pipeline_plugins.transform.random_scale import RandomScale


def make(cls, seed: int = 0, batch: int = 3, **params):
    entry = entry_model(cls).model_validate(params)
    own = cls.Params.model_validate({k: getattr(entry, k) for k in cls.Params.model_fields})
    step = cls(own, 0, Schedule.always(8))
    plan = Plan(iterations=8, batch=batch, categories=list(TINY_CLASSES), model_name=TINY_MODEL.name,
                model_size=32, seed=seed)
    step.bind(plan)
    ctx = RunContext(plan=plan, device=torch.device("cpu"), model=ModelAdapter(TinyNet(), TINY_MODEL.info))
    step.setup(ctx)
    return step, ctx


def ramp(batch: int = 3, h: int = 20, w: int = 24) -> torch.Tensor:
    """An image whose every pixel is distinct, so a shift shows exactly."""
    y = torch.arange(h, dtype=torch.float32).view(h, 1) / h
    x = torch.arange(w, dtype=torch.float32).view(1, w) / w
    one = torch.stack([y + 0 * x, x + 0 * y, (x * y)])
    return one.expand(batch, 3, h, w).contiguous()


CASES = [
    (Jitter, {"pixels": 4}),
    (Jitter, {"pixels": 4, "fill": "noise"}),
    (Jitter, {"pixels": 4, "fill": "constant", "value": 0.2}),
    (Jitter, {"pixels": 30, "fill": "reflect"}),  # larger than the image: falls back to replicate
    (RandomScale, {"scale": [0.8, 1.25]}),
    (RandomScale, {"scale": [0.5, 0.9], "fill": "zeros", "mode": "bicubic"}),
]


@pytest.mark.parametrize("cls,params", CASES)
def test_view_transforms_pass_the_step_contract(cls, params):
    check_step(cls, params)


@pytest.mark.parametrize("cls,params", CASES)
def test_shape_kept_and_gradient_flows_back_to_every_image(cls, params):
    step, ctx = make(cls, **params)
    x = ramp().requires_grad_(True)
    y = step.apply(ctx, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    (grad,) = torch.autograd.grad((y * torch.rand_like(y)).sum(), [x])
    assert torch.isfinite(grad).all()
    assert (grad.flatten(1).abs().sum(1) > 0).all()


@pytest.mark.parametrize("cls,params", CASES)
def test_same_seed_same_views_other_seed_other_views(cls, params):
    x = ramp()
    a, ctx_a = make(cls, seed=1, **params)
    b, ctx_b = make(cls, seed=1, **params)
    c, ctx_c = make(cls, seed=2, **params)
    views_a = [a.apply(ctx_a, x) for _ in range(3)]
    views_b = [b.apply(ctx_b, x) for _ in range(3)]
    views_c = [c.apply(ctx_c, x) for _ in range(3)]
    assert all(torch.equal(p, q) for p, q in zip(views_a, views_b))
    assert not all(torch.equal(p, q) for p, q in zip(views_a, views_c))
    assert not torch.equal(views_a[0], views_a[1])  # a new draw every iteration


def test_jitter_is_a_whole_pixel_shift_within_the_limit():
    step, ctx = make(Jitter, pixels=3, fill="constant", value=-1.0, batch=8)
    x = ramp(batch=8)
    y = step.apply(ctx, x)
    for i in range(8):
        found = None
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                shifted = torch.full_like(x[i], -1.0)
                src = x[i][:, max(0, -dy):x.shape[2] - max(0, dy), max(0, -dx):x.shape[3] - max(0, dx)]
                shifted[:, max(0, dy):max(0, dy) + src.shape[1], max(0, dx):max(0, dx) + src.shape[2]] = src
                if torch.equal(shifted, y[i]):
                    found = (dy, dx)
        assert found is not None, f"image {i} is not a shift of at most 3 pixels"


def test_jitter_draws_differ_between_images_of_a_batch():
    step, ctx = make(Jitter, pixels=6, batch=8)
    y = step.apply(ctx, ramp(batch=8))
    assert len({tuple(img.flatten()[:50].tolist()) for img in y}) > 1


def test_random_scale_zooms_about_the_centre():
    step, ctx = make(RandomScale, scale=[1.5, 1.5], batch=1)
    x = torch.zeros(1, 3, 21, 21)
    x[..., 10, 10] = 1.0  # the centre pixel stays the brightest after zooming in
    y = step.apply(ctx, x)
    assert divmod(int(y[0, 0].argmax()), 21) == (10, 10)
    assert int((y[0, 0] > 0.05).sum()) > 1  # magnified: the dot now covers more than one pixel


def test_random_scale_rejects_a_reversed_range():
    with pytest.raises(Exception, match="scale"):
        RandomScale.Params.model_validate({"scale": [1.2, 0.8]})


def test_view_transforms_leave_the_stored_image_alone_and_replay_exactly(tmp_path, registry):
    steps = [
        {"step": "init-noise", "scale": 0.04, "offset": 0.5, "size": 32},
        {"step": "jitter", "pixels": 4, "fill": "noise"},
        {"step": "random-scale", "scale": [0.9, 1.1]},
        {"step": "L1-loss", "target": 3},
        {"step": "gradient-step", "lr": 0.01},
    ]
    first = run_recipe_dict(tiny_recipe(steps=steps), tmp_path / "a", registry=registry)
    second = run_recipe_dict(tiny_recipe(steps=steps), tmp_path / "b", registry=registry)
    assert first.status == second.status == "completed"
    name = first.record["images"][0]["file"]
    assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()
    from PIL import Image

    assert Image.open(tmp_path / "a" / "images" / name).size == (32, 32)


def test_jitter_crop_in_one_gather_matches_slicing_each_image_values_and_gradient():
    from pipeline_plugins.transform.jitter import _crop

    g = torch.Generator().manual_seed(3)
    padded = torch.rand(5, 3, 20, 24, generator=g, requires_grad=True)
    offsets = torch.randint(0, 9, (5, 2), generator=g)
    out = _crop(padded, offsets, 12, 16)
    sliced = torch.stack([padded[i, :, dy:dy + 12, dx:dx + 16] for i, (dy, dx) in enumerate(offsets.tolist())])
    assert torch.equal(out, sliced)
    weights = torch.rand(out.shape, generator=g)
    (grad_gather,) = torch.autograd.grad((out * weights).sum(), padded)
    (grad_slices,) = torch.autograd.grad((sliced * weights).sum(), padded)
    assert torch.equal(grad_gather, grad_slices)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the noise is drawn on the device there")
def test_jitter_noise_fill_is_drawn_on_the_gpu_and_seeded():
    from pipeline_core.context import seeded_draw

    like = torch.zeros(1, device="cuda")
    a = seeded_draw(torch.rand, (2, 3, 8, 8), torch.Generator().manual_seed(1), like)
    b = seeded_draw(torch.rand, (2, 3, 8, 8), torch.Generator().manual_seed(1), like)
    assert a.device.type == "cuda" and torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: host-device synchronisation only exists there")
def test_random_transforms_never_stop_the_gpu_to_copy_their_draws():
    """Each step's random draws travel to the GPU queued behind its work, not with a synchronisation."""
    from pipeline_plugins.transform.color_jitter import ColorJitter
    from pipeline_plugins.transform.rotate import Rotate

    steps = [(Jitter, {"pixels": 8, "fill": "noise"}), (RandomScale, {}), (Rotate, {"degrees": 10}),
             (ColorJitter, {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1})]
    x = torch.rand(4, 3, 32, 32, device="cuda")
    for cls, params in steps:
        step, ctx = make(cls, batch=4, **params)  # the steps' generators live on the CPU, as in a run
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = step.apply(ctx, x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert out.shape == x.shape and out.device.type == "cuda", cls.name
