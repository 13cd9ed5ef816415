"""What the update rule actually changes.

The article changes pixels directly. Feature-visualisation work since (Lucid) changes other
tensors that *produce* the pixels, such as a scaled Fourier spectrum in a decorrelated colour
space, which makes gradient steps favour natural images. Every step sees pixels either way:
``image()`` renders them (differentiably) and ``set_image()`` writes them back after a
transform of the stored image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where tensors are made, so the host lists and validates without torch
    import torch

__all__ = [
    "Parameterization",
    "PixelImage",
    "FourierImage",
    "colour_mixing_matrix",
    "spectrum_scale",
    "IMAGENET_RGB_EIGENVALUES",
    "IMAGENET_RGB_EIGENVECTORS",
]

class Parameterization:
    """Base class: a differentiable map from ``parameters()`` to a [0, 1]-ish RGB batch."""

    name = "base"

    def image(self) -> torch.Tensor:
        raise NotImplementedError

    def set_image(self, image: torch.Tensor) -> None:
        raise NotImplementedError

    def parameters(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"p{i}": p.detach().clone() for i, p in enumerate(self.parameters())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        import torch

        with torch.no_grad():
            for i, p in enumerate(self.parameters()):
                p.copy_(state[f"p{i}"])


class PixelImage(Parameterization):
    """The pixels themselves, as in the article; resizing the stored image just replaces it."""

    name = "pixels"

    def __init__(self, image: torch.Tensor):
        self.pixels = image.detach().clone().float().requires_grad_(True)

    def image(self) -> torch.Tensor:
        return self.pixels

    def set_image(self, image: torch.Tensor) -> None:
        import torch

        image = image.detach()
        if image.shape == self.pixels.shape:
            with torch.no_grad():
                self.pixels.copy_(image)
        else:
            self.pixels = image.clone().float().requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.pixels]

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.set_image(state["p0"].to(self.pixels.device))


# -- a Fourier-domain image in a decorrelated colour space (Lucid's idea, written afresh) ------

#: Eigen-decomposition of the RGB covariance of ImageNet pixels, as published with AlexNet's
#: "PCA colour augmentation" (Krizhevsky et al. 2012): eigenvalues and unit eigenvectors
#: (columns). Colour channels of natural images are strongly correlated; stepping along these
#: axes, each scaled by its standard deviation, gives every direction of colour change a
#: natural size, so one step does not push R, G and B apart the way pixel-space noise does.
IMAGENET_RGB_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_RGB_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def colour_mixing_matrix() -> torch.Tensor:
    """M with rgb = M @ d: the square root of ImageNet's colour covariance, largest axis 1.

    M = V diag(sqrt(lambda / lambda_max)): a unit step along the first decorrelated channel moves
    all three colours together (brightness), the others move opposite colours, in proportion to
    how much natural images vary that way.
    """
    import torch

    vecs = torch.tensor(IMAGENET_RGB_EIGENVECTORS, dtype=torch.float64)
    vals = torch.tensor(IMAGENET_RGB_EIGENVALUES, dtype=torch.float64)
    return (vecs * (vals / vals.max()).sqrt()).float()


def spectrum_scale(height: int, width: int, decay: float) -> torch.Tensor:
    """Per-frequency gain 1 / max(f, f_min)^decay of a real 2-D FFT, shape (H, W//2 + 1).

    Natural images have power falling roughly as 1/f^2 (amplitude 1/f). Multiplying the
    optimised coefficients by this gain means a gradient step changes the image mostly at low
    frequencies, as natural images do, instead of spreading evenly into high-frequency noise.
    ``f`` is in cycles per pixel and ``f_min = 1 / max(H, W)``, so the DC and lowest
    frequencies get the same, largest gain.
    """
    import torch

    fy = torch.fft.fftfreq(height, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.rfftfreq(width, dtype=torch.float64).view(1, -1)
    f = (fy**2 + fx**2).sqrt().clamp_min(1.0 / max(height, width))
    return f.pow(-decay).float()


class FourierImage(Parameterization):
    """Pixels made from a scaled Fourier spectrum in decorrelated colour, squashed by a sigmoid.

    image = sigmoid(M @ irfft2(spectrum * scale) * gain). The parameters are the spectrum's real and
    imaginary parts (a real tensor, so every optimiser treats it the same way). ``set_image``
    inverts the map exactly (up to clipping pixels to [eps, 1 - eps], where the sigmoid has no
    inverse), so photos, image transforms and resumed runs all work through it; a new size
    makes a new spectrum (and Adam starts fresh moments for it, as it does for resized pixels).
    """

    name = "fourier"

    def __init__(self, image: torch.Tensor, decay: float = 1.0, decorrelate: bool = True,
                 gain: float = 0.25, eps: float = 1e-3, noise: float = 0.0,
                 generator: torch.Generator | None = None):
        import torch

        self.decay = float(decay)
        self.decorrelate = bool(decorrelate)
        self.gain = float(gain)
        self.eps = float(eps)
        self.device = image.device
        mix = colour_mixing_matrix() if self.decorrelate else torch.eye(3)
        self.mix = mix.to(self.device)
        self.unmix = torch.linalg.inv(mix.double()).float().to(self.device)
        self._size: tuple[int, int] | None = None
        self.spectrum = torch.zeros(0, device=self.device)
        self.set_image(image)
        if noise:
            with torch.no_grad():
                draw = torch.randn(self.spectrum.shape, generator=generator, dtype=torch.float32)
                self.spectrum.add_(draw.to(self.device), alpha=noise)

    # -- the map and its inverse -------------------------------------------------------------
    def _scale(self, h: int, w: int) -> torch.Tensor:
        if self._size != (h, w):
            self._size = (h, w)
            # normalised so the lowest frequencies have gain 1, then times sqrt(H*W): with the
            # orthonormal FFT a unit change of the DC coefficient then moves every pixel by
            # ``gain`` whatever the image's size, so one learning rate suits every size
            lowest = spectrum_scale(h, w, self.decay) * max(h, w) ** (-self.decay)
            self._gain = (lowest * (h * w) ** 0.5 * self.gain).to(self.device)
            self._gain = self._gain.view(1, 1, h, w // 2 + 1)
        return self._gain

    def _mix(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.einsum("ij,bjhw->bihw", matrix, x)

    def image(self) -> torch.Tensor:
        import torch

        h, w = self._size_hw
        coeffs = torch.view_as_complex(self.spectrum) * self._scale(h, w)
        decorrelated = torch.fft.irfft2(coeffs, s=(h, w), norm="ortho")
        return torch.sigmoid(self._mix(decorrelated, self.mix))

    def set_image(self, image: torch.Tensor) -> None:
        import torch

        image = image.detach().float().to(self.device)
        h, w = image.shape[-2:]
        logits = torch.logit(image.clamp(self.eps, 1 - self.eps))
        decorrelated = self._mix(logits, self.unmix)
        coeffs = torch.fft.rfft2(decorrelated, norm="ortho") / self._scale(h, w)
        values = torch.view_as_real(coeffs).contiguous()
        self._size_hw = (h, w)
        if values.shape == self.spectrum.shape:
            with torch.no_grad():
                self.spectrum.copy_(values)
        else:
            self.spectrum = values.requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.spectrum]

    def state_dict(self) -> dict[str, torch.Tensor]:
        import torch

        return {"p0": self.spectrum.detach().clone(), "size": torch.tensor(self._size_hw)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        import torch

        if "size" in state:
            h, w = (int(v) for v in state["size"])
            self._size_hw = (h, w)
        values = state["p0"].to(self.device).float()
        if values.shape == self.spectrum.shape:
            with torch.no_grad():
                self.spectrum.copy_(values)
        else:
            self.spectrum = values.clone().requires_grad_(True)
