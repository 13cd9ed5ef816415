"""spectrum-jitter: each view's spatial frequencies scaled at random (spectrum simulation).

A picture made with one model tends to fit that model's exact frequency response: what another
model sees depends on how it weighs fine against coarse detail, and the picture's class often
lives in a band only its generator weighs strongly. Long et al. (2022, "Frequency domain model
augmentation for adversarial attack") showed that scaling every frequency of the input by a
random factor near one, a new draw for every copy and iteration, stands in for a family of
models with other frequency responses; images that please the whole family fool other models
far more often, which is what a picture meant for other classifiers wants too.

Each view's spectrum is taken of its mirror extension (the view reflected at its right and
bottom edges, a cosine transform in all but name), so the scaling does not wrap one edge into
the other; every coefficient of every channel is multiplied by a factor drawn uniformly from
``[1 - strength, 1 + strength]``, and the view is transformed back and cropped. The stored
image never changes. Draws come from the step's seeded generator (on a GPU, a device generator
seeded by it), so runs replay and resume exactly.

On the benchmark's photo/class tuning pairs, within 100 iterations, strength 0.5 slowed the new
class down and 0.2 was even with no jitter (benchmarks/README.md); no recipe uses it yet.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline_core.context import seeded_draw
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams, ramp_range

from ..lazy_imports import torch


#: one strength, or a [start, end] ramp, each in [0, 1)
Strength = ramp_range(0, 1, what="a strength", high_open=True, why="a factor must stay positive")


class SpectrumJitterParams(TransformParams):
    on: Literal["image", "view"] = Field("view", description="view only: the stored image keeps its spectrum.")
    strength: Strength = Field(
        0.5, description="Each frequency is multiplied by a factor drawn from [1 - strength, 1 + strength], a "
                         "new draw per view and iteration (the paper used 0.5); one number, or [start, end] "
                         "moving linearly over the step's active iterations.")


def scale_spectrum(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) with the spectrum of its mirror extension multiplied by ``factors``
    (N, C, 2H, W + 1), then cropped back; factors of one give ``x`` again."""
    h, w = x.shape[-2:]
    mirrored = torch.cat([x, x.flip(-1)], dim=-1)
    mirrored = torch.cat([mirrored, mirrored.flip(-2)], dim=-2)
    spectrum = torch.fft.rfft2(mirrored.float(), norm="ortho")
    back = torch.fft.irfft2(spectrum * factors.float(), s=(2 * h, 2 * w), norm="ortho")
    return back[..., :h, :w].to(x.dtype)


class SpectrumJitter(Step):
    """Scale every spatial frequency of each view by a random factor near one."""

    name = "spectrum-jitter"
    kind = StepKind.TRANSFORM
    Params = SpectrumJitterParams
    places = ("view",)  # on the stored image it would blur and sharpen it at random every iteration

    def apply(self, ctx, x):
        strength = self.ramp(self.params.strength, ctx.iteration)
        n, c, h, w = x.shape
        draws = seeded_draw(torch.rand, (n, c, 2 * h, w + 1), ctx.generator(self), x)  # drawn even at 0: the sequence stays put
        if not strength:
            return x
        return scale_spectrum(x, 1 + strength * (2 * draws - 1))


@hookimpl
def register_steps(registry):
    registry.add_step(SpectrumJitter)
