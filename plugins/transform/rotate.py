"""rotate: a random rotation and shift each iteration (the article's strawberry), seeded."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator

from pipeline_core.context import to_device
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams

from ..lazy_imports import F, torch


class RotateParams(TransformParams):
    degrees: float = Field(10.0, ge=0, le=180, description="Angles are drawn uniformly from [-degrees, degrees].")
    translate: float = Field(0.0, ge=0, le=1, description="Shifts up to this fraction of the side, in x and y.")
    scale: tuple[float, float] = Field((1.0, 1.0), description="Zoom drawn uniformly from [low, high].")
    padding: Literal["zeros", "border", "reflection"] = Field("reflection", description="What fills the corners.")
    mode: Literal["bilinear", "nearest", "bicubic"] = Field("bilinear", description="Resampling.")

    @field_validator("scale")
    @classmethod
    def _zoom(cls, scale: tuple[float, float]) -> tuple[float, float]:
        lo, hi = scale
        if not 0 < lo <= hi <= 100:  # a zoom of 0 divides by zero and fills the image with NaN
            raise ValueError(f"scale must be [low, high] with 0 < low <= high <= 100, got [{lo}, {hi}]")
        return scale


class Rotate(Step):
    """Rotate, shift and zoom each image by its own seeded random amounts (one batched resample)."""

    name = "rotate"
    kind = StepKind.TRANSFORM
    Params = RotateParams

    def apply(self, ctx, x):
        p, b = self.params, x.shape[0]
        g = ctx.generator(self)
        u = torch.rand(b, 4, generator=g, dtype=torch.float64)
        angle = (2 * u[:, 0] - 1) * math.radians(p.degrees)
        shift = (2 * u[:, 1:3] - 1) * p.translate * 2  # grid coordinates span 2 per side
        lo, hi = p.scale
        zoom = lo + (hi - lo) * u[:, 3]
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        theta = to_device(theta, x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode=p.mode, padding_mode=p.padding, align_corners=False)


@hookimpl
def register_steps(registry):
    registry.add_step(Rotate)
