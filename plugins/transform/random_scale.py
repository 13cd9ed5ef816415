"""random-scale: zoom what the model sees by a random factor, a new draw every iteration.

Like ``jitter``, a robustness to small changes of view (Lucid's "transformation robustness"):
features that survive a zoom are the ones other models, and people, also see. It defaults to
``on: view``: the stored image stays put and the zoom is differentiable, so the gradient
flows back through it. The factors come from the step's own seeded generator, so runs replay
exactly. The image keeps its shape (the model adapter resizes to the model's input anyway).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline_core.context import to_device
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams

from ..lazy_imports import F, torch


class RandomScaleParams(TransformParams):
    on: Literal["image", "view"] = Field(
        "view", description="view (default): only what the model sees; image: zoom the stored image itself."
    )
    scale: tuple[float, float] = Field((0.9, 1.1), description="Zoom drawn uniformly from [low, high]; above 1 zooms in.")
    fill: Literal["reflection", "border", "zeros"] = Field("reflection", description="What fills the border when zooming out.")
    mode: Literal["bilinear", "bicubic", "nearest"] = Field("bilinear", description="Resampling.")

    @model_validator(mode="after")
    def _range(self):
        lo, hi = self.scale
        if not 0.05 <= lo <= hi <= 20:
            raise ValueError(f"scale must be [low, high] with 0.05 <= low <= high <= 20, got {list(self.scale)}")
        return self


class RandomScale(Step):
    """Zoom each image about its centre by its own random factor, keeping its size."""

    name = "random-scale"
    kind = StepKind.TRANSFORM
    Params = RandomScaleParams

    def apply(self, ctx, x):
        p = self.params
        lo, hi = p.scale
        u = torch.rand(x.shape[0], generator=ctx.generator(self), dtype=torch.float64)
        zoom = lo + (hi - lo) * u
        theta = torch.zeros(x.shape[0], 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = 1 / zoom
        theta[:, 1, 1] = 1 / zoom
        grid = F.affine_grid(to_device(theta, x.device, x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode=p.mode, padding_mode=p.fill, align_corners=False)


@hookimpl
def register_steps(registry):
    registry.add_step(RandomScale)
