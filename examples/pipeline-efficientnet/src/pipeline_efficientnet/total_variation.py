"""total-variation: a smoothness prior that penalises differences between neighbouring pixels.

Without a prior, gradient descent on the input finds high-frequency patterns that excite the
class but look like noise. Total variation (Rudin, Osher and Fatemi, 1992; used for feature
visualisation by Mahendran and Vedaldi, 2015) charges every jump between adjacent pixels, so
the optimiser prefers smooth regions with few edges. Unlike the ``blur`` transform it is a
*loss*: it competes with the class objective instead of overwriting the image.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from pipeline_core.step import Step, StepKind, StepParams


class TotalVariationParams(StepParams):
    weight: float = Field(
        100.0, ge=0, description="Multiplies the penalty (a mean over pixels, about 0.1 for noise); 0 switches it off."
    )
    power: Literal[1, 2] = Field(
        1, description="1: sum of absolute differences (keeps edges); 2: squared differences (smoother)."
    )


def total_variation(image: torch.Tensor, power: int = 1) -> torch.Tensor:
    """Per image: the mean over pixels of |horizontal difference|^p + |vertical difference|^p.

    A mean rather than a sum, so the same weight means the same thing at any image size.
    """
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    if power == 1:
        dx, dy = dx.abs(), dy.abs()
    else:
        dx, dy = dx.square(), dy.square()
    return dx.flatten(1).mean(1) + dy.flatten(1).mean(1)


class TotalVariation(Step):
    """Penalise differences between neighbouring pixels of the image (a smoothness prior)."""

    name = "total-variation"
    kind = StepKind.OBJECTIVE
    Params = TotalVariationParams

    def loss(self, ctx, out, image: torch.Tensor) -> torch.Tensor:
        return self.params.weight * total_variation(image, self.params.power)
