"""backdrop: a plain surround, so the class grows as one object in the middle of the picture.

A class image made by gradient descent fills every corner with parts of the class (a collage
of heads, wheels and textures): the model's objective rewards evidence wherever it is, and
nothing asks for a background. Photographs of a thing have one: the object in the middle, a
plainer surround. This penalises the surround's distance to a plain colour, weighted from
nothing inside a central disc to full strength at the corners, so the optimiser keeps the
class where the weight is low and leaves the rest plain. It is the spatial prior of feature
visualisation's alpha masks (Lucid composes an RGBA image over random backgrounds) without a
fourth channel.

The plain colour is each image's own surround mean (not differentiated), so the backdrop may be
dark or light, as the picture goes; or a fixed colour.

What it does not do (measured): added to best_class.yaml (weight 300, radius [0.6, 1.2]) it
gives plain surrounds, but the class is packed into the middle rather than drawn whole, and
naive observers named those pictures no more often than the recipe's own (7 of 24 against 8 of
24 on tuning classes, two seeds, each observer seeing both; benchmarks/README.md). It is a
composition tool (an object on a plain ground, for a print), not a recognisability prior.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import Field, model_validator

from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, StepParams

from ..lazy_imports import torch


class BackdropParams(StepParams):
    weight: float = Field(1000.0, ge=0, description="Multiplies the weighted mean squared distance of the "
                                                    "surround's pixels (in [0, 1]) to the plain colour.")
    radius: tuple[float, float] = Field(
        (0.5, 1.0), description="[inner, outer]: the weight rises smoothly from 0 at the inner radius to 1 at the "
                                "outer, radii as fractions of half the image's side (1: the middle of an edge; "
                                "the corners are at 1.41).")
    colour: Union[Literal["mean"], tuple[float, float, float]] = Field(
        "mean", description="mean: each image's own surround mean, so the backdrop may be dark or light; or an "
                            "RGB colour in [0, 1].")

    @model_validator(mode="after")
    def _check(self) -> "BackdropParams":
        inner, outer = self.radius
        if not 0 <= inner < outer <= 2:
            raise ValueError(f"'radius' must be [inner, outer] with 0 <= inner < outer <= 2, not [{inner}, {outer}]")
        if not isinstance(self.colour, str) and not all(0 <= c <= 1 for c in self.colour):
            raise ValueError(f"'colour' must be 'mean' or three numbers in [0, 1], not {list(self.colour)}")
        return self


def surround_weight(height: int, width: int, inner: float, outer: float, device=None, dtype=None) -> torch.Tensor:
    """(H, W) weights: 0 within ``inner`` of the centre, rising smoothly (smoothstep) to 1 at ``outer``;
    radii as fractions of half the side, measured on each axis's own scale (an ellipse on a wide image)."""
    ys = torch.linspace(-1, 1, height, device=device, dtype=dtype).view(-1, 1)
    xs = torch.linspace(-1, 1, width, device=device, dtype=dtype).view(1, -1)
    t = ((ys.square() + xs.square()).sqrt() - inner) / (outer - inner)
    t = t.clamp(0, 1)
    return t * t * (3 - 2 * t)


class Backdrop(Step):
    """Hold the picture's surround to a plain colour: one object in the middle, not a collage."""

    name = "backdrop"
    kind = StepKind.OBJECTIVE
    Params = BackdropParams

    def _weights(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The surround's weights for ``image``'s size, device and dtype, and their sum: made on the
        first iteration and kept (the loop calls ``loss`` every iteration)."""
        key = (tuple(image.shape[-2:]), image.device, image.dtype)
        if getattr(self, "_cached", (None,))[0] != key:
            w = surround_weight(*key[0], *self.params.radius, device=image.device, dtype=image.dtype)
            self._cached = (key, w, w.sum().clamp_min(1e-8))
        return self._cached[1], self._cached[2]

    def loss(self, ctx, out, image: torch.Tensor) -> torch.Tensor:
        p = self.params
        w, total = self._weights(image)
        if p.colour == "mean":
            plain = ((image * w).sum((-2, -1)) / total).detach()[..., None, None]
        else:
            plain = torch.tensor(p.colour, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        return p.weight * ((image - plain).square().sum(1) * w).sum((-2, -1)) / total


@hookimpl
def register_steps(registry):
    registry.add_step(Backdrop)
