"""color-jitter: random brightness, contrast, saturation and hue, seeded and exactly reproducible.

torchvision's ColorJitter draws from Python's and torch's global generators, so a run cannot
be replayed; here every factor comes from the step's own generator. Each parameter ``c``
means a factor drawn uniformly from [1 - c, 1 + c] (hue: a shift in [-c, c] turns), like
torchvision's, and like torchvision the result is clamped to [0, 1] unless ``clamp: false``.
"""

from __future__ import annotations

from pydantic import Field

from pipeline_core.context import to_device
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams

from ..lazy_imports import TF, torch


class ColorJitterParams(TransformParams):
    brightness: float = Field(0.0, ge=0, description="Factor range [1-b, 1+b].")
    contrast: float = Field(0.0, ge=0, description="Factor range [1-c, 1+c].")
    saturation: float = Field(0.0, ge=0, description="Factor range [1-s, 1+s].")
    hue: float = Field(0.0, ge=0, le=0.5, description="Hue shift range [-h, h] (in turns).")
    per_image: bool = Field(True, description="Draw factors for each image (else one set for the batch).")
    clamp: bool = Field(True, description="Clamp the result to [0, 1], as torchvision does.")


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


class ColorJitter(Step):
    """Jitter colours with factors from the step's own seeded generator."""

    name = "color-jitter"
    kind = StepKind.TRANSFORM
    Params = ColorJitterParams

    def _factors(self, ctx, spread: float, n: int, centre: float = 1.0) -> torch.Tensor:
        draw = torch.rand(n if self.params.per_image else 1, generator=ctx.generator(self), dtype=torch.float64)
        f = (centre - spread + 2 * spread * draw).float()
        return f.expand(n) if not self.params.per_image else f

    def apply(self, ctx, x):
        p, b = self.params, x.shape[0]
        dev = x.device
        if p.brightness:
            x = x * to_device(self._factors(ctx, p.brightness, b), dev).view(-1, 1, 1, 1)
        if p.contrast:
            f = to_device(self._factors(ctx, p.contrast, b), dev).view(-1, 1, 1, 1)
            mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * f + mean
        if p.saturation:
            f = to_device(self._factors(ctx, p.saturation, b), dev).view(-1, 1, 1, 1)
            gray = _gray(x)
            x = (x - gray) * f + gray
        if p.hue:
            shifts = self._factors(ctx, p.hue, b, centre=0.0).tolist()
            x = x.clamp(0, 1)  # hue is only defined on valid colours
            x = torch.stack([TF.adjust_hue(x[i], shifts[i]) for i in range(b)])
        return x.clamp(0, 1) if p.clamp else x


@hookimpl
def register_steps(registry):
    registry.add_step(ColorJitter)
