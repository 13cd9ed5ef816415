"""deep-prior: the image as the output of a small random network, one per image."""

from __future__ import annotations

import json

import torch

from pipeline_core.run.faults import NumericGuard
from pipeline_core.testing import check_step
from pipeline_plugins.param.deep_prior import DeepPrior, DeepPriorStep

from conftest import MOBILENET_SETS, RECIPES


def _photo_like(b=2, h=40, w=36, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)).clamp(0.01, 0.99)


def test_the_step_keeps_the_step_contract():
    check_step(DeepPriorStep, {"width": 8, "depth": 2})


def test_any_starting_image_is_shown_exactly_at_any_size():
    image = _photo_like()
    prior = DeepPrior(image, width=8, depth=3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(prior.image(), image, atol=1e-5)
    with torch.no_grad():  # the network moves away from its start ...
        for w in prior.parameters():
            w.mul_(1.5)
    assert not torch.allclose(prior.image(), image, atol=1e-2)
    bigger = _photo_like(h=52, w=60, seed=3)  # ... and a transform's new pixels replace it exactly
    prior.set_image(bigger)
    assert prior.image().shape == bigger.shape and torch.allclose(prior.image(), bigger, atol=1e-5)
    prior.set_image(_photo_like(b=3, h=9, w=9))  # a level too small to reflect, another batch
    assert prior.image().shape == (3, 3, 9, 9)
    prior.set_image(_photo_like(b=2, h=9, w=9))  # another batch alone
    assert torch.allclose(prior.image(), _photo_like(b=2, h=9, w=9), atol=1e-5)


def test_levels_of_one_pixel_work():
    for size in (16, 8, 3):  # depth 4 halves 16 to a single pixel, and 3 sooner
        prior = DeepPrior(_photo_like(b=2, h=size, w=size), width=8, depth=4)
        assert torch.isfinite(prior.image()).all() and prior.image().shape == (2, 3, size, size)


def test_each_image_has_its_own_network():
    prior = DeepPrior(_photo_like(), width=8, depth=2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for w in prior.parameters():
            w.mul_(1.2)
    prior.image()[0].sum().backward()
    for w in prior.parameters():
        first, second = w.grad.chunk(2)  # the grouped weights: image 0's rows, then image 1's
        assert first.abs().sum() > 0 and torch.count_nonzero(second) == 0


def test_its_state_restores_the_same_image():
    prior = DeepPrior(_photo_like(), width=8, depth=2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for w in prior.parameters():
            w.add_(0.05)
    fresh = DeepPrior(torch.full((1, 3, 8, 8), 0.5), width=8, depth=2, generator=torch.Generator().manual_seed(9))
    fresh.load_state_dict(prior.state_dict())
    assert torch.equal(fresh.image(), prior.image())


def test_a_resumed_prior_draws_what_the_first_one_drew_at_a_new_size():
    prior = DeepPrior(_photo_like(), width=8, depth=2, generator=torch.Generator().manual_seed(4))
    prior.set_image(_photo_like(h=24, w=24))  # resized before the checkpoint
    with torch.no_grad():
        for w in prior.parameters():
            w.add_(0.05)
    resumed = DeepPrior(_photo_like(), width=8, depth=2, generator=torch.Generator().manual_seed(4))
    resumed.load_state_dict(prior.state_dict())
    for p in (prior, resumed):  # and resized again after it: the same code for the same shape
        p.set_image(_photo_like(h=28, w=30, seed=5))
        with torch.no_grad():
            for w in p.parameters():
                w.add_(0.05)
    assert torch.equal(resumed.image(), prior.image())
    assert NumericGuard.magnitude(prior.state_dict()) == ""  # its seed is not read as an image value


def test_a_real_run_on_the_real_model_raises_the_class(cli, mobilenet_path, tmp_path):
    recipe = tmp_path / "deep.yaml"
    recipe.write_text(
        "iterations: 12\nseed: 0\nmodel: {name: inception_v3}\nsteps:\n"
        "  - {step: init-noise, scale: 0.0, offset: 0.5, size: 96}\n"
        "  - {step: deep-prior, width: 16, depth: 3}\n"
        "  - {step: L1-loss, target: goldfish, C: 10000, lambda: 0}\n"
        "  - {step: adam, lr: 0.01}\noutput: {video: false}\n")
    sets = [a for s in MOBILENET_SETS for a in ("--set", s)]
    done = cli("run", str(recipe), "--out", str(tmp_path / "run"), "--quiet", *sets, cwd=RECIPES.parent)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["p_target"][0] > 10 * rows[0]["p_target"][0]
    assert (tmp_path / "run" / "images" / "000_goldfish.png").is_file()
