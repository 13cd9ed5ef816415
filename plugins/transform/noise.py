"""noise: Gaussian noise on what the model sees, a new draw every iteration (randomised smoothing).

A classifier's gradient with respect to its input is mostly a pattern of single pixels: the
direction that changes the logit fastest is one no person sees. Averaged over noisy copies of
the input, the model becomes a smoothed classifier (Cohen et al. 2019), and the gradients of
smoothed classifiers look like the class (Kaur et al. 2019, "perceptually aligned
gradients"): strokes, edges and parts instead of grain. Drawing one noisy copy per iteration
takes that average over the run for free.

Measured with MobileNetV2 on twenty classes not used elsewhere for tuning, a standard
deviation of 0.1 turned the class images from busy collages of textures into larger, smoother
objects (a turtle, a sitting cat, an elephant's head), at the same top-5 of independent judges
(benchmarks/README.md). The noise is added after the other view transforms, and the model
sees it unclamped. Every draw comes from the step's own seeded generator (on a GPU, a device
generator seeded by it), so runs replay and resume exactly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline_core.context import seeded_draw
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams, ramp_range

from ..lazy_imports import torch


#: one standard deviation, or a [start, end] ramp, each in [0, 1]
NoiseStd = ramp_range(0, 1, what="a standard deviation")


class NoiseParams(TransformParams):
    on: Literal["image", "view"] = Field("view", description="view only: the stored image is never noised.")
    std: NoiseStd = Field(
        0.1, description="Standard deviation of the noise, in the [0, 1] pixel range: one number, or [start, end] "
                         "moving linearly over the step's active iterations (strong noise first: the large shapes "
                         "form; weak noise last: the detail comes).")


class Noise(Step):
    """Add Gaussian noise to the view, a new draw each iteration."""

    name = "noise"
    kind = StepKind.TRANSFORM
    Params = NoiseParams
    places = ("view",)  # on the stored image it would make it grainier every iteration

    def std_at(self, iteration: int) -> float:
        """The noise's standard deviation at ``iteration``."""
        return self.ramp(self.params.std, iteration)

    def apply(self, ctx, x):
        std = self.std_at(ctx.iteration)
        noise = seeded_draw(torch.randn, tuple(x.shape), ctx.generator(self), x)  # drawn even at 0: the sequence stays put
        return x + std * noise if std else x


@hookimpl
def register_steps(registry):
    registry.add_step(Noise)
