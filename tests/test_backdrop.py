"""backdrop: the surround pulled to a plain colour, the middle left free."""

from __future__ import annotations

import pytest
import torch

from pipeline_core.testing import check_step
from pipeline_plugins.objective.backdrop import Backdrop, BackdropParams, surround_weight


def test_the_step_keeps_the_step_contract():
    check_step(Backdrop, {"weight": 10.0})


def test_the_weight_is_zero_in_the_middle_and_one_at_the_edges():
    w = surround_weight(65, 65, 0.5, 1.0)
    assert w[32, 32] == 0 and w[32, 40] == 0  # inside the inner radius
    assert w[32, 0] == pytest.approx(1) and w[0, 0] == 1  # the middle of an edge, a corner
    assert 0 < w[32, 56] < 1  # between the radii it rises


def test_a_plain_surround_costs_nothing_whatever_the_middle_holds():
    step = Backdrop(BackdropParams(weight=1.0))
    image = torch.full((2, 3, 64, 64), 0.2)
    image[1] = 0.8  # each image may have its own backdrop colour
    image[:, :, 24:40, 24:40] = torch.rand(2, 3, 16, 16)  # anything in the middle
    assert torch.allclose(step.loss(None, None, image), torch.zeros(2), atol=1e-6)
    busy = image.clone()
    busy[:, :, :8] = torch.rand(2, 3, 8, 64)  # texture at the top edge
    assert (step.loss(None, None, busy) > 1e-3).all()


def test_the_gradient_reaches_only_the_surround():
    step = Backdrop(BackdropParams(weight=1.0, colour=(0.5, 0.5, 0.5)))
    image = torch.rand(1, 3, 64, 64, requires_grad=True)
    step.loss(None, None, image).sum().backward()
    assert image.grad[..., 28:36, 28:36].abs().max() == 0
    assert image.grad[..., :4, :].abs().max() > 0


@pytest.mark.parametrize("params, message", [
    ({"radius": [0.8, 0.5]}, "inner < outer"),
    ({"colour": [0.5, 2, 0.5]}, "three numbers in [0, 1]"),
])
def test_bad_parameters_say_what_to_give(params, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        BackdropParams(**params)
