"""adam: torch.optim.Adam on the image's parameters (Lucid's choice); its moments are checkpointed.

It works on whatever the image's parameters are (pixels, a spectrum, a phase). A resized
image is a new tensor, and its moments start afresh.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind

from ..lazy_imports import torch
from .update_params import UpdateParams


class AdamParams(UpdateParams):
    lr: float = Field(0.05, gt=0, description="Learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam's moment decay rates.")
    eps: float = Field(1e-8, gt=0, description="Adam's epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty on the parameters.")

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):  # torch would refuse them only at the first update
            raise ValueError(f"both betas must lie in [0, 1), got [{betas[0]}, {betas[1]}]")
        return betas


class Adam(Step):
    """torch.optim.Adam on the image's parameters (pixels or a spectrum); its state is checkpointed."""

    name = "adam"
    kind = StepKind.UPDATE
    Params = AdamParams

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.optimizer: torch.optim.Optimizer | None = None
        self._for: list[torch.Tensor] = []
        self._pending: dict | None = None

    def _make(self, params) -> torch.optim.Optimizer:
        p = self.params
        return torch.optim.Adam(params, lr=p.lr, betas=p.betas, eps=p.eps, weight_decay=p.weight_decay, foreach=False)

    def _optimizer(self, params) -> torch.optim.Optimizer:
        if self.optimizer is None or len(params) != len(self._for) or any(a is not b for a, b in zip(params, self._for)):
            # a resized image is a new tensor: its moments start afresh
            self.optimizer = self._make(params)
            self._for = list(params)
            if self._pending is not None:
                self.optimizer.load_state_dict(self._pending)
                self._pending = None
        return self.optimizer

    def update(self, ctx, params, grads):
        opt = self._optimizer(params)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for p in params:
            p.grad = None
            if self.params.clamp:
                p.clamp_(0, 1)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict() if self.optimizer is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._pending = state or None


@hookimpl
def register_steps(registry):
    registry.add_step(Adam)
