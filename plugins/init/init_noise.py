"""init-noise: start from random pixels (the article's ``rand/25 + 0.5`` is uniform, scale 0.04, offset 0.5)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, StepParams

from ..lazy_imports import torch
from .image_size import Size, image_size


class InitNoiseParams(StepParams):
    distribution: Literal["uniform", "normal"] = Field("uniform", description="uniform in [0, 1) or standard normal.")
    scale: float = Field(1.0, ge=0, description="Multiplies the noise.")
    offset: float = Field(0.0, description="Added after scaling.")
    size: Size | None = Field(None, description="Side (or [height, width]) in pixels; default: the model's input size.")


class InitNoise(Step):
    """Fill the batch with seeded noise: scale * noise + offset."""

    name = "init-noise"
    kind = StepKind.INIT
    Params = InitNoiseParams

    def bind(self, plan) -> None:
        from pipeline_core.errors import Location, RecipeError

        try:
            self.size = image_size(self.params.size, plan.model_size)
        except ValueError as exc:
            raise RecipeError(str(exc), Location(key="size")) from None

    def init(self, ctx, image):
        g = ctx.generator(self)
        shape = (ctx.batch, 3, *self.size)
        noise = torch.rand(shape, generator=g) if self.params.distribution == "uniform" else torch.randn(shape, generator=g)
        return (noise * self.params.scale + self.params.offset).to(ctx.device)


@hookimpl
def register_steps(registry):
    registry.add_step(InitNoise)
