"""neuron: one channel's activation at one position of a layer's grid (default the centre).

A ``channel`` objective narrowed to one position of the layer's grid: what makes the one
unit at that row and column respond. The grid is the layer's at the model's input size.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipeline_core.errors import RecipeError
from pipeline_core.hookspecs import hookimpl

from .channel import Channel, ChannelParams


class NeuronParams(ChannelParams):
    x: int | None = Field(None, ge=0, description="Column of the neuron in the layer's grid (default: the centre).")
    y: int | None = Field(None, ge=0, description="Row of the neuron in the layer's grid (default: the centre).")


class Neuron(Channel):
    """One neuron: a channel's activation at one position of the layer's grid (default the centre)."""

    name = "neuron"
    Params = NeuronParams

    def setup(self, ctx) -> None:
        super().setup(ctx)
        shape = ctx.model.layer_shapes()[self.params.layer]
        if len(shape) != 3:
            raise RecipeError(f"layer '{self.params.layer}' has no spatial grid (its output is {tuple(shape)} per "
                              "image); use the channel objective", self.where("layer"))
        h, w = shape[1], shape[2]
        self.pos = (h // 2 if self.params.y is None else self.params.y, w // 2 if self.params.x is None else self.params.x)
        for key, v, n in (("y", self.pos[0], h), ("x", self.pos[1], w)):
            if v >= n:
                raise RecipeError(f"{key}={v} is outside layer '{self.params.layer}', whose grid is {h}x{w} "
                                  f"(rows 0..{h - 1}, columns 0..{w - 1}) at the model's input size",
                                  self.where(key))

    def value(self, ctx, out):
        act = out.layer(self.params.layer)
        if act.dim() != 4 or act.shape[2] <= self.pos[0] or act.shape[3] <= self.pos[1]:
            raise RecipeError(f"layer '{self.params.layer}' gave a {tuple(act.shape[2:])} grid this iteration, too "
                              f"small for the neuron at row {self.pos[0]}, column {self.pos[1]}")
        picked = act[self.rows, :, self.pos[0], self.pos[1]]
        return picked.gather(1, self.channel_tensor.view(-1, 1)).squeeze(1)

    def record(self) -> dict[str, Any]:
        return {**super().record(), "y": self.pos[0], "x": self.pos[1]} if hasattr(self, "pos") else super().record()


@hookimpl
def register_steps(registry):
    registry.add_step(Neuron)
