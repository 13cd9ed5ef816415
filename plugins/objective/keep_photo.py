"""keep-photo: a penalty for straying from the starting photograph (transfiguration that keeps it).

Gradient descent toward a class from a photo has no reason to keep the photo: left alone, the
new class overwrites it and the result is a class image in the photo's outline. Feature
accentuation (Hamblin et al. 2024) adds the mean squared distance to the photo to the
objective, so that the class grows *in* the picture. This step is that penalty, with one
addition: the distance can be taken between blurred copies (``sigma``), which keeps the
photo's layout, shapes and colours and leaves fine texture free to change, since texture is
where a classifier sees a class first.

The squared distance makes a little change everywhere cheap and a large change anywhere dear,
so the new class tends to come as a film over the whole photo. ``distance: robust`` takes
instead each pixel's colour distance itself (the Euclidean norm over channels, smoothed near
zero), averaged over pixels: a sparse penalty, under which one region may change a lot while
the rest stays as it was, meant for a small object (a bird, a ball) appearing in a scene. On
the benchmark's tuning pairs it did not beat the squared distance (benchmarks/README.md).

The reference is the stored image the first time the step runs (the photo, after the init
and parameterisation steps), kept on the device and in checkpoints; when an image transform
resizes the stored image, the reference is resized to match (antialiased). A step started late
(``from: 30``) therefore keeps the image of its first iteration, not the photo; to let the class
grow freely first and still pull toward the photo later, ramp ``weight`` instead ([0, 1000]).

A fixed ``weight`` holds the photo as firmly as the class pushes on it, and that push differs
from model to model and photo to photo: ``skip-gradient`` at gamma 0.5 shrinks MobileNetV2's
class gradient at the image to about a quarter, so a weight tuned without it holds four times
too hard with it. ``hold`` sets the balance instead of the weight. At the step's first
iteration the image is the reference, so the step's own gradient is zero and the gradient
reaching the image is the other objectives' push alone; the step reads its size there, per
image, and chooses each image's weight so that the pull back, were every pixel a whole range
(1.0) away from the photo, would be ``hold`` times that push. One setting then holds the photo
alike on any model, and run.json's ``step_facts`` lists the weights chosen. The transfiguration
recipes use it with ``skip-gradient``, which acts on residual models only: one recipe then
holds the photo alike on MobileNetV2, where the class pushes four times less, and on
InceptionV3, where skip-gradient leaves the gradient alone (benchmarks/README.md).
"""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import Field, model_validator

from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, StepParams, ramp_range

from ..lazy_imports import F, TF, torch


#: one weight, or a [start, end] ramp, none negative
Weight = ramp_range(0, float("inf"), what="a weight")


class KeepPhotoParams(StepParams):
    weight: Optional[Weight] = Field(
        None, description="Multiplies the distance to the photo (pixels in [0, 1]); about 100 (the default, "
                          "unless hold is given) keeps the layout against L1-loss's C of 200. One number, or "
                          "[start, end] moving linearly over the step's active iterations.")
    sigma: float = Field(2.0, ge=0, le=64, description="Compare copies blurred by a Gaussian of this standard "
                                                      "deviation in pixels: the layout must stay, fine texture may "
                                                      "change; 0 compares the pixels themselves.")
    distance: Literal["squared", "robust"] = Field(
        "squared", description="squared: the mean squared difference (changes spread over the photo); robust: "
                               "the mean over pixels of each pixel's colour distance, so a region may change while "
                               "the rest stays (about weight / 9 matches squared's pull at a 0.1 difference)")
    hold: Optional[float] = Field(
        None, gt=0, le=100, description="Instead of a weight: each image's weight is chosen from the other "
                                        "objectives' gradient measured at the step's first iteration, so that the pull "
                                        "back from a whole range (1.0) away is hold times it. On MobileNetV2, hold 1 "
                                        "gave weights of 500-1100 with the plain gradient and 120-240 with "
                                        "skip-gradient 0.5.")

    @model_validator(mode="after")
    def _weight_or_hold(self):
        if self.hold is None:
            return self
        if self.weight is not None:
            raise ValueError("give either weight or hold, not both: hold chooses the weight from the gradient it "
                             "measures")
        if self.distance != "squared":
            raise ValueError("hold balances the squared distance; with distance: robust give a weight")
        return self


_DEFAULT_WEIGHT = 100.0

#: Below this colour distance the robust penalty turns quadratic, so its gradient is smooth at the photo.
_ROBUST_EPS = 1e-3


def _blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    kernel = 2 * max(1, round(3 * sigma)) + 1
    kernel = min(kernel, 2 * (min(x.shape[-2:]) // 2) - 1)  # reflect padding needs a kernel inside the image
    return TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma]) if kernel >= 3 else x


class KeepPhoto(Step):
    """Penalise the distance to the starting photo (feature accentuation's prior)."""

    name = "keep-photo"
    kind = StepKind.OBJECTIVE
    Params = KeepPhotoParams

    def setup(self, ctx) -> None:
        self.reference: torch.Tensor | None = None
        #: with ``hold``: the weight per image, chosen at the first iteration
        self.balanced: torch.Tensor | None = None

    def _reference(self, image: torch.Tensor) -> torch.Tensor:
        if self.reference is None:
            self.reference = image.detach().clone()
        ref = self.reference
        if ref.shape[-2:] != image.shape[-2:]:
            ref = F.interpolate(ref, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False, antialias=True)
        return ref.to(image.dtype)

    def loss(self, ctx, out, image: torch.Tensor) -> torch.Tensor:
        ref = self._reference(image)
        weight = self._weight(ctx, image)
        sigma = self.params.sigma
        diff = _blurred(image, sigma) - _blurred(ref, sigma)
        if self.params.distance == "robust":
            per_pixel = (diff.square().sum(1) + _ROBUST_EPS ** 2).sqrt() - _ROBUST_EPS
            return weight * per_pixel.flatten(1).mean(1)
        return weight * diff.square().flatten(1).mean(1)

    def _weight(self, ctx, image: torch.Tensor) -> "float | torch.Tensor":
        if self.params.hold is None:
            weight = _DEFAULT_WEIGHT if self.params.weight is None else self.params.weight
            return self.ramp(weight, getattr(ctx, "iteration", 0))
        if self.balanced is None:  # the first iteration: no pull yet, the push is measured on its way back
            if image.requires_grad:
                image.register_hook(self._measure)
            return 0.0
        return self.balanced.to(image.device, image.dtype)

    def _measure(self, grad: torch.Tensor) -> None:
        """The other objectives' gradient at the photo, per image, and the weight ``hold`` asks of it.

        With the squared distance of images of N values, a uniform shift d costs weight * d^2, and
        its gradient has the norm 2 * weight * d / sqrt(N): at d = 1 that is hold times the push
        g when weight = hold * g * sqrt(N) / 2.
        """
        push = grad.detach().flatten(1).norm(dim=1)
        self.balanced = self.params.hold * push * math.sqrt(grad[0].numel()) / 2

    def record(self) -> dict:
        if self.balanced is None:
            return {}
        return {"weights": [round(float(w), 3) for w in self.balanced.cpu()]}

    def state_dict(self) -> dict:
        return {"reference": None if self.reference is None else self.reference.detach().cpu(),
                "balanced": None if self.balanced is None else self.balanced.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        ref, balanced = state.get("reference"), state.get("balanced")
        self.reference = None if ref is None else ref.clone()
        self.balanced = None if balanced is None else balanced.clone()


@hookimpl
def register_steps(registry):
    registry.add_step(KeepPhoto)
