"""keep-photo: the transfiguration penalty that keeps the starting photo."""

from __future__ import annotations

import re

import pytest
import torch

from pipeline_core.recipe.schedule import Schedule
from pipeline_core.testing import check_step, run_recipe_dict, tiny_recipe
from pipeline_plugins.objective.keep_photo import KeepPhoto, KeepPhotoParams


def _step(**params) -> KeepPhoto:
    step = KeepPhoto(KeepPhotoParams(**params))
    step.setup(None)
    return step


def test_the_penalty_is_zero_on_the_photo_and_pulls_back_toward_it():
    step = _step(weight=10.0, sigma=0.0)
    photo = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(step.loss(None, None, photo), torch.zeros(2))  # the first call keeps the photo
    moved = (photo + 0.1).requires_grad_(True)
    loss = step.loss(None, None, moved)
    assert torch.allclose(loss, torch.full((2,), 10.0 * 0.01), atol=1e-6)
    loss.sum().backward()
    assert bool((moved.grad > 0).all())  # descending the gradient moves back toward the photo


def test_blurred_comparison_lets_fine_texture_change_but_not_the_layout():
    step = _step(weight=1.0, sigma=3.0)
    photo = torch.full((1, 3, 64, 64), 0.5)
    step.loss(None, None, photo)
    texture = photo + 0.2 * torch.where(torch.arange(64) % 2 == 0, 1.0, -1.0).view(1, 1, 1, 64)  # 1-px stripes
    layout = photo.clone()
    layout[..., :32] += 0.2  # the left half brighter
    assert float(step.loss(None, None, texture)) < 0.05 * float(step.loss(None, None, layout))


def test_the_robust_distance_lets_one_region_change_where_the_squared_one_spreads_the_change():
    photo = torch.full((1, 3, 32, 32), 0.5)
    film = photo + 0.1  # a small change everywhere
    patch = photo.clone()
    patch[..., :8, :8] += 0.4  # a large change on a sixteenth of the photo: the same squared cost
    squared, robust = _step(weight=1.0, sigma=0.0), _step(weight=1.0, sigma=0.0, distance="robust")
    for step in (squared, robust):
        step.loss(None, None, photo)
    assert torch.allclose(squared.loss(None, None, film), squared.loss(None, None, patch))
    assert float(robust.loss(None, None, patch)) < 0.3 * float(robust.loss(None, None, film))
    assert torch.allclose(robust.loss(None, None, film), torch.tensor([0.1 * 3 ** 0.5]), atol=2e-3)


def test_the_robust_penalty_is_zero_with_a_finite_gradient_at_the_photo():
    step = _step(weight=1.0, sigma=1.0, distance="robust")
    photo = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    step.loss(None, None, photo)
    same = photo.clone().requires_grad_(True)
    loss = step.loss(None, None, same)
    loss.sum().backward()
    assert float(loss.detach()) == 0.0 and bool(torch.isfinite(same.grad).all())


def test_a_resized_image_is_compared_with_the_resized_photo():
    step = _step(weight=1.0, sigma=0.0)
    photo = torch.full((1, 3, 32, 32), 0.25)
    step.loss(None, None, photo)
    assert float(step.loss(None, None, torch.full((1, 3, 20, 20), 0.25))) < 1e-10


def test_the_reference_survives_a_checkpoint():
    step = _step()
    photo = torch.rand(1, 3, 8, 8)
    step.loss(None, None, photo)
    again = _step()
    again.load_state_dict(step.state_dict())
    assert torch.equal(again.reference, photo)


def test_contract_and_a_real_run(tmp_path):
    check_step(KeepPhoto, {"weight": 50.0})
    check_step(KeepPhoto, {"weight": [0.0, 50.0], "distance": "robust"})
    recipe = tiny_recipe(iterations=4)
    recipe["steps"].insert(-1, {"step": "keep-photo", "weight": 50.0, "sigma": 1.0})
    assert run_recipe_dict(recipe, tmp_path / "run").status == "completed"


