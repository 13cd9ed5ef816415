"""The Fourier-domain image: it is a faithful stand-in for pixels, and it changes what a step does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_core.parameterization import FourierImage, colour_mixing_matrix, spectrum_scale
from pipeline_core.testing import check_step, run_recipe_dict, tiny_recipe
from pipeline_plugins.param.fourier_image import FourierImageStep


def smooth_image(b: int = 2, h: int = 24, w: int = 30) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 3, h, w, generator=g) * 0.9 + 0.05


@pytest.mark.parametrize("decorrelate", [True, False])
@pytest.mark.parametrize("shape", [(24, 30), (17, 17), (9, 32)])
def test_set_image_then_image_gives_the_pixels_back(decorrelate, shape):
    pixels = smooth_image(2, *shape)
    param = FourierImage(torch.full_like(pixels, 0.5), decay=1.0, decorrelate=decorrelate)
    param.set_image(pixels)
    assert torch.allclose(param.image(), pixels, atol=1e-4)
    assert param.image().shape == pixels.shape


def test_round_trip_clips_only_where_the_sigmoid_cannot_reach():
    pixels = smooth_image()
    pixels[0, 0, 0, 0] = 0.0
    pixels[1, 2, 3, 4] = 1.0
    back = FourierImage(pixels, eps=1e-3).image().detach()
    assert back[0, 0, 0, 0] == pytest.approx(1e-3, abs=1e-5)
    assert back[1, 2, 3, 4] == pytest.approx(1 - 1e-3, abs=1e-5)
    keep = torch.ones_like(pixels, dtype=torch.bool)
    keep[0, 0, 0, 0] = keep[1, 2, 3, 4] = False
    assert torch.allclose(back[keep], pixels[keep], atol=1e-4)


def test_the_parameters_are_the_spectrum_and_the_gradient_reaches_it():
    param = FourierImage(torch.full((1, 3, 16, 16), 0.5))
    (spectrum,) = param.parameters()
    assert spectrum.shape == (1, 3, 16, 9, 2) and spectrum.requires_grad and spectrum.is_leaf
    target = smooth_image(1, 16, 16)
    loss = (param.image() - target).pow(2).sum()
    (grad,) = torch.autograd.grad(loss, [spectrum])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_a_gradient_step_on_the_spectrum_changes_mostly_low_frequencies():
    """The point of the 1/f scaling: the same gradient moves smooth structure, not pixel noise."""
    g = torch.Generator().manual_seed(1)
    push = torch.randn(1, 3, 32, 32, generator=g)  # a white-noise gradient on the pixels

    def change(decay: float) -> torch.Tensor:
        param = FourierImage(torch.full((1, 3, 32, 32), 0.5), decay=decay)
        (spectrum,) = param.parameters()
        (grad,) = torch.autograd.grad((param.image() * push).sum(), [spectrum])
        with torch.no_grad():
            spectrum.sub_(grad.sign(), alpha=0.01)  # every coefficient moves the same amount
        return param.image().detach() - 0.5

    def high_share(delta: torch.Tensor) -> float:
        power = torch.fft.rfft2(delta).abs().pow(2)
        f = spectrum_scale(32, 32, -1.0)  # |f| itself
        return float(power[..., f > 0.25].sum() / power.sum())

    assert high_share(change(1.0)) < 0.5 * high_share(change(0.0))


def test_colour_mixing_matrix_is_invertible_with_brightness_as_its_first_axis():
    m = colour_mixing_matrix()
    assert torch.linalg.matrix_rank(m) == 3
    first = m[:, 0]
    assert (first.sign() == first[0].sign()).all()  # all three channels move together
    assert m.norm(dim=0).max() == pytest.approx(1.0, abs=1e-4)  # published to 4 digits


def test_a_new_size_makes_a_new_spectrum_and_state_round_trips():
    param = FourierImage(smooth_image(1, 16, 16))
    param.set_image(smooth_image(1, 20, 12))
    assert param.image().shape == (1, 3, 20, 12)
    state = param.state_dict()
    other = FourierImage(torch.full((1, 3, 8, 8), 0.5))
    other.load_state_dict(state)
    assert torch.allclose(other.image(), param.image(), atol=1e-6)


def test_fourier_image_step_passes_the_contract_checks():
    check_step(FourierImageStep, {"decay": 1.2, "noise": 0.01})


def test_init_image_and_image_transforms_work_through_the_spectrum(tmp_path, registry):
    """init-image sets the spectrum; a stored-image resize goes through set_image; no objective is skipped."""
    from PIL import Image

    photo = tmp_path / "photo.png"
    array = (smooth_image(1, 40, 40)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
    Image.fromarray(array).save(photo)
    recipe = tiny_recipe(iterations=3, steps=[
        {"step": "init-image", "images": [str(photo)], "size": 40},
        {"step": "fourier-image", "decay": 1.0},
        {"step": "interpolate", "sizes": [36], "mode": "bilinear", "until": 1},
        {"step": "jitter", "pixels": 3},
        {"step": "L1-loss", "target": 2, "lambda": 0.0},
        {"step": "adam", "lr": 0.001},
    ])
    result = run_recipe_dict(recipe, tmp_path / "run", registry=registry)
    assert result.status == "completed", result.message
    out = Image.open(tmp_path / "run" / "images" / result.record["images"][0]["file"])
    assert out.size == (36, 36)
    # three small Adam steps from the photo: still the photo, resized, not a blank image
    start = torch.nn.functional.interpolate(smooth_image(1, 40, 40), size=(36, 36), mode="bilinear",
                                            align_corners=False)
    got = torch.from_numpy(np.array(out)).permute(2, 0, 1).float()[None] / 255
    assert (got - start).abs().mean() < 0.05


def test_the_spectrum_noise_is_seeded():
    base = torch.full((2, 3, 16, 16), 0.5)
    a = FourierImage(base, noise=0.1, generator=torch.Generator().manual_seed(3)).image()
    b = FourierImage(base, noise=0.1, generator=torch.Generator().manual_seed(3)).image()
    c = FourierImage(base, noise=0.1, generator=torch.Generator().manual_seed(4)).image()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - 0.5).abs().max() > 1e-3
