"""target-blend: the target moves from class ``start`` to class ``end`` over the step's window.

The article's husky-to-dalmatian video: at iteration n of q the loss is
|C - w_start * O_start| + |C - w_end * O_end| + lambda * sum|a| with w_end = n / q and
w_start = 1 - w_end (here q is the step's window, so the blend ends exactly on ``end``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipeline_core.errors import Location, RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.objectives import ClassObjective, Targets, l1_image, list_len, resolve_classes
from pipeline_core.step import StepParams

from ..lazy_imports import torch


class TargetBlendParams(StepParams):
    start: Targets = Field(..., description="Class at the beginning (name or index, or a list per image).")
    end: Targets = Field(..., description="Class at the end (name or index, or a list per image).")
    C: float = Field(200.0, description="The constant the weighted logits are pulled toward.")
    lam: float = Field(0.001, ge=0, alias="lambda", description="Weight of the L1 norm of the input image.")
    head: str = Field("logits", description="Model output to read.")


class TargetBlend(ClassObjective):
    """Blend the target linearly from 'start' to 'end' while the step is active."""

    name = "target-blend"
    Params = TargetBlendParams

    @classmethod
    def batch_hint(cls, params) -> int | None:
        return max(list_len(params.start) or 0, list_len(params.end) or 0) or None

    def bind(self, plan) -> None:
        self.start = resolve_classes(plan, self.params.start, "start")
        self.end = resolve_classes(plan, self.params.end, "end")
        self.classes = self.end
        self.start_names = [plan.class_name(i) for i in self.start]
        self.names = [plan.class_name(i) for i in self.end]
        if self.start == self.end:
            raise RecipeError("'start' and 'end' are the same class; use L1-loss instead", Location(key="end"))

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.start_tensor = torch.tensor(self.start, device=ctx.device)

    def weight(self, iteration: int) -> float:
        """w_end at ``iteration``: 0 at the window's first iteration, 1 at its last."""
        return self.schedule.progress(iteration)

    def loss(self, ctx, out, image):
        w = self.weight(ctx.iteration)
        logits = out.head(self.params.head)
        loss = (self.params.C - (1 - w) * self.picked(logits, self.start_tensor)).abs()
        loss = loss + (self.params.C - w * self.picked(logits)).abs()
        if self.params.lam:
            loss = loss + self.params.lam * l1_image(image)
        return loss

    def targets(self) -> list[list[dict[str, Any]]]:
        return [
            [{"index": a, "name": an, "start_weight": 1.0, "final_weight": 0.0},
             {"index": b, "name": bn, "start_weight": 0.0, "final_weight": 1.0}]
            for a, an, b, bn in zip(self.start, self.start_names, self.end, self.names)
        ]


@hookimpl
def register_steps(registry):
    registry.add_step(TargetBlend)
