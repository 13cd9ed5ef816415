"""What the update rule actually changes.

The article changes pixels directly. Feature-visualisation work since (Lucid) changes other
tensors that *produce* the pixels, such as a scaled Fourier spectrum in a decorrelated colour
space, which makes gradient steps favour natural images. Every step sees pixels either way:
``image()`` renders them (differentiably) and ``set_image()`` writes them back after a
transform of the stored image.
"""

from __future__ import annotations

import torch


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