def test_a_weight_ramp_moves_linearly_over_the_run():
    step = KeepPhoto(KeepPhotoParams(weight=(0.0, 100.0), sigma=0.0), schedule=Schedule(0, 11))
    step.setup(None)
    assert [step.ramp(step.params.weight, i) for i in (0, 5, 10)] == [0.0, 50.0, 100.0]
    with pytest.raises(ValueError, match="a weight must be at least 0, not -1"):
        KeepPhotoParams(weight=(100.0, -1.0))


def _hold_step(hold: float) -> KeepPhoto:
    step = KeepPhoto(KeepPhotoParams(hold=hold, sigma=0.0))
    step.setup(None)
    return step


def _first_iteration(step: KeepPhoto, photo: torch.Tensor, push: torch.Tensor) -> None:
    """One iteration's backward: keep-photo beside an objective whose gradient at the image is ``push``."""
    image = photo.clone().requires_grad_(True)
    total = (image * push).sum() + step.loss(None, None, image).sum()
    torch.autograd.grad(total, image)


def test_hold_balances_the_pull_against_the_push_measured_at_the_first_iteration():
    photo = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    push = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    push[1] *= 0.25  # the second image's class pushes four times less (as skip-gradient does)
    step = _hold_step(2.0)
    _first_iteration(step, photo, push)
    # a whole range away the pull back is hold times the push, image by image
    away = (photo + 1.0).requires_grad_(True)
    pull, = torch.autograd.grad(step.loss(None, None, away).sum(), away)
    assert torch.allclose(pull.flatten(1).norm(dim=1), 2.0 * push.flatten(1).norm(dim=1), rtol=1e-4)
    # so the weaker push gets a weight four times smaller: the same balance on either image
    assert torch.allclose(step.balanced[1], step.balanced[0] * 0.25 * push[1].norm() / (0.25 * push[0].norm()))


def test_hold_adds_nothing_at_the_first_iteration_and_its_weights_survive_a_checkpoint():
    photo = torch.rand(1, 3, 8, 8)
    step = _hold_step(1.0)
    image = photo.clone().requires_grad_(True)
    own = step.loss(None, None, image)
    assert float(own.detach()) == 0.0 and step.balanced is None  # measured only once the gradient flows back
    torch.autograd.grad(own.sum() + image.sum(), image)
    again = _hold_step(1.0)
    again.load_state_dict(step.state_dict())
    assert torch.equal(again.balanced, step.balanced) and step.record() == again.record()


@pytest.mark.parametrize("extra, message", [({"weight": 100.0}, "either weight or hold"),
                                            ({"distance": "robust"}, "with distance: robust give a weight")])
def test_hold_refuses_a_weight_or_the_robust_distance_with_the_step_named(tmp_path, extra, message):
    from pipeline_core.errors import RecipeError

    recipe = tiny_recipe()
    recipe["steps"].insert(-1, {"step": "keep-photo", "hold": 1.0, **extra})
    with pytest.raises(RecipeError, match=message) as info:
        run_recipe_dict(recipe, tmp_path / "run")
    assert re.search(r"run\.recipe\.yaml:\d+: step 2 \(keep-photo\)", str(info.value))  # file, line, step


def test_a_real_run_with_hold_records_the_weights_it_chose(tmp_path):
    import json

    check_step(KeepPhoto, {"hold": 1.0})
    recipe = tiny_recipe(iterations=4, batch=2)
    recipe["steps"].insert(-1, {"step": "keep-photo", "hold": 1.0, "sigma": 1.0})
    run_recipe_dict(recipe, tmp_path / "run")
    facts = json.loads((tmp_path / "run" / "run.json").read_text())["step_facts"]
    weights = facts["step 2 (keep-photo)"]["weights"]
    assert len(weights) == 2 and all(w > 0 for w in weights)
