"""Where a model ranks each image's target among its classes, tallied overall and per class.

A model that did not make an image is the closest cheap stand-in for "a person would recognise
it": the share of images whose target is its top-1 and top-5 class and the mean probability of
the target. An image scored NaN or Inf is never a hit: it counts as not in the top 1 or top 5,
with probability 0, and the tally says how many there were. Targets are matched to the model's
classes by name (case, spaces and underscores ignored) and otherwise by index when the class
lists agree in size; an image whose target the model does not know is not scored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from pipeline_core.model import ModelAdapter
from pipeline_core.recipe.classnames import class_key
from pipeline_core.recipe.model_arg import EvalModel, build_module
from pipeline_core.registry import Registry
from pipeline_core.scoring.images import ScoredImage

#: the file the scores are written to, in the run (or sweep) folder
FILE = "evaluation.json"
#: the sweep index that marks a sweep folder (its scores go into each job's entry)
SWEEP_FILE = "sweep.json"


def target_in(categories: Sequence[str], index: int, name: str) -> int | None:
    """The evaluator's index for a generator's class: by name, else by index if the lists agree in size."""
    wanted = class_key(name)
    if 0 <= index < len(categories) and class_key(categories[index]) == wanted:
        return index
    for i, cat in enumerate(categories):
        if class_key(cat) == wanted:
            return i
    if re.fullmatch(r"\d+", name) and 0 <= index < len(categories):
        return index  # the generator had no names: trust the index
    return None


@dataclass
class Tally:
    n: int = 0
    top1: int = 0
    top5: int = 0
    prob: float = 0.0
    #: images whose scores held NaN or Inf (counted as misses)
    non_finite: int = 0

    def add(self, rank: int, prob: float) -> None:
        self.n += 1
        self.top1 += rank == 1
        self.top5 += rank <= 5
        self.prob += prob

    def summary(self) -> dict[str, Any]:
        n = max(self.n, 1)
        summary = {"images": self.n, "top1": round(self.top1 / n, 4), "top5": round(self.top5 / n, 4),
                   "mean_target_probability": round(self.prob / n, 4)}
        if self.non_finite:
            summary["non_finite"] = self.non_finite
        return summary


@dataclass
class ModelScore:
    model: EvalModel
    overall: Tally = field(default_factory=Tally)
    per_class: dict[str, Tally] = field(default_factory=dict)
    images: list[dict[str, Any]] = field(default_factory=list)
    unscored: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.label,
            "spec": self.model.describe(),
            "overall": self.overall.summary(),
            "per_class": {name: t.summary() for name, t in sorted(self.per_class.items())},
            "unscored": self.unscored,
            "images": self.images,
        }


def build_adapter(model: EvalModel, registry: Registry, device: torch.device) -> ModelAdapter:
    """Load a scoring model exactly as a run would (same registry, weights and preprocessing)."""
    module, info = build_module(model, registry, where=f"--model {model.text or model.name}: ")
    return ModelAdapter(module, info, device=device)


@torch.no_grad()
def score(adapter: ModelAdapter, model: EvalModel, pictures: Sequence[torch.Tensor],
          images: Sequence[ScoredImage], batch_size: int = 16) -> ModelScore:
    """Rank of each image's target among the model's classes, and its probability."""
    result = ModelScore(model)
    cats = adapter.categories
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pics = pictures[start:start + batch_size]
        size = adapter.size or pics[0].shape[-1]
        # photos of different sizes: bring each to the model's side first so they stack
        batch = torch.stack([torch.nn.functional.interpolate(p[None], size=(size, size), mode="bilinear",
                                                             align_corners=False, antialias=True)[0]
                             if tuple(p.shape[-2:]) != (size, size) else p for p in pics]).to(adapter.device)
        probs = torch.softmax(adapter(batch).logits.float(), dim=1).cpu()
        for item, p in zip(chunk, probs):
            index = target_in(cats, item.target_index, item.target_name)
            if index is None:
                result.unscored.append(item.file)
                continue
            finite = bool(torch.isfinite(p).all())
            if finite:
                rank = int((p > p[index]).sum()) + 1
                prob = float(p[index])
            else:  # NaN compares false with everything: it would rank first; it is never a hit
                rank, prob = len(p) + 1, 0.0
            tallies = [result.overall, result.per_class.setdefault(item.target_name, Tally())]
            for tally in tallies:
                tally.add(rank, prob)
                tally.non_finite += not finite
            top = int(p.nan_to_num(nan=-1.0).argmax())
            result.images.append({"file": item.file, "target": item.target_name, "rank": rank,
                                  "target_probability": round(prob, 6),
                                  "top1": str(cats[top]) if top < len(cats) else str(top),
                                  "top1_probability": round(float(p[top]), 6) if finite else None,
                                  **({} if finite else {"non_finite": True})})
    return result
