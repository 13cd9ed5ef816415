"""jitter: shift what the model sees by a few random pixels, a new draw every iteration.

An image that keeps its class only when seen exactly as it is, pixel for pixel, is an
adversarial pattern, not a picture. Showing the model a slightly shifted copy at each
iteration (Lucid's "transformation robustness") makes the gradient favour features that survive
such changes, which are the ones other models, and people, also see. It defaults to
``on: view``: the stored image stays put and the shift is differentiable, so the gradient
flows back through it. Every draw comes from the step's own seeded generator, so runs replay
exactly. The image keeps its shape (the model adapter resizes to the model's input anyway).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline_core.context import seeded_draw, to_device
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams

from ..lazy_imports import F, torch

Fill = Literal["reflect", "replicate", "constant", "noise"]


class JitterParams(TransformParams):
    on: Literal["image", "view"] = Field(
        "view", description="view (default): only what the model sees; image: move the stored image itself."
    )
    pixels: int = Field(8, ge=0, le=1024, description="Shift each image by up to this many pixels in x and in y.")
    fill: Fill = Field("reflect", description="What fills the strip the shift uncovers: reflect, replicate, constant or noise.")
    value: float = Field(0.5, description="The grey level for fill: constant.")


def _fill_pad(x: torch.Tensor, pad: int, fill: str, value: float, generator: torch.Generator) -> torch.Tensor:
    """Pad all four sides by ``pad`` pixels (reflect falls back to replicate when too small)."""
    if pad == 0:
        return x
    if fill in ("reflect", "replicate"):
        mode = "reflect" if fill == "reflect" and pad < min(x.shape[-2:]) else "replicate"
        return F.pad(x, (pad, pad, pad, pad), mode=mode)
    padded = F.pad(x, (pad, pad, pad, pad), mode="constant", value=value)
    if fill == "noise":
        noise = seeded_draw(torch.rand, tuple(padded.shape), generator, x)
        inside = torch.zeros(padded.shape[-2:], dtype=torch.bool, device=x.device)
        inside[pad:-pad, pad:-pad] = True
        padded = torch.where(inside, padded, noise)
    return padded


def _crop(padded: torch.Tensor, offsets: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Each image's own (h, w) window at (dy, dx), in one gather rather than one slice per image.

    Every output pixel reads a different input pixel, so the backward pass (a scatter) never
    adds two values into one place: the gradient is exact and the same as slicing's.
    """
    b, c, hp, wp = padded.shape
    rows = offsets[:, 0, None] + torch.arange(h, device=padded.device)  # (b, h)
    cols = offsets[:, 1, None] + torch.arange(w, device=padded.device)  # (b, w)
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, index).view(b, c, h, w)


class Jitter(Step):
    """Shift each image by its own random whole number of pixels; uncovered edges are filled."""

    name = "jitter"
    kind = StepKind.TRANSFORM
    Params = JitterParams

    def apply(self, ctx, x):
        p = self.params
        if p.pixels == 0:
            return x
        g = ctx.generator(self)
        b, _, h, w = x.shape
        offsets = torch.randint(0, 2 * p.pixels + 1, (b, 2), generator=g)
        padded = _fill_pad(x, p.pixels, p.fill, p.value, g)
        return _crop(padded, to_device(offsets, x.device), h, w)


@hookimpl
def register_steps(registry):
    registry.add_step(Jitter)
