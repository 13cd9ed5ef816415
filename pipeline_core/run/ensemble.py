"""``model.ensemble``: more classifiers look at every view, their logits averaged with the model's.

Why: one model's gradient grows what that model alone responds to (its own textures, fragments
that excite a unit); what several models trained apart all respond to is more often what people
see too (Elsayed et al. 2018 made perturbations that fooled time-limited humans from an
ensemble of ten models). It is a borrowed prior, so it belongs to the plausible mode: a
picture made with an ensemble shows what the ensemble learned, not the model alone.

The run still has one model: its name, classes, preprocessing and layer paths are the main
model's. :class:`Ensemble` is a view of the main module (the same children, parameters and
buffers under the same names, so ``layer:features.3`` still names the main model's layer) with
one more child, ``ensemble``, holding the members (``layer:ensemble.0.features.3`` names a
member's). Steps that walk the model's modules (``bn-statistics``, ``skip-gradient``) therefore
reach the members too. Each member sees the main model's view undone to [0, 1], resized to its
own input size (antialiased when it shrinks) and normalised its own way.

The run's probabilities (the final top five, report.html) are the ensemble's: the model that
made the picture is the ensemble.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline_core.model import ModelInfo

__all__ = ["Ensemble"]


class Ensemble(nn.Module):
    """The main module with ``members`` whose logits are averaged with its own (see the module doc)."""

    def __init__(self, main: nn.Module, main_info: ModelInfo, members: Sequence[tuple[nn.Module, ModelInfo]]):
        super().__init__()
        object.__setattr__(self, "_main", main)  # not a child: its children are this module's own
        self._parameters = main._parameters  # the same dicts: moving this module moves the main one
        self._buffers = main._buffers
        self._modules = dict(main._modules)
        self.ensemble = nn.ModuleList(module for module, _ in members)
        # plain tensors, not buffers: a buffer would be written into the main module's own dict
        self._main_norm = _norm(main_info)
        self._inputs = [(_norm(info), info.size) for _, info in members]
        self._on: dict[torch.device, Any] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # a parameter, buffer or child of this module
        except AttributeError:
            return getattr(self._main, name)  # the main model's own attributes (a ViT's num_prefix_tokens)

    def train(self, mode: bool = True) -> "Ensemble":
        super().train(mode)
        self._main.train(mode)  # the main module's own flag (InceptionV3 returns aux logits in training)
        return self

    def _norms(self, device: torch.device) -> Any:
        """The main model's and every member's mean and std on ``device``, moved there once."""
        if device not in self._on:
            self._on[device] = ([t.to(device) for t in self._main_norm],
                                [([t.to(device) for t in norm], size) for norm, size in self._inputs])
        return self._on[device]

    def forward(self, x: torch.Tensor) -> Any:
        out = self._main(x)
        logits = out[0] if isinstance(out, tuple) else out
        (main_mean, main_std), inputs = self._norms(x.device)
        image = x.float() * main_std + main_mean
        total = logits.float()
        for member, ((mean, std), size) in zip(self.ensemble, inputs):
            view = image
            if size and tuple(view.shape[-2:]) != (size, size):
                shrink = size < view.shape[-1]  # antialiased when shrinking, as torchvision's Resize does
                view = F.interpolate(view, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
            member_out = member((view - mean) / std)
            total = total + (member_out[0] if isinstance(member_out, tuple) else member_out).float()
        return total / (1 + len(self.ensemble))


def _norm(info: ModelInfo) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(info.mean).view(1, 3, 1, 1), torch.tensor(info.std).view(1, 3, 1, 1)
