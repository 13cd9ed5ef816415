"""The run context: everything a step may read or change during a run.

Steps never reach for globals: the device, the model, the image and the random generators
all come from here. Each step gets its own generator seeded from the run's seed and the
step's position, so adding a step never changes another step's random draws, and the same
seed gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pipeline_core.model import ModelAdapter
    from pipeline_core.parameterization import Parameterization
    from pipeline_core.recipe.plan import Plan
    from pipeline_core.step import Step


__all__ = [
    "RunContext",
    "step_seed",
    "to_device",
]

def step_seed(seed: int, index: int) -> int:
    """A stable seed for step ``index`` (Python's ``hash`` is salted per process, so not that)."""
    return (seed * 1_000_003 + (index + 1) * 7_919) % (2**63 - 1)


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A small host tensor (a step's random draws, an affine matrix) on ``device``, without a stall.

    Steps draw their randomness on the CPU from their own seeded generator, so runs replay on
    any device. Copying such a draw with a plain ``.to("cuda")`` from ordinary host memory makes
    the host wait for all the work queued on the GPU: one synchronisation per step and
    iteration. From pinned memory the copy is queued behind that work like a kernel instead
    (PyTorch keeps the pinned block alive until the copy has run).
    """
    if dtype is not None:
        t = t.to(dtype)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@dataclass
class RunContext:
    plan: "Plan"
    device: torch.device
    model: "ModelAdapter"
    iteration: int = 0
    param: "Parameterization | None" = None
    generators: dict[int, torch.Generator] = field(default_factory=dict)
    #: scratch space steps may use to share facts (e.g. the current blend weights)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def iterations(self) -> int:
        return self.plan.iterations

    @property
    def batch(self) -> int:
        return self.plan.batch

    @property
    def fraction(self) -> float:
        """How far through the run we are: 0 at the first iteration, 1 at the last."""
        return self.iteration / max(self.iterations - 1, 1)

    @property
    def image(self) -> torch.Tensor:
        assert self.param is not None, "the image exists only after the init steps"
        return self.param.image()

    def generator(self, step: "Step") -> torch.Generator:
        """The step's own CPU generator; draw on it, then move the numbers to ``device``."""
        if step.index not in self.generators:
            self.generators[step.index] = torch.Generator().manual_seed(step_seed(self.plan.seed, step.index))
        return self.generators[step.index]
