"""tone: the tonal range of a photograph, so that class images are not lost in a grey haze.

Nothing in a classifier's objective asks for contrast: a class image made by gradient descent
keeps close to its grey start wherever the model does not care, and ends as objects on a
washed-out, hazy ground whose luminance spreads over half the range a photo's does. This
penalises a spread (the standard deviation of the luminance Y = 0.299 R + 0.587 G + 0.114 B
over the image) or a mean brightness outside the ranges photographs have, so the
optimiser has to spend the range, and lets the image be wherever it is inside them.

The default ranges come from the real photographs in the repository's benchmark set: their
luminance standard deviation runs from 0.13 to 0.31 (mean 0.21) and their mean brightness
from about 0.3 to 0.6.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, StepParams

from ..lazy_imports import torch

#: Rec. 601 luma weights: how much each of R, G, B contributes to perceived brightness
LUMA = (0.299, 0.587, 0.114)


class ToneParams(StepParams):
    weight: float = Field(100.0, ge=0, description="Multiplies the squared distance of the luminance's spread and "
                                                   "mean to their ranges (0 inside them).")
    std: tuple[float, float] = Field((0.2, 0.3), description="The range of the luminance's standard deviation "
                                                             "[low, high]; photos have 0.13-0.31.")
    mean: tuple[float, float] = Field((0.3, 0.6), description="The range of the mean luminance [low, high].")

    @model_validator(mode="after")
    def _ordered(self) -> "ToneParams":
        for key in ("std", "mean"):
            low, high = getattr(self, key)
            if not 0 <= low <= high <= 1:
                raise ValueError(f"'{key}' must be [low, high] with 0 <= low <= high <= 1, not [{low}, {high}]")
        return self


def _outside(value: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """How far ``value`` lies outside [low, high] (0 inside), squared."""
    return (torch.relu(low - value) + torch.relu(value - high)).square()


class Tone(Step):
    """Penalise a luminance spread or mean brightness outside the ranges photographs have."""

    name = "tone"
    kind = StepKind.OBJECTIVE
    Params = ToneParams

    def loss(self, ctx, out, image: torch.Tensor) -> torch.Tensor:
        luma = torch.tensor(LUMA, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        y = (image * luma).sum(1).flatten(1)
        p = self.params
        return p.weight * (_outside(y.std(1), *p.std) + _outside(y.mean(1), *p.mean))


@hookimpl
def register_steps(registry):
    registry.add_step(Tone)
