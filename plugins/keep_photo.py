"""keep-photo: a penalty for straying from the starting photograph (transfiguration that keeps it).

Gradient descent toward a class from a photo has no reason to keep the photo: left alone, the
new class overwrites it and the result is a class image in the photo's outline. Feature
accentuation (Hamblin et al. 2024) adds the mean squared distance to the photo to the
objective, so that the class grows *in* the picture. This step is that penalty, with one
addition: the distance can be taken between blurred copies (``sigma``), which keeps the
photo's layout, shapes and colours and leaves fine texture free to change, since texture is
where a classifier sees a class first.

The reference is the stored image the first time the step runs (the photo, after the init
and parameterisation steps), kept on the device and in checkpoints; when an image transform
resizes the stored image, the reference is resized to match (antialiased).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from pydantic import Field

from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, StepParams


class KeepPhotoParams(StepParams):
    weight: float = Field(100.0, ge=0, description="Multiplies the mean squared distance to the photo (pixels in "
                                                   "[0, 1]); about 100 keeps the layout against L1-loss's C of 200.")
    sigma: float = Field(2.0, ge=0, le=64, description="Compare copies blurred by a Gaussian of this standard "
                                                      "deviation in pixels: the layout must stay, fine texture may "
                                                      "change; 0 compares the pixels themselves.")


def _blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    kernel = 2 * max(1, round(3 * sigma)) + 1
    kernel = min(kernel, 2 * (min(x.shape[-2:]) // 2) - 1)  # reflect padding needs a kernel inside the image
    return TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma]) if kernel >= 3 else x


class KeepPhoto(Step):
    """Penalise the mean squared distance to the starting photo (feature accentuation's prior)."""

    name = "keep-photo"
    kind = StepKind.OBJECTIVE
    Params = KeepPhotoParams

    def setup(self, ctx) -> None:
        self.reference: torch.Tensor | None = None

    def _reference(self, image: torch.Tensor) -> torch.Tensor:
        if self.reference is None:
            self.reference = image.detach().clone()
        ref = self.reference
        if ref.shape[-2:] != image.shape[-2:]:
            ref = F.interpolate(ref, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False, antialias=True)
        return ref.to(image.dtype)

    def loss(self, ctx, out, image: torch.Tensor) -> torch.Tensor:
        ref = self._reference(image)
        sigma = self.params.sigma
        diff = _blurred(image, sigma) - _blurred(ref, sigma)
        return self.params.weight * diff.square().flatten(1).mean(1)

    def state_dict(self) -> dict:
        return {"reference": None if self.reference is None else self.reference.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        ref = state.get("reference")
        self.reference = None if ref is None else ref.clone()


@hookimpl
def register_steps(registry):
    registry.add_step(KeepPhoto)
