"""blur: Gaussian smoothing, the article's smoothness prior (3x3, sigma 0.8, first three quarters)."""

from __future__ import annotations

from pydantic import Field, field_validator

from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams

from ..lazy_imports import TF


class BlurParams(TransformParams):
    kernel: int = Field(3, ge=1, le=255, description="Kernel side in pixels (odd).")
    sigma: float | None = Field(None, gt=0, description="Standard deviation; default as torchvision: 0.3*((k-1)/2-1)+0.8.")

    @field_validator("kernel")
    @classmethod
    def _odd(cls, k: int) -> int:
        if k % 2 == 0:
            raise ValueError(f"the kernel side must be odd, got {k}")
        return k


class Blur(Step):
    """Convolve with a Gaussian kernel (torchvision's gaussian_blur, reflect padding)."""

    name = "blur"
    kind = StepKind.TRANSFORM
    Params = BlurParams

    def setup(self, ctx) -> None:
        k = self.params.kernel
        self.sigma = self.params.sigma or 0.3 * ((k - 1) * 0.5 - 1) + 0.8

    def apply(self, ctx, x):
        k = self.params.kernel
        if k == 1:
            return x
        return TF.gaussian_blur(x, [k, k], [self.sigma, self.sigma])


@hookimpl
def register_steps(registry):
    registry.add_step(Blur)
