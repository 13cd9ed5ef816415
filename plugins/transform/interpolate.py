"""interpolate: resize through a cycle of sizes (the article's 256, 198, 160, 180, 200).

With ``nearest`` the content drifts toward the lower right over the cycle, as the article
shows (nearest neighbour picks the upper-left source pixel); ``bilinear`` and ``bicubic``
average around the true centre and do not drift.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import MAX_SIDE, Step, StepKind, TransformParams

from ..lazy_imports import F


class InterpolateParams(TransformParams):
    sizes: list[int] = Field(..., min_length=1, description="Sides to cycle through, one per active iteration.")
    mode: Literal["nearest", "bilinear", "bicubic", "area"] = Field("bilinear", description="Resampling.")

    @field_validator("sizes")
    @classmethod
    def _sides(cls, sizes: list[int]) -> list[int]:
        bad = [s for s in sizes if not 1 <= s <= MAX_SIDE]
        if bad:
            raise ValueError(f"sizes must lie in 1..{MAX_SIDE}, got {bad}")
        return sizes


class Interpolate(Step):
    """Resize the image to sizes[iteration % len(sizes)] (iteration counted from the run's start)."""

    name = "interpolate"
    kind = StepKind.TRANSFORM
    Params = InterpolateParams

    def apply(self, ctx, x):
        side = self.params.sizes[ctx.iteration % len(self.params.sizes)]
        if tuple(x.shape[-2:]) == (side, side):
            return x
        mode = self.params.mode
        kwargs = {} if mode in ("nearest", "area") else {"align_corners": False}
        return F.interpolate(x, size=(side, side), mode=mode, **kwargs)


@hookimpl
def register_steps(registry):
    registry.add_step(Interpolate)
