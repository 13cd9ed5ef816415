"""What the layer objectives compute from a layer's activations, shared between their steps."""

from __future__ import annotations

from ..lazy_imports import torch


def spatial_mean(act: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) -> (B, C): the mean over every position (nothing to average for a (B, C) layer)."""
    return act.flatten(2).mean(2) if act.dim() > 2 else act
