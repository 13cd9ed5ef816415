"""Each built-in step's effect, measured."""

from __future__ import annotations

import torch

from pipeline_core.context import RunContext
from pipeline_core.model import ModelAdapter, ModelOutput
from pipeline_core.recipe.plan import Plan
from pipeline_core.recipe.schedule import Schedule
from pipeline_core.testing import TINY_CLASSES, TINY_MODEL, TinyNet, make_registry

REGISTRY = make_registry()


def make(name: str, iterations: int = 10, batch: int = 2, schedule: Schedule | None = None, seed: int = 0, **params):
    cls = REGISTRY.step(name)
    step = cls(cls.Params.model_validate(params), 1, schedule or Schedule.always(iterations))
    plan = Plan(iterations=iterations, batch=batch, categories=list(TINY_CLASSES), model_name="tiny",
                model_size=32, seed=seed)
    step.bind(plan)
    ctx = RunContext(plan=plan, device=torch.device("cpu"), model=ModelAdapter(TinyNet(), TINY_MODEL.info))
    step.setup(ctx)
    return step, ctx


def high_frequency_energy(x: torch.Tensor) -> float:
    spectrum = torch.fft.rfft2(x).abs() ** 2
    h = x.shape[-2]
    return float(spectrum[..., h // 4: 3 * h // 4, x.shape[-1] // 4:].sum())


def test_blur_lowers_high_frequency_energy():
    step, ctx = make("blur", kernel=5, sigma=1.5)
    noise = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    blurred = step.apply(ctx, noise)
    assert high_frequency_energy(blurred) < 0.2 * high_frequency_energy(noise)
    assert torch.allclose(blurred.mean(), noise.mean(), atol=0.01)  # smoothing, not darkening


def _centre_of_mass(x: torch.Tensor) -> tuple[float, float]:
    w = x[0].sum(0)
    ys = torch.arange(w.shape[0], dtype=torch.float32) + 0.5
    xs = torch.arange(w.shape[1], dtype=torch.float32) + 0.5
    total = w.sum()
    return float((w.sum(1) * ys).sum() / total / w.shape[0]), float((w.sum(0) * xs).sum() / total / w.shape[1])


def _cycle(mode: str) -> tuple[float, float]:
    step, ctx = make("interpolate", iterations=100, sizes=[256, 198, 160, 180, 200], mode=mode)
    x = torch.zeros(1, 3, 256, 256)
    x[..., 96:160, 96:160] = 1.0  # a bright square in the middle
    for it in range(76):
        ctx.iteration = it
        x = step.apply(ctx, x)
    return _centre_of_mass(x)


def test_bilinear_interpolate_keeps_the_centre_where_nearest_drifts_to_the_lower_right():
    cy, cx = _cycle("bilinear")
    assert abs(cy - 0.5) < 0.01 and abs(cx - 0.5) < 0.01
    ny, nx = _cycle("nearest")
    assert ny > 0.5 + 0.03 and nx > 0.5 + 0.03  # the article's drift toward the lower right


def test_color_jitter_is_exactly_reproducible_with_the_same_seed_and_differs_with_another():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    params = dict(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
    outs = []
    for seed in (7, 7, 8):
        step, ctx = make("color-jitter", seed=seed, batch=4, **params)
        outs.append(torch.cat([step.apply(ctx, x) for _ in range(3)]))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])
    assert not torch.equal(outs[0][:4], x)


def test_rotate_is_seeded_and_keeps_shape():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a, ctx_a = make("rotate", seed=3, degrees=20, translate=0.1)
    b, ctx_b = make("rotate", seed=3, degrees=20, translate=0.1)
    ya, yb = a.apply(ctx_a, x), b.apply(ctx_b, x)
    assert torch.equal(ya, yb) and ya.shape == x.shape and not torch.equal(ya, x)


def test_l1_loss_gradient_matches_its_formula():
    step, ctx = make("L1-loss", target=[3, 5], C=200, **{"lambda": 0.01})
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)).sub(0.3).requires_grad_(True)
    out = ctx.model(image)
    loss = step.loss(ctx, out, image)
    expected = (200 - out.logits[[0, 1], [3, 5]]).abs() + 0.01 * image.abs().flatten(1).sum(1)
    assert torch.allclose(loss, expected)
    (grad,) = torch.autograd.grad(loss.sum(), image)
    # d/da: -sign(C - O_t) * dO_t/da + lambda * sign(a)
    image2 = image.detach().clone().requires_grad_(True)
    out2 = ctx.model(image2)
    picked = out2.logits[[0, 1], [3, 5]]
    (dlogit,) = torch.autograd.grad(picked.sum(), image2)
    sign = torch.sign(200 - picked.detach()).view(-1, 1, 1, 1)
    assert torch.allclose(grad, -sign * dlogit + 0.01 * torch.sign(image.detach()), atol=1e-6)


def test_target_blend_weights_at_start_middle_and_end():
    step, ctx = make("target-blend", iterations=101, start=1, end=2, C=10, **{"lambda": 0.0})
    assert step.weight(0) == 0.0 and step.weight(50) == 0.5 and step.weight(100) == 1.0
    logits = torch.zeros(2, 10)
    logits[:, 1], logits[:, 2] = 4.0, 6.0
    out = ModelOutput(logits)
    image = torch.zeros(2, 3, 8, 8)
    for it, w in ((0, 0.0), (50, 0.5), (100, 1.0)):
        ctx.iteration = it
        expected = abs(10 - (1 - w) * 4.0) + abs(10 - w * 6.0)
        assert torch.allclose(step.loss(ctx, out, image), torch.full((2,), expected))
    roles = step.targets()[0]
    assert roles[0]["index"] == 1 and roles[0]["final_weight"] == 0.0 and roles[1]["final_weight"] == 1.0


def test_octave_runs_at_each_scale():
    step, ctx = make("octave", iterations=30, scales=[0.5, 0.75, 1.0])
    x = torch.rand(1, 3, 64, 64)
    seen = []
    for it in range(30):
        ctx.iteration = it
        x = step.apply(ctx, x)
        seen.append(x.shape[-1])
    assert seen[0] == 32 and seen[10] == 48 and seen[20] == 64
    assert [o["width"] for o in step.record()["octaves"]] == [32, 48, 64]


def test_init_noise_is_the_articles_rand_over_25_plus_half():
    step, ctx = make("init-noise", batch=3, scale=0.04, offset=0.5, size=16)
    x = step.init(ctx, None)
    assert x.shape == (3, 3, 16, 16)
    assert float(x.min()) >= 0.5 and float(x.max()) < 0.54


def test_sign_step_moves_every_pixel_by_epsilon():
    step, ctx = make("sign-step", epsilon=0.01)
    p = torch.full((1, 3, 4, 4), 0.5)
    g = torch.randn(1, 3, 4, 4)
    step.update(ctx, [p], [g])
    assert torch.allclose((p - 0.5).abs(), torch.full_like(p, 0.01))


def test_adam_changes_the_image_and_keeps_state_for_checkpoints():
    step, ctx = make("adam", lr=0.1)
    p = torch.zeros(1, 3, 4, 4, requires_grad=True)
    with torch.no_grad():
        step.update(ctx, [p], [torch.ones_like(p)])
    assert torch.allclose(p.detach(), torch.full_like(p, -0.1), atol=1e-4)
    assert step.state_dict()["state"]
