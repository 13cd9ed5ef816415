"""spectrum-jitter: random scaling of each view's spatial frequencies."""

from __future__ import annotations

import pytest
import torch

from pipeline_core.errors import RecipeError
from pipeline_core.testing import check_step, run_recipe_dict, tiny_recipe
from pipeline_plugins.transform.spectrum_jitter import SpectrumJitter, SpectrumJitterParams, scale_spectrum


class _Ctx:
    iteration = 0

    def __init__(self, seed: int = 0):
        self._generator = torch.Generator().manual_seed(seed)

    def generator(self, step):
        return self._generator


def test_factors_of_one_give_the_view_back():
    x = torch.rand(2, 3, 17, 24, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(scale_spectrum(x, torch.ones(2, 3, 34, 25)), x, atol=1e-5)


def test_the_spectrum_is_of_the_mirror_extension_so_no_edge_wraps_into_the_other():
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()  # dark left, bright right
    low_pass = torch.zeros(1, 3, 64, 33)
    low_pass[..., :4, :4] = 1
    low_pass[..., -3:, :4] = 1
    smooth = scale_spectrum(ramp, low_pass)
    # a periodic spectrum would average the dark left edge with the bright right one (about 0.5)
    assert float((smooth[..., 0] - ramp[..., 0]).abs().max()) < 0.1
    assert float((smooth[..., -1] - ramp[..., -1]).abs().max()) < 0.1


def test_every_view_gets_its_own_draw_and_a_flat_view_stays_flat():
    step = SpectrumJitter(SpectrumJitterParams(strength=0.5))
    views = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)).expand(2, 3, 16, 16).contiguous()
    out = step.apply(_Ctx(), views)
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # the same view, two draws
    assert 0.01 < float((out - views).abs().mean()) < 0.3  # changed, but near the view
    flat = step.apply(_Ctx(), torch.full((1, 3, 16, 16), 0.5))
    assert float(flat.std(dim=(-2, -1)).max()) < 1e-4  # only its brightness may change: no pattern is invented


def test_strength_zero_is_the_identity_and_bad_settings_are_refused(tmp_path):
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(SpectrumJitter(SpectrumJitterParams(strength=0.0)).apply(_Ctx(), x), x)
    with pytest.raises(ValueError, match="stay positive"):
        SpectrumJitterParams(strength=1.0)
    recipe = tiny_recipe()
    recipe["steps"].insert(1, {"step": "spectrum-jitter", "on": "image"})
    with pytest.raises(RecipeError, match="use on: view"):
        run_recipe_dict(recipe, tmp_path / "run")


def test_contract_and_a_real_run(tmp_path):
    check_step(SpectrumJitter, {"strength": [0.5, 0.2]})
    recipe = tiny_recipe(iterations=4)
    recipe["steps"].insert(1, {"step": "spectrum-jitter", "strength": 0.5})
    assert run_recipe_dict(recipe, tmp_path / "run").status == "completed"
