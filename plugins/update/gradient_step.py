"""gradient-step: the article's plain gradient step, a <- a - lr * grad (optionally normalised first)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind

from ..lazy_imports import torch
from .update_params import UpdateParams


class GradientStepParams(UpdateParams):
    lr: float = Field(..., gt=0, description="Step size (the article: 10000 for cross-entropy, 0.15 for L1-loss).")
    normalize: Literal["none", "std", "max"] = Field(
        "none", description="Divide the gradient by its std or max |g| per image first (as DeepDream does).")


def _normalized(g: torch.Tensor, how: str) -> torch.Tensor:
    if how == "none":
        return g
    flat = g.flatten(1)
    scale = flat.std(dim=1) if how == "std" else flat.abs().amax(dim=1)
    return g / (scale.view(-1, *[1] * (g.dim() - 1)) + 1e-12)


class GradientStep(Step):
    """a <- a - lr * grad."""

    name = "gradient-step"
    kind = StepKind.UPDATE
    Params = GradientStepParams

    def update(self, ctx, params, grads):
        for p, g in zip(params, grads):
            p.sub_(_normalized(g, self.params.normalize), alpha=self.params.lr)
            if self.params.clamp:
                p.clamp_(0, 1)


@hookimpl
def register_steps(registry):
    registry.add_step(GradientStep)
