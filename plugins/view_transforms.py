"""jitter and random-scale: random changes to what the model sees, a new draw every iteration.

An image that keeps its class only when seen exactly as it is, pixel for pixel, is an
adversarial pattern, not a picture. Showing the model a slightly shifted or zoomed copy at each
iteration (Lucid's "transformation robustness") makes the gradient favour features that survive
such changes, which are the ones other models, and people, also see. Both default to
``on: view``: the stored image stays put and the transform is differentiable, so the gradient
flows back through it. Every draw comes from the step's own seeded generator, so runs replay
exactly. Both keep the image's shape (the model adapter resizes to the model's input anyway).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from pipeline_core.context import to_device
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams

Fill = Literal["reflect", "replicate", "constant", "noise"]


class ViewParams(TransformParams):
    on: Literal["image", "view"] = Field(
        "view", description="view (default): only what the model sees; image: move the stored image itself."
    )


class JitterParams(ViewParams):
    pixels: int = Field(8, ge=0, le=1024, description="Shift each image by up to this many pixels in x and in y.")
    fill: Fill = Field("reflect", description="What fills the strip the shift uncovers: reflect, replicate, constant or noise.")
    value: float = Field(0.5, description="The grey level for fill: constant.")


def _uniform(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform noise drawn where ``like`` lives.

    On the CPU the step's generator draws it directly. On a GPU drawing a whole batch of noise
    on the host and copying it over would cost more than the model's own pass (tens of
    milliseconds a batch), so the step's generator draws only a seed for a generator on the
    device: still one seeded, checkpointed stream, so runs replay and resume exactly.
    """
    if like.device.type == "cpu":
        return torch.rand(shape, generator=generator).to(like.dtype)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    device_generator = torch.Generator(device=like.device).manual_seed(seed)
    return torch.rand(shape, generator=device_generator, device=like.device, dtype=like.dtype)


def _fill_pad(x: torch.Tensor, pad: int, fill: str, value: float, generator: torch.Generator) -> torch.Tensor:
    """Pad all four sides by ``pad`` pixels (reflect falls back to replicate when too small)."""
    if pad == 0:
        return x
    if fill in ("reflect", "replicate"):
        mode = "reflect" if fill == "reflect" and pad < min(x.shape[-2:]) else "replicate"
        return F.pad(x, (pad, pad, pad, pad), mode=mode)
    padded = F.pad(x, (pad, pad, pad, pad), mode="constant", value=value)
    if fill == "noise":
        noise = _uniform(padded.shape, generator, x)
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


class RandomScaleParams(ViewParams):
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
    registry.add_step(Jitter)
    registry.add_step(RandomScale)
