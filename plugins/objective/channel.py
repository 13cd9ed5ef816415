"""channel: the mean activation of one channel of a hidden layer (feature visualisation).

Feature visualisation asks what a unit of a hidden layer responds to. This objective reads a
layer by its module path (``pipeline layers MODEL`` lists them) and, like every layer objective,
has the ``weight``, ``sign`` and ``images`` keys of
:class:`pipeline_core.objectives.LayerObjective`, so one batch can show channels 0-15 of a layer
side by side. With a view step such as ``crops`` the model sees several views of each image; the
objective receives each image's activations averaged over its views (``ModelOutput.per_image``),
which for a channel mean is exactly the mean of the per-view objective.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipeline_core.errors import RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.objectives import Indices, LayerObjective, LayerParams, index_list

from ..lazy_imports import torch
from .activations import spatial_mean


class ChannelParams(LayerParams):
    channel: Indices = Field(..., description="Channel index, a list (one per image, repeated to fill them) or a "
                                              "range like 0-15 (one channel per image).")


class Channel(LayerObjective):
    """The mean activation of one channel of a layer (a different channel per image if listed)."""

    name = "channel"
    Params = ChannelParams

    @classmethod
    def batch_hint(cls, params) -> int | None:
        try:
            n = len(index_list(params.channel, "channel"))
        except RecipeError:  # reported by bind, on its line
            n = 0
        return max(n if n > 1 else 0, super().batch_hint(params) or 0) or None

    def bind(self, plan) -> None:
        super().bind(plan)
        self.channel_list = self.per_image(self.params.channel, "channel")

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.check_channels(ctx, self.params.layer, self.channel_list, "channel")
        self.channel_tensor = torch.tensor(self.channel_list, device=ctx.device, dtype=torch.long)

    def value(self, ctx, out):
        means = spatial_mean(out.layer(self.params.layer))[self.rows]
        return means.gather(1, self.channel_tensor.view(-1, 1)).squeeze(1)

    def record(self) -> dict[str, Any]:
        return {"layer": self.params.layer, "channels": self.channel_list, "images": self.image_indices}

    def image_labels(self) -> dict[int, str]:
        unit = "ch" if self.name == "channel" else self.name
        return {i: f"{self.params.layer} {unit} {c}" for i, c in zip(self.image_indices, self.channel_list)}


@hookimpl
def register_steps(registry):
    registry.add_step(Channel)
