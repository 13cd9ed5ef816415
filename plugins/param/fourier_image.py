"""fourier-image: optimise a 1/f-scaled Fourier spectrum in decorrelated colour instead of pixels.

Feature-visualisation work after the article (Olah et al. 2017, "Feature Visualization")
found that plain pixel gradients are dominated by high frequencies, which is why the article
needs blur and resizing to get anything recognisable. Optimising a spectrum whose coefficients
are scaled by 1/f (and colours along ImageNet's principal colour axes) changes the geometry of
the optimisation itself: the same gradient step now moves the image mostly in the large,
smooth, naturally coloured directions. Every other step still sees pixels: init steps make the
starting image, ``on: image`` transforms rewrite it, and the output shows it.
"""

from __future__ import annotations

from pydantic import Field

from pipeline_core.hookspecs import hookimpl
from pipeline_core.parameterization import FourierImage
from pipeline_core.step import Step, StepKind, StepParams


class FourierImageParams(StepParams):
    decay: float = Field(1.0, ge=0, le=3, description="Spectrum gain 1/f^decay: 0 is white (pixel-like), 1 natural, more is smoother.")
    decorrelate: bool = Field(True, description="Step along ImageNet's principal colour axes instead of raw R, G, B.")
    gain: float = Field(0.25, gt=0, description="Overall size of a unit coefficient change, in sigmoid logits.")
    noise: float = Field(0.0, ge=0, description="Standard deviation of seeded noise added to the spectrum at the start.")


class FourierImageStep(Step):
    """Make the image a sigmoid of a scaled, decorrelated Fourier spectrum (Lucid's parameterisation)."""

    name = "fourier-image"
    kind = StepKind.PARAM
    Params = FourierImageParams

    def build(self, ctx, image):
        p = self.params
        return FourierImage(image, decay=p.decay, decorrelate=p.decorrelate, gain=p.gain, noise=p.noise,
                            generator=ctx.generator(self))


@hookimpl
def register_steps(registry):
    registry.add_step(FourierImageStep)
