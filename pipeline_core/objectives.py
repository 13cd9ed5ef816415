"""Helpers for objectives that pull images toward classes; plugin authors may subclass them.

:class:`ClassObjective` resolves ``target`` (a class name or index, or a list: one per image,
repeated to fill the batch) against the model's own class list at validation time, picks the
model head to read (``logits`` or e.g. InceptionV3's ``aux``), and reports the targets for
run.json and the video's red dots.
"""

from __future__ import annotations

from typing import Any, ClassVar, Union

import torch
from pydantic import Field, StrictInt

from pipeline_core.errors import Location, RecipeError
from pipeline_core.recipe.plan import Plan
from pipeline_core.step import Step, StepKind, StepParams

__all__ = [
    "ClassRef",
    "Targets",
    "ClassParams",
    "ClassObjective",
    "resolve_classes",
    "list_len",
    "l1_image",
]

ClassRef = Union[StrictInt, str]  # strict: 'target: true' must not mean class 1
Targets = Union[ClassRef, list[ClassRef]]


class ClassParams(StepParams):
    target: Targets = Field(..., description="Class name or index, or a list (one per image, repeated to fill the batch).")
    head: str = Field("logits", description="Model output to read: logits, or a head such as 'aux' (InceptionV3).")


def resolve_classes(plan: Plan, refs: Targets, key: str) -> list[int]:
    try:
        return plan.per_image(refs)
    except RecipeError as exc:
        raise RecipeError(exc.message, Location(key=key)) from None


def list_len(refs: Any) -> int | None:
    return len(refs) if isinstance(refs, list) else None


class ClassObjective(Step):
    kind: ClassVar[StepKind] = StepKind.OBJECTIVE
    Params: ClassVar[type[StepParams]] = ClassParams

    @classmethod
    def batch_hint(cls, params: StepParams) -> int | None:
        return list_len(params.target)

    @property
    def heads(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({self.params.head})

    def bind(self, plan: Plan) -> None:
        self.classes = resolve_classes(plan, self.params.target, "target")
        self.names = [plan.class_name(i) for i in self.classes]

    def setup(self, ctx) -> None:
        self.class_tensor = torch.tensor(self.classes, device=ctx.device, dtype=torch.long)

    def picked(self, logits: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Each image's logit of its own class: shape (B,)."""
        classes = self.class_tensor if classes is None else classes
        return logits.gather(1, classes.view(-1, 1)).squeeze(1)

    def targets(self) -> list[list[dict[str, Any]]]:
        return [[{"index": i, "name": n, "weight": 1.0}] for i, n in zip(self.classes, self.names)]


def l1_image(image: torch.Tensor) -> torch.Tensor:
    """Sum of |a| over each image: the article's L1 prior on the input, shape (B,)."""
    return image.abs().flatten(1).sum(1)
