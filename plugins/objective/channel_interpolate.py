"""channel-interpolate: the batch walks from one channel to another (two layers' channels, if asked).

Image i of n maximises a mix of the two channels' mean activations, weighted (n-1-i)/(n-1) and
i/(n-1), so the batch walks from one feature to the other. With a view step such as ``crops``
the model sees several views of each image; the objective receives each image's activations
averaged over its views (``ModelOutput.per_image``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipeline_core.errors import Location, RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.objectives import LayerObjective, LayerParams

from ..lazy_imports import torch
from .activations import spatial_mean


class ChannelInterpolateParams(LayerParams):
    start: int = Field(..., ge=0, description="The channel the first image shows.")
    end: int = Field(..., ge=0, description="The channel the last image shows.")
    end_layer: str | None = Field(None, description="The layer of 'end', if not 'layer'.")


class ChannelInterpolate(LayerObjective):
    """The batch walks from one channel to another: image i of n weighs them (n-1-i)/(n-1) and i/(n-1)."""

    name = "channel-interpolate"
    Params = ChannelInterpolateParams

    def layers(self) -> list[str]:
        return list(dict.fromkeys([self.params.layer, self.params.end_layer or self.params.layer]))

    def head_key(self, head: str) -> str:
        end = self.params.end_layer
        return "end_layer" if end and head.endswith(":" + end) and end != self.params.layer else "layer"

    @classmethod
    def batch_hint(cls, params) -> int | None:
        return max(super().batch_hint(params) or 0, 2)  # without 'batch', at least two images to compare

    def bind(self, plan) -> None:
        super().bind(plan)
        n = len(self.image_indices)
        if n < 2:
            raise RecipeError("channel-interpolate needs at least two images to walk between channels; "
                              "set 'batch' (or 'images') to 2 or more", Location(key="images"))
        self.mix = [i / (n - 1) for i in range(n)]

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.check_channels(ctx, self.params.layer, [self.params.start], "start")
        self.check_channels(ctx, self.params.end_layer or self.params.layer, [self.params.end], "end")
        self.t = torch.tensor(self.mix, device=ctx.device)

    def value(self, ctx, out):
        a = spatial_mean(out.layer(self.params.layer))[self.rows, self.params.start]
        b = spatial_mean(out.layer(self.params.end_layer or self.params.layer))[self.rows, self.params.end]
        return (1 - self.t) * a + self.t * b

    def record(self) -> dict[str, Any]:
        return {"start": self.params.start, "end": self.params.end, "end_weights": self.mix}

    def image_labels(self) -> dict[int, str]:
        walk = f"{self.params.layer} ch {self.params.start} to {self.params.end}"
        return {i: f"{walk} {t:.2f}" for i, t in zip(self.image_indices, self.mix)}


@hookimpl
def register_steps(registry):
    registry.add_step(ChannelInterpolate)
