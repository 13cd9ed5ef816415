"""phase-image: optimise only the phase of the image's spectrum; the magnitude stays natural (MACO).

MACO (Fel et al. 2023, "Unlocking Feature Visualization for Deeper Networks with MAgnitude-
Constrained Optimization") observed that a free Fourier spectrum still drifts into high-
frequency, adversarial texture on large networks, and that the *phase* of a spectrum carries
the structure of an image (where its edges are) while its *magnitude* carries mostly its
statistics (how much energy each scale has). It fixes the magnitude to that of natural
images and lets gradient descent move only the phase: every image it can produce has the
spectrum of a photograph, so energy cannot pile up in high frequencies at all.

Each render, per image ``b`` and decorrelated colour channel ``c``::

    d      = irfft2(magnitude[b, c] * exp(i * phase[b, c]))          (orthonormal FFT)
    d      = (d - mean(d)) / std(d)                                  (over the image's C, H, W)
    image  = sigmoid(contrast * M @ d)                               (M: colour_mixing_matrix)

Choices:

- **The magnitude** is a power law per decorrelated channel, ``A_c / f ** alpha_c`` with ``f``
  in cycles per pixel (the DC term gets the lowest frequency's value), fitted to the mean
  |rfft2| of real photographs by ``benchmarks/natural_spectrum.py``. A law rather than a
  measured table: ten photographs are too few to trust every frequency, and a law holds at any
  image size. Regenerate the constants below with that script.
- **Standardising** over the whole image (not per channel) keeps the fitted ratio between the
  brightness and the two colour-opponent channels, i.e. natural saturation.
- **The sigmoid** maps into [0, 1] smoothly with a gradient everywhere (clipping would give
  saturated pixels no gradient and flat patches). ``contrast`` scales the logits so that a
  random-phase image has the pixel standard deviation of the photographs (the script solves
  for it); larger values give punchier, more saturated images.
- **Starting images** (``set_image``): the phase is read from the image (through the inverse
  of the sigmoid and of the colour mixing), so a photograph start keeps the photograph's
  structure, which is what makes transfiguration recognisable. An image with no structure
  (the flat grey of ``init-noise scale: 0``) has no phase to read; it gets uniformly random
  phases from the step's seeded generator. ``photo_magnitude`` blends the starting image's
  own magnitude into the natural one (geometrically): 0 keeps MACO's natural magnitude
  (the photo survives as edges and layout, its colours and contrast become generic), 1 keeps
  the photo's (the start is then the photo itself up to contrast, and the optimisation can
  change only where things are, not the photo's statistics).
- **Later ``set_image`` calls** (after an ``on: image`` transform) change only the phase at the
  same size: the magnitude is fixed for the whole run, so a transform that acts on the
  magnitude alone (a Gaussian blur, colour jitter of contrast) has no effect; prefer ``on:
  view`` transforms with this parameterisation. A new size (``interpolate``) rebuilds the
  magnitude at that size by the same rule.
"""

from __future__ import annotations

import math

from pydantic import Field

from pipeline_core.hookspecs import hookimpl
from pipeline_core.parameterization import Parameterization, colour_mixing_matrix
from pipeline_core.step import Step, StepKind, StepParams

from ..lazy_imports import torch

# Fitted by ``python benchmarks/natural_spectrum.py`` (the ten photographs of ../shared/images,
# 256 px Hann-windowed crops, rings over 2/256..0.25 cycles/pixel): |F_c(f)| = A_c / f^alpha_c
# per decorrelated channel c (brightness, then the two colour-opponent axes), and the contrast
# at which random-phase images have those photographs' pixel standard deviation.
# The brightness channel follows its law within 3% (rms of log) over the whole fitted range;
# the colour-opponent channels fall a little faster above 0.1 cycles/pixel (JPEG's chroma
# subsampling). Regenerate: ``python benchmarks/natural_spectrum.py`` prints these three lines.
NATURAL_AMPLITUDE = (0.013808, 0.011406, 0.016426)
NATURAL_EXPONENT = (1.3347, 1.3935, 1.3155)
NATURAL_CONTRAST = 1.986


def natural_magnitude(height: int, width: int, amplitude=NATURAL_AMPLITUDE, exponent=NATURAL_EXPONENT) -> torch.Tensor:
    """|F| of a natural image of this size, shape (3, H, W//2 + 1): ``A_c / max(f, 1/max(H, W))^alpha_c``."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.rfftfreq(width, dtype=torch.float64).view(1, -1)
    f = (fy**2 + fx**2).sqrt().clamp_min(1.0 / max(height, width))
    amp = torch.tensor(amplitude, dtype=torch.float64).view(3, 1, 1)
    alpha = torch.tensor(exponent, dtype=torch.float64).view(3, 1, 1)
    return (amp * f.log().mul(-alpha).exp()).float()


def _unit_rms(m: torch.Tensor) -> torch.Tensor:
    """Each image's magnitude scaled to unit root-mean-square over its channels and frequencies."""
    return m / m.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)


