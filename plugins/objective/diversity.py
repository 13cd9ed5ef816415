"""diversity: several images of one objective that do not all show the same thing.

Optimised from different noise, the images of a batch often converge to the same picture.
This penalises the similarity of their styles at a layer: each image's Gram matrix (its
channels' correlations, averaged over positions) is compared with every other image's by
cosine similarity, and each image's loss is its mean similarity to the others. Used with a
channel objective it gives several facets of what the channel responds to.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline_core.errors import Location, RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.objectives import LayerObjective, LayerParams

from ..lazy_imports import F, torch


class DiversityParams(LayerParams):
    sign: Literal["maximize", "minimize"] = Field(
        "minimize", description="minimize: push the images apart (the default); maximize: pull them together.")


def gram(act: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (N, C*C): each image's channel correlations, averaged over positions."""
    flat = act.flatten(2) if act.dim() > 2 else act.unsqueeze(2)
    return (flat @ flat.transpose(1, 2) / flat.shape[2]).flatten(1)


class Diversity(LayerObjective):
    """Each image's mean cosine similarity to the others' Gram matrices at a layer, penalised."""

    name = "diversity"
    Params = DiversityParams

    def image_labels(self) -> None:
        return None  # it shapes the batch as a whole; what each image is comes from the other objectives

    @classmethod
    def batch_hint(cls, params) -> int | None:
        return max(super().batch_hint(params) or 0, 2)  # without 'batch', at least two images to compare

    def bind(self, plan) -> None:
        super().bind(plan)
        if len(self.image_indices) < 2:
            raise RecipeError("diversity compares the images of the batch with one another and needs at least two; "
                              "set 'batch' (or 'images') to 2 or more", Location(key="images"))

    def value(self, ctx, out):
        g = F.normalize(gram(out.layer(self.params.layer)[self.rows]), dim=1)
        sim = g @ g.T
        n = sim.shape[0]
        return (sim.sum(1) - sim.diagonal()) / (n - 1)


@hookimpl
def register_steps(registry):
    registry.add_step(Diversity)
