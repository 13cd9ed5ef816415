"""octave: work the image at several scales, small first, upscaling between them.

The run's iterations are split evenly across the scales (or by ``split``); at the first
iteration of each octave the stored image is resized to ``scale * base`` where base is the
image's size when the loop starts. Large shapes settle at the small scales, detail at the
large ones (DeepDream's octaves).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline_core.errors import Location, RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams

from ..lazy_imports import F


class OctaveParams(TransformParams):
    scales: list[float] = Field([0.5, 0.71, 1.0], min_length=1, description="Scales of the base size, in order.")
    split: list[float] | None = Field(None, description="Share of the iterations for each scale (default: equal).")
    mode: Literal["bilinear", "bicubic", "nearest", "area"] = Field("bicubic", description="Resampling between octaves.")

    @field_validator("scales")
    @classmethod
    def _scales(cls, scales: list[float]) -> list[float]:
        if any(not 0.05 <= s <= 8 for s in scales):
            raise ValueError(f"scales must lie in 0.05..8, got {scales}")
        return scales


class Octave(Step):
    """Resize the stored image at each octave boundary."""

    name = "octave"
    kind = StepKind.TRANSFORM
    Params = OctaveParams
    places = ("image",)  # it resizes the stored image; a view is made afresh every iteration

    def bind(self, plan) -> None:
        n = len(self.params.scales)
        split = self.params.split or [1.0] * n
        if len(split) != n or any(s <= 0 for s in split):
            raise RecipeError(f"'split' needs {n} positive numbers, one per scale", Location(key="split"))
        total, acc, self.starts = sum(split), 0.0, []
        for share in split:
            self.starts.append(int(round(acc / total * plan.iterations)))
            acc += share
        if len(set(self.starts)) != n:
            raise RecipeError(f"{plan.iterations} iterations are too few for {n} octaves", Location(key="scales"))
        self.base: tuple[int, int] | None = None
        self.sizes_seen: list[list[int]] = []

    def apply(self, ctx, x):
        if self.base is None:
            self.base = (x.shape[-2], x.shape[-1])
        if ctx.iteration not in self.starts:
            return x
        scale = self.params.scales[self.starts.index(ctx.iteration)]
        size = (max(8, round(self.base[0] * scale)), max(8, round(self.base[1] * scale)))
        self.sizes_seen.append([ctx.iteration, *size])
        if tuple(x.shape[-2:]) == size:
            return x
        kwargs = {} if self.params.mode in ("nearest", "area") else {"align_corners": False}
        return F.interpolate(x, size=size, mode=self.params.mode, **kwargs)

    def state_dict(self) -> dict:
        return {"base": list(self.base) if self.base else None, "sizes_seen": self.sizes_seen}

    def load_state_dict(self, state: dict) -> None:
        self.base = tuple(state["base"]) if state.get("base") else None
        self.sizes_seen = state.get("sizes_seen", [])

    def record(self):
        return {"octaves": [{"from_iteration": it, "height": h, "width": w} for it, h, w in self.sizes_seen]}


@hookimpl
def register_steps(registry):
    registry.add_step(Octave)