class PhaseImage(Parameterization):
    """Pixels from a natural-magnitude spectrum whose phase alone is optimised (MACO).

    ``parameters()`` is the phase, in radians, one real tensor (B, 3, H, W//2 + 1); the
    magnitude of the same shape is a fixed buffer. See the module docstring for the map.
    """

    name = "phase"

    def __init__(self, image: torch.Tensor, *, contrast: float = NATURAL_CONTRAST, photo_magnitude: float = 0.0,
                 noise: float = 0.0, amplitude=NATURAL_AMPLITUDE, exponent=NATURAL_EXPONENT,
                 eps: float = 1e-3, generator: torch.Generator | None = None):
        self.contrast = float(contrast)
        self.photo_magnitude = float(photo_magnitude)
        self.amplitude = tuple(float(a) for a in amplitude)
        self.exponent = tuple(float(e) for e in exponent)
        self.eps = float(eps)
        self.device = image.device
        mix = colour_mixing_matrix()
        self.mix = mix.to(self.device)
        self.unmix = torch.linalg.inv(mix.double()).float().to(self.device)
        self.phase = torch.zeros(0, device=self.device)
        self.magnitude = torch.zeros(0, device=self.device)
        self._size: tuple[int, int] = tuple(image.shape[-2:])
        b, _, h, w = image.shape
        # random phases for images without structure; drawn first, always, so the stream is fixed
        start = self._random_phase((b, 3, h, w // 2 + 1), generator)
        self.set_image(image, fallback=start)
        if noise:
            draw = torch.randn(self.phase.shape, generator=generator, dtype=torch.float32)
            with torch.no_grad():
                self.phase.add_(draw.to(self.device), alpha=noise)

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _random_phase(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        return (torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1) * math.pi

    def _mix(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,bjhw->bihw", matrix, x)

    def _natural(self, h: int, w: int) -> torch.Tensor:
        return natural_magnitude(h, w, self.amplitude, self.exponent).to(self.device).unsqueeze(0)

    def _edges(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rfft columns that hold both +ky and -ky (column 0, and W/2 for an even W), the row
        of each frequency's conjugate partner, and which rows are their own partner."""
        h, w = self._size
        if getattr(self, "_edge_for", None) != (h, w):
            cols = [0] + ([w // 2] if w % 2 == 0 and w > 1 else [])
            rows = torch.arange(h)
            partner = (-rows) % h
            self._edge_cache = (torch.tensor(cols, device=self.device), partner.to(self.device),
                                (partner == rows).view(1, 1, h, 1).to(self.device))
            self._edge_for = (h, w)
        return self._edge_cache

    def effective_phase(self) -> torch.Tensor:
        """The phase the spectrum really has: the parameters made consistent with a real image.

        In the columns that hold both ``+ky`` and ``-ky`` (column 0, and W/2 for an even W) a real
        image's spectrum has conjugate pairs, phase(-ky) = -phase(ky). An inverse FFT given
        anything else keeps only the conjugate-symmetric part, which would shrink the magnitude
        there by a factor depending on the phases; antisymmetrising the phase first keeps every
        magnitude exactly. The few bins that are their own partner (the DC term, and the
        Nyquist rows and columns' corners) are real: their coefficient is magnitude * cos(phase).
        """
        cols, partner, own = self._edges()
        edge = self.phase.index_select(-1, cols)
        anti = torch.where(own, edge, 0.5 * (edge - edge.index_select(-2, partner)))
        return self.phase.index_copy(-1, cols, anti)

    def decorrelated(self) -> torch.Tensor:
        """The image in decorrelated colour before standardisation: irfft2(magnitude * e^(i phase))."""
        h, w = self._size
        return torch.fft.irfft2(torch.polar(self.magnitude, self.effective_phase()), s=(h, w), norm="ortho")

    # -- the Parameterization interface ----------------------------------------------------------
    def image(self) -> torch.Tensor:
        d = self.decorrelated()
        mean = d.mean(dim=(1, 2, 3), keepdim=True)
        std = d.std(dim=(1, 2, 3), keepdim=True)
        d = (d - mean) / (std + 1e-8)
        return torch.sigmoid(self._mix(d, self.mix) * self.contrast)

    def set_image(self, image: torch.Tensor, fallback: torch.Tensor | None = None) -> None:
        """Take the phase from ``image``; at a new size (or batch) also rebuild the magnitude.

        The image is mapped back through the sigmoid and the colour mixing and transformed; the
        phase of every complex bin is read directly. The few real bins (DC, Nyquist corners)
        hold ``magnitude * cos(phase)``, so their phase is the arccosine of the read value over
        the magnitude, after scaling the read spectrum to the stored magnitude's level (the
        render standardises, so that level is free, and so is a common shift of the three DC
        terms, which is chosen to fit them in). ``set_image(image())`` thus leaves the
        image as it was, up to pixels clipped to [eps, 1 - eps]. Images with no structure keep
        their current phase (or ``fallback``, or a fixed seeded draw at a new size).
        """
        image = image.detach().float().to(self.device)
        b, _, h, w = image.shape
        logits = torch.logit(image.clamp(self.eps, 1 - self.eps))
        d = self._mix(logits, self.unmix)
        coeffs = torch.fft.rfft2(d, norm="ortho")
        centred = d - d.mean(dim=(1, 2, 3), keepdim=True)
        flat = (centred.flatten(1).abs().amax(dim=1) < 1e-5).view(-1, 1, 1, 1)  # nothing to read a phase from
        shape = coeffs.shape
        resized = self.phase.shape != shape
        if resized:
            self._size = (h, w)
            magnitude = _unit_rms(self._natural(h, w).expand(b, -1, -1, -1))
            if self.photo_magnitude > 0:
                own = _unit_rms(coeffs.abs().clamp_min(1e-12))
                blended = _unit_rms(magnitude.log().lerp(own.log(), self.photo_magnitude).exp())
                magnitude = torch.where(flat, magnitude, blended)
        else:
            magnitude = self.magnitude
        phase = torch.angle(coeffs)
        cols, _, own_partner = self._edges()
        real = torch.zeros(shape[-2:], dtype=torch.bool, device=self.device)
        real[:, cols] = own_partner.view(-1, 1)
        complex_bins = ~real
        level = (coeffs.abs()[..., complex_bins].pow(2).mean(-1).mean(-1)
                 / magnitude[..., complex_bins].pow(2).mean(-1).mean(-1).clamp_min(1e-30)).sqrt()
        ratio = coeffs.real / (level.view(-1, 1, 1, 1) * magnitude).clamp_min(1e-30)
        # the DC terms: the render removes the image's overall mean, so the three channels' DC
        # may shift together freely; shift them into the range the magnitude allows
        dc = coeffs.real[..., 0, 0] / level.view(-1, 1)
        top = magnitude[..., 0, 0]
        shift = 0.5 * ((-top - dc).amax(dim=1, keepdim=True) + (top - dc).amin(dim=1, keepdim=True))
        ratio[..., 0, 0] = (dc + shift) / top.clamp_min(1e-30)
        phase = torch.where(real, torch.arccos(ratio.clamp(-1, 1)), phase)
        if bool(flat.any()):
            if not resized:
                keep = self.phase.detach()
            elif fallback is not None and fallback.shape == shape:
                keep = fallback.to(self.device)
            else:  # a structureless image at a new size: a fixed draw, the same every run
                keep = self._random_phase(shape, torch.Generator().manual_seed(h * 100_003 + w)).to(self.device)
            phase = torch.where(flat, keep, phase)
        if resized:
            self.magnitude = magnitude.contiguous()
            self.phase = phase.contiguous().requires_grad_(True)
        else:
            with torch.no_grad():
                self.phase.copy_(phase)

    def parameters(self) -> list[torch.Tensor]:
        return [self.phase]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"p0": self.phase.detach().clone(), "magnitude": self.magnitude.clone(),
                "size": torch.tensor(self._size)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        h, w = (int(v) for v in state["size"])
        self._size = (h, w)
        self.magnitude = state["magnitude"].to(self.device).float().clone()
        values = state["p0"].to(self.device).float()
        if values.shape == self.phase.shape:
            with torch.no_grad():
                self.phase.copy_(values)
        else:
            self.phase = values.clone().requires_grad_(True)


class PhaseImageParams(StepParams):
    noise: float = Field(0.0, ge=0, le=10, description="Standard deviation, in radians, of seeded noise added to the "
                                                       "starting phase (a flat start gets uniformly random phases anyway).")
    contrast: float = Field(NATURAL_CONTRAST, gt=0, le=20, description="Gain of the standardised image before the "
                                                                     "sigmoid; the default gives photographs' pixel spread.")
    photo_magnitude: float = Field(0.0, ge=0, le=1, description="Share of the starting image's own spectrum magnitude "
                                                              "(0: natural images', as MACO; 1: the photo's).")
    decay: float | None = Field(None, ge=0, le=4, description="Override the fitted power law's exponent (the same for "
                                                            "every channel); more is smoother. Default: the fit.")


class PhaseImageStep(Step):
    """Optimise only the phase of a natural-magnitude spectrum in decorrelated colour (MACO)."""

    name = "phase-image"
    kind = StepKind.PARAM
    Params = PhaseImageParams

    def build(self, ctx, image):
        p = self.params
        exponent = NATURAL_EXPONENT if p.decay is None else (p.decay,) * 3
        return PhaseImage(image, contrast=p.contrast, photo_magnitude=p.photo_magnitude, noise=p.noise,
                          exponent=exponent, generator=ctx.generator(self))


@hookimpl
def register_steps(registry):
    registry.add_step(PhaseImageStep)
