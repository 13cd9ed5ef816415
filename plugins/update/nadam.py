"""nadam: Adam with Nesterov momentum (Dozat 2016), MACO's optimiser for the phase of a spectrum.

NAdam applies the momentum it is about to add before taking the step, which reaches a given
objective in fewer iterations than Adam for the same step size; MACO uses it with a large
step (lr 1 on phases in radians). Like ``adam`` it works on whatever the image's parameters
are (pixels, a spectrum, a phase) and its moments are checkpointed, so a resumed run continues
exactly; a resized image is a new tensor and its moments start afresh.
"""

from __future__ import annotations

from pydantic import Field

from pipeline_core.hookspecs import hookimpl

from ..lazy_imports import torch
from .adam import Adam, AdamParams


class NAdamParams(AdamParams):
    lr: float = Field(0.05, gt=0, description="Learning rate (MACO: 1.0 on a phase-image).")
    momentum_decay: float = Field(0.004, ge=0, description="NAdam's momentum decay (psi): how fast the "
                                                           "Nesterov momentum schedule warms up.")


class NAdam(Adam):
    """torch.optim.NAdam on the image's parameters (pixels, a spectrum or a phase); its state is checkpointed."""

    name = "nadam"
    Params = NAdamParams

    def _make(self, params) -> torch.optim.Optimizer:
        p = self.params
        return torch.optim.NAdam(params, lr=p.lr, betas=p.betas, eps=p.eps, weight_decay=p.weight_decay,
                                 momentum_decay=p.momentum_decay, foreach=False)


@hookimpl
def register_steps(registry):
    registry.add_step(NAdam)
