"""shape-contrast: lower the target's logit on the image cut into tiles and shuffled.

ImageNet classifiers recognise much of a class from local texture (Geirhos et al. 2019; BagNets,
Brendel and Bethge 2019): a picture grown on the logit is a collage of the class's textures and
parts, which the model accepts as readily as the whole object and a person cannot name when
the class is defined by its shape (a modem, a unicycle, a window shade). Cut the image into a
grid of tiles and shuffle them, and the texture evidence stays while the arrangement is gone.
This objective adds the target's logit on such a shuffled copy, times ``weight``, to the loss:
with the logit raised on the real view by ``L1-loss`` (or another class objective), what the two
share (texture) counts ``1 - weight`` and what only the arranged image has (shape, layout)
counts in full.

Each iteration every image gets its own shuffle, from the step's seeded generator, of a grid
shifted by a random offset (so the tile borders move). The copy is made from the image itself,
not from the view the other objectives see: the recipe's view steps (jitter, rotation, crops)
do not reach it, so the texture the two terms share cancels only roughly. It costs one more
forward and backward pass of the model on the batch. It lowers a logit and aims at nothing, so
the run's targets (the video's labels, run.json) stay the class objective's.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipeline_core.hookspecs import hookimpl
from pipeline_core.objectives import ClassObjective, TargetParams

from ..lazy_imports import torch


class ShapeContrastParams(TargetParams):
    grid: int = Field(4, ge=2, le=16, description="Tiles per side: the image is cut into grid x grid tiles.")
    weight: float = Field(0.5, ge=0, description="Multiplies the shuffled copy's target logit, which is lowered "
                                                 "(1: texture evidence cancels against the class objective's).")


def shuffle_tiles(x: torch.Tensor, grid: int, perms: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """``x`` rolled by ``shift``, cut into ``grid`` x ``grid`` tiles, each image's tiles put in
    the order of its row of ``perms`` (B, grid * grid); the rest of the image (when the side is
    not a multiple of ``grid``) stays where it is."""
    x = torch.roll(x, shifts=shift, dims=(2, 3))
    b, c, h, w = x.shape
    th, tw = h // grid, w // grid
    core = x[:, :, :grid * th, :grid * tw]
    tiles = core.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, th, tw)
    index = perms.to(x.device).view(b, -1, 1, 1, 1).expand_as(tiles)
    tiles = tiles.gather(1, index)
    core = tiles.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * th, grid * tw)
    out = x.clone()
    out[:, :, :grid * th, :grid * tw] = core
    return out


class ShapeContrast(ClassObjective):
    """Lower the target's logit on a tile-shuffled copy of the image: texture alone stops paying."""

    name = "shape-contrast"
    Params = ShapeContrastParams

    @property
    def heads(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"logits"})

    def shuffled(self, ctx, image: torch.Tensor) -> torch.Tensor:
        g = ctx.generator(self)
        n = self.params.grid * self.params.grid
        perms = torch.stack([torch.randperm(n, generator=g) for _ in range(image.shape[0])])
        shift = tuple(int(v) for v in torch.randint(0, 10**6, (2,), generator=g))
        h, w = image.shape[-2:]
        return shuffle_tiles(image, self.params.grid, perms, (shift[0] % h, shift[1] % w))

    def loss(self, ctx, out, image: torch.Tensor) -> torch.Tensor:
        logits = ctx.model(self.shuffled(ctx, image).float()).logits  # the model takes float32, as the view
        return self.params.weight * self.picked(logits).to(image.dtype)

    def targets(self) -> None:
        return None  # it lowers the targets' logits on a copy: the run's aims are the class objective's

    def record(self) -> dict[str, Any]:
        return {"grid": self.params.grid, "weight": self.params.weight}


@hookimpl
def register_steps(registry):
    registry.add_step(ShapeContrast)
