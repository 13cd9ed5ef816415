"""MACO's priors: phase-image (natural magnitude, optimised phase), crops (K antialiased views), nadam."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from pipeline_core.context import RunContext
from pipeline_core.errors import RecipeError
from pipeline_core.model import ModelAdapter, ModelOutput
from pipeline_core.recipe.plan import Plan
from pipeline_core.recipe.loader import entry_model
from pipeline_core.recipe.schedule import Schedule
from pipeline_core.testing import TINY_CLASSES, TINY_MODEL, TinyNet, check_step, run_recipe_dict, tiny_recipe
from pipeline_plugins.transform.crops import Crops
from pipeline_plugins.update.nadam import NAdam
from pipeline_plugins.param.phase_image import (NATURAL_AMPLITUDE, NATURAL_EXPONENT, PhaseImage, PhaseImageStep,
                                          natural_magnitude)

from conftest import MOBILENET_SETS, PHOTOS


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors on a shared CPU run faster on one thread than fighting over two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def context(batch: int = 3, seed: int = 0, iterations: int = 8, size: int = 32, device: str = "cpu") -> RunContext:
    plan = Plan(iterations=iterations, batch=batch, categories=list(TINY_CLASSES), model_name=TINY_MODEL.name,
                model_size=size, seed=seed)
    info = TINY_MODEL.info
    return RunContext(plan=plan, device=torch.device(device), model=ModelAdapter(TinyNet(), info, device=device))


def make(cls, ctx: RunContext, schedule: Schedule | None = None, **params):
    entry = entry_model(cls).model_validate(params)
    own = cls.Params.model_validate({k: getattr(entry, k) for k in cls.Params.model_fields})
    step = cls(own, 0, schedule or (Schedule.always(ctx.iterations) if cls.kind.per_iteration else None))
    step.bind(ctx.plan)
    step.setup(ctx)
    return step


def photo(name: str = "flower.jpg", size: int = 64) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    img = Image.open(PHOTOS / name).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None].contiguous()


def spectrum_mask(param: PhaseImage) -> torch.Tensor:
    """True where the magnitude is held exactly: all bins but the few real (self-conjugate) ones."""
    cols, _, own = param._edges()
    mask = torch.ones(param.magnitude.shape, dtype=torch.bool)
    for c in cols.tolist():
        mask[..., c] &= ~own.view(-1).cpu()
    return mask


# -- phase-image ---------------------------------------------------------------------------------


def test_phase_image_passes_the_step_contract():
    check_step(PhaseImageStep, {"noise": 0.1})
    check_step(PhaseImageStep, {"photo_magnitude": 0.5, "decay": 1.0}, run=False)


def test_natural_magnitude_is_the_fitted_power_law_at_any_size():
    for h, w in [(64, 64), (48, 80), (33, 17)]:
        m = natural_magnitude(h, w)
        assert m.shape == (3, h, w // 2 + 1)
        f = 4 / w  # the bin at (0, 4): 4 / w cycles per pixel along x
        for c in range(3):
            want = NATURAL_AMPLITUDE[c] * f ** -NATURAL_EXPONENT[c]
            assert float(m[c, 0, 4]) == pytest.approx(want, rel=1e-5)
        lowest = NATURAL_AMPLITUDE[0] * max(h, w) ** NATURAL_EXPONENT[0]  # at 1 / max(h, w) cycles per pixel
        assert float(m[0, 0, 0]) == pytest.approx(lowest, rel=1e-5)  # DC: the lowest frequency's gain


def test_optimising_changes_only_the_phase_never_the_magnitude():
    g = torch.Generator().manual_seed(0)
    param = PhaseImage(torch.full((2, 3, 40, 36), 0.5), generator=g)
    magnitude = param.magnitude.clone()
    before_image = param.image().detach().clone()
    before_phase = param.phase.detach().clone()
    spectrum = torch.fft.rfft2(param.decorrelated().detach(), norm="ortho").abs()
    mask = spectrum_mask(param)
    assert torch.allclose(spectrum[mask], magnitude[mask], rtol=1e-4, atol=1e-7)

    target = torch.rand(before_image.shape, generator=g)
    opt = torch.optim.Adam(param.parameters(), lr=0.1)
    for _ in range(10):
        opt.zero_grad()
        ((param.image() - target) ** 2).mean().backward()
        opt.step()

    assert param.parameters()[0] is param.phase and len(param.parameters()) == 1
    assert not torch.allclose(param.phase, before_phase)
    assert (param.image() - before_image).abs().mean() > 0.01  # the picture really moved
    assert torch.equal(param.magnitude, magnitude)
    after = torch.fft.rfft2(param.decorrelated().detach(), norm="ortho").abs()
    assert torch.allclose(after[mask], magnitude[mask], rtol=1e-4, atol=1e-7)
    assert (after[~mask] <= magnitude[~mask] * (1 + 1e-5) + 1e-7).all()  # the real bins: magnitude * |cos|


def test_flat_start_gets_seeded_random_phases():
    grey = torch.full((2, 3, 32, 32), 0.5)
    a = PhaseImage(grey, generator=torch.Generator().manual_seed(1)).image().detach()
    b = PhaseImage(grey, generator=torch.Generator().manual_seed(1)).image().detach()
    c = PhaseImage(grey, generator=torch.Generator().manual_seed(2)).image().detach()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a[0], a[1])  # every image its own draw
    assert 0.1 < float(a.std()) < 0.4 and 0.3 < float(a.mean()) < 0.7  # a natural spread, not saturated


def test_photo_start_keeps_the_photo_structure_and_photo_magnitude_keeps_the_photo():
    x = photo()
    g = torch.Generator().manual_seed(0)
    phase_only = PhaseImage(x, generator=g).image().detach()
    whole = PhaseImage(x, photo_magnitude=1.0, generator=g).image().detach()
    random = PhaseImage(torch.full_like(x, 0.5), generator=g).image().detach()

    def corr(a, b):
        a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    assert corr(whole, x) > 0.95  # the photo itself, up to contrast
    assert corr(phase_only, x) > 0.5  # its edges and layout survive the natural magnitude
    assert abs(corr(random, x)) < 0.3
    # the phase read is the photo's own: the decorrelated image's phase away from the real bins
    p = PhaseImage(x, generator=g)
    logits = torch.logit(x.clamp(1e-3, 1 - 1e-3))
    want = torch.angle(torch.fft.rfft2(torch.einsum("ij,bjhw->bihw", p.unmix, logits), norm="ortho"))
    got = p.effective_phase().detach()
    mask = spectrum_mask(p)
    diff = torch.remainder(got - want + torch.pi, 2 * torch.pi) - torch.pi
    assert diff[mask].abs().max() < 1e-4


def test_set_image_of_its_own_render_changes_nothing():
    param = PhaseImage(torch.full((2, 3, 32, 40), 0.5), generator=torch.Generator().manual_seed(3))
    first = param.image().detach()
    phase = param.phase
    param.set_image(first)
    assert param.phase is phase  # same size: the same tensor, updated in place (an optimiser keeps it)
    assert (param.image().detach() - first).abs().max() < 1e-4


def test_set_image_at_a_new_size_rebuilds_the_magnitude():
    param = PhaseImage(torch.full((2, 3, 32, 32), 0.5), generator=torch.Generator().manual_seed(3))
    bigger = torch.nn.functional.interpolate(param.image().detach(), size=(48, 40), mode="bilinear")
    param.set_image(bigger)
    assert param.image().shape == (2, 3, 48, 40)
    assert param.magnitude.shape == param.phase.shape == (2, 3, 48, 21)
    assert torch.allclose(param.magnitude[0] / param.magnitude[0].pow(2).mean().sqrt(),
                          natural_magnitude(48, 40) / natural_magnitude(48, 40).pow(2).mean().sqrt(), rtol=1e-4)
    assert param.phase.requires_grad


def test_state_dict_round_trips_across_size_and_photo_magnitude():
    g = torch.Generator().manual_seed(5)
    source = PhaseImage(photo(size=48).expand(2, -1, -1, -1), photo_magnitude=0.5, noise=0.3, generator=g)
    with torch.no_grad():
        source.phase.add_(0.2)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    other = PhaseImage(torch.full((2, 3, 32, 32), 0.5), generator=torch.Generator().manual_seed(9))
    other.load_state_dict(state)
    assert torch.equal(other.image(), source.image())
    assert other.phase.requires_grad
    # and back in place, same size: the phase tensor is kept (the optimiser's moments stay valid)
    phase = other.phase
    other.load_state_dict(other.state_dict())
    assert other.phase is phase and torch.equal(other.image(), source.image())


# -- crops ---------------------------------------------------------------------------------------


def colours(batch: int, h: int = 40, w: int = 48) -> torch.Tensor:
    """Image b is a flat colour of its own, so each view says where it came from."""
    levels = torch.linspace(0.1, 0.9, batch)
    return torch.stack([levels, 1 - levels, levels * 0 + 0.5], 1).view(batch, 3, 1, 1).expand(batch, 3, h, w).contiguous()


def test_crops_pass_the_step_contract():
    # check_step wants a view transform to keep the batch, so only K = 1 can meet it
    check_step(Crops, {"views": 1, "box": [0.9, 0.5], "noise": 0.05, "flip": True})


def test_crops_are_k_times_b_views_in_view_major_order():
    ctx = context(batch=3, size=24)
    step = make(Crops, ctx, views=4, box=0.5, noise=0.0)
    x = colours(3)
    y = step.apply(ctx, x)
    assert y.shape == (12, 3, 24, 24) and y.dtype == x.dtype
    for k in range(4):
        for b in range(3):
            assert torch.allclose(y[k * 3 + b], x[b, :, :24, :24], atol=1e-5), (k, b)
    # the loop's per-image mean of the model's outputs then averages exactly each image's own K views
    per_view = y.mean(dim=(2, 3))  # (12, 3), standing in for the model's logits
    assert torch.allclose(ModelOutput(per_view).per_image(3).logits, x.mean(dim=(2, 3)), atol=1e-5)


def test_crops_default_size_is_the_models_and_can_be_set():
    ctx = context(batch=2, size=20)
    assert make(Crops, ctx, views=2).apply(ctx, colours(2)).shape == (4, 3, 20, 20)
    assert make(Crops, ctx, views=3, size=16).apply(ctx, colours(2)).shape == (6, 3, 16, 16)


def test_crops_are_seeded_and_new_every_iteration():
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))

    def views(seed):
        ctx = context(batch=2, seed=seed)
        step = make(Crops, ctx, views=3, box=0.6, spread=0.2, noise=0.05, flip=True)
        out = []
        for it in range(3):
            ctx.iteration = it
            out.append(step.apply(ctx, x))
        return out

    a, b, c = views(1), views(1), views(2)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])


def test_gradient_reaches_every_image_through_every_view():
    ctx = context(batch=3, size=16)
    step = make(Crops, ctx, views=5, box=[0.9, 0.3], spread=0.3, noise=0.1)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_(True)
    y = step.apply(ctx, x)
    assert y.dtype == torch.float64
    (grad,) = torch.autograd.grad(y[2 * 3 + 1].sum(), [x], retain_graph=True)  # one view of image 1
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0
    (grad,) = torch.autograd.grad((y * torch.rand_like(y)).sum(), [x])
    assert torch.isfinite(grad).all() and (grad.flatten(1).abs().sum(1) > 0).all()


def test_box_moves_linearly_over_the_steps_active_window():
    ctx = context(iterations=101)
    step = make(Crops, ctx, schedule=Schedule(start=20, stop=61), box=[0.5, 0.1])
    assert step.box_fraction(20, 0.2) == pytest.approx(0.5)
    assert step.box_fraction(40, 0.4) == pytest.approx(0.3)
    assert step.box_fraction(60, 0.6) == pytest.approx(0.1)
    assert make(Crops, ctx, box=0.25).box_fraction(50, 0.5) == 0.25


def test_crops_stay_inside_the_image_and_centre_around_the_middle():
    ctx = context(batch=1, size=8)
    h = w = 64
    ramp = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(1, 3, h, w) / (w - 1)
    step = make(Crops, ctx, views=200, box=0.25, spread=0.1, noise=0.0)
    y = step.apply(ctx, ramp.contiguous())
    lo, hi = y[:, 0].amin(dim=(1, 2)), y[:, 0].amax(dim=(1, 2))
    assert (lo >= -1e-6).all() and (hi <= 1 + 1e-6).all()
    assert float((hi - lo).mean()) == pytest.approx(14 / 63, abs=0.01)  # 8 samples across 16 of the 64 columns
    centres = (lo + hi) / 2
    assert abs(float(centres.mean()) - 0.5) < 0.03 and 0.05 < float(centres.std()) < 0.15


def test_crops_antialias_when_shrinking():
    # a one-pixel checkerboard seen whole at an eighth of its size is grey, not an aliased pattern
    ctx = context(batch=1, size=16)
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    board = ((yy + xx) % 2).float().view(1, 1, 128, 128).expand(1, 3, 128, 128).contiguous()
    y = make(Crops, ctx, views=2, box=1.0, spread=0.0, noise=0.0).apply(ctx, board)
    assert (y - 0.5).abs().max() < 0.05


def test_crops_refuse_on_image():
    ctx = context()
    with pytest.raises(RecipeError, match="on: view"):
        make(Crops, ctx, on="image")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_crops_on_cuda_match_the_cpu_without_noise():
    cpu, gpu = context(batch=2, size=24), context(batch=2, size=24, device="cuda")
    x = torch.rand(2, 3, 50, 50, generator=torch.Generator().manual_seed(0))
    a = make(Crops, cpu, views=3, box=0.7, noise=0.0).apply(cpu, x)
    b = make(Crops, gpu, views=3, box=0.7, noise=0.0).apply(gpu, x.cuda())
    assert b.device.type == "cuda" and torch.allclose(a, b.cpu(), atol=1e-4)
    assert make(Crops, gpu, views=3, noise=0.1).apply(gpu, x.cuda()).device.type == "cuda"


# -- nadam ---------------------------------------------------------------------------------------


def test_nadam_passes_the_step_contract_and_checkpoints_its_moments():
    check_step(NAdam, {"lr": 0.1})
    ctx = context()
    a, b = make(NAdam, ctx, lr=0.1), make(NAdam, ctx, lr=0.1)
    p, q = torch.zeros(4), torch.zeros(4)
    grads = [torch.tensor([1.0, -2.0, 3.0, 0.5]) * (i + 1) for i in range(4)]
    for g in grads[:2]:
        a.update(ctx, [p], [g])
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as a checkpoint holds it: a copy
    q.copy_(p)
    for g in grads[2:]:
        a.update(ctx, [p], [g])
        b.update(ctx, [q], [g])
    assert torch.equal(p, q)
    assert isinstance(a.optimizer, torch.optim.NAdam)


# -- in a run ------------------------------------------------------------------------------------


def maco_recipe(**changes) -> dict:
    recipe = tiny_recipe(**{"iterations": 6, "batch": 2, "seed": 4, **changes})
    recipe["steps"] = [
        {"step": "init-noise", "scale": 0.0, "offset": 0.5, "size": 40},
        {"step": "phase-image"},
        {"step": "crops", "views": 3, "box": [0.8, 0.4]},
        {"step": "jitter", "pixels": 2},
        {"step": "L1-loss", "target": [3, 7], "C": 1000, "lambda": 0},
        {"step": "nadam", "lr": 0.1},
    ]
    return recipe


def test_a_tiny_run_with_both_is_deterministic(tmp_path):
    a = run_recipe_dict(maco_recipe(), tmp_path / "a")
    b = run_recipe_dict(maco_recipe(), tmp_path / "b")
    assert a.status == b.status == "completed"
    for name in ("000_class-3.png", "001_class-7.png"):
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()


def test_a_tiny_run_stopped_and_resumed_ends_with_the_same_bytes(tmp_path, registry):
    from test_resume import SelfSignalPlugin, pngs, resume, run

    from pipeline_core.testing import registered

    with registered(SelfSignalPlugin(), registry):
        recipe = maco_recipe(iterations=8)
        recipe["steps"].insert(2, {"step": "test-self-signal", "at": 3, "on": "view"})
        reference = run(recipe, tmp_path / "reference", registry)
        assert reference.status == "completed", reference.message
        stopped = run(recipe, tmp_path / "run", registry, armed=True)
        assert stopped.status == "interrupted" and stopped.iterations_done == 4, stopped.message
        resumed = resume(tmp_path / "run", registry)
        assert resumed.status == "completed" and resumed.iterations_done == 8, resumed.message
        assert pngs(tmp_path / "run") == pngs(tmp_path / "reference")


@pytest.mark.slow
def test_the_real_command_runs_phase_image_and_crops_on_mobilenet(mobilenet_path, cli, tmp_path):
    recipe = tmp_path / "maco.yaml"
    recipe.write_text(
        "iterations: 3\nseed: 0\nbatch: 2\ndevice: cpu\nmodel:\n  name: mobilenet_v2\n"
        "steps:\n"
        "  - {step: init-noise, scale: 0.0, offset: 0.5, size: 160}\n"
        "  - {step: phase-image}\n"
        "  - {step: crops, views: 2, box: [0.6, 0.3]}\n"
        "  - {step: L1-loss, target: [goldfish, castle], C: 10000, lambda: 0}\n"
        "  - {step: nadam, lr: 0.1}\n"
        "output: {video: false}\n",
        encoding="utf-8")
    out = tmp_path / "run"
    sets = [arg for s in MOBILENET_SETS for arg in ("--set", s)]
    result = cli("run", str(recipe), *sets, "--out", str(out), "--quiet", "--set", "performance.threads=1")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["iterations_done"] == 3
    assert (out / "images" / "000_goldfish.png").is_file() and (out / "images" / "001_castle.png").is_file()
