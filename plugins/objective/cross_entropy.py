"""cross-entropy: the classifier's training loss toward the target class (the article's first try)."""

from __future__ import annotations

from pydantic import Field

from pipeline_core.hookspecs import hookimpl
from pipeline_core.objectives import ClassObjective, ClassParams

from ..lazy_imports import F


class CrossEntropyParams(ClassParams):
    weight: float = Field(1.0, description="Multiplies the loss.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="As in torch.nn.functional.cross_entropy.")


class CrossEntropy(ClassObjective):
    """Per image: weight * cross_entropy(logits, target)."""

    name = "cross-entropy"
    Params = CrossEntropyParams

    def loss(self, ctx, out, image):
        logits = out.head(self.params.head)
        ce = F.cross_entropy(logits, self.class_tensor, reduction="none", label_smoothing=self.params.label_smoothing)
        return self.params.weight * ce


@hookimpl
def register_steps(registry):
    registry.add_step(CrossEntropy)
