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

from pipeline_core.errors import Location, RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams

from .crops import _gaussian


class NoiseParams(TransformParams):
    on: Literal["image", "view"] = Field("view", description="view only: the stored image is never noised.")
    std: float = Field(0.1, ge=0, le=1, description="Standard deviation of the noise, in the [0, 1] pixel range.")


class Noise(Step):
    """Add Gaussian noise to the view, a new draw each iteration."""

    name = "noise"
    kind = StepKind.TRANSFORM
    Params = NoiseParams

    def bind(self, plan) -> None:
        if self.params.on != "view":
            raise RecipeError("noise would make the stored image grainier every iteration; it acts on what the "
                              "model sees: use on: view", Location(key="on"))

    def apply(self, ctx, x):
        if self.params.std == 0:
            return x
        return x + self.params.std * _gaussian(tuple(x.shape), ctx.generator(self), x)


@hookimpl
def register_steps(registry):
    registry.add_step(Noise)
