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
    from .model import ModelAdapter
    from .parameterization import Parameterization
    from .plan import Plan
    from .step import Step


def step_seed(seed: int, index: int) -> int:
    """A stable seed for step ``index`` (Python's ``hash`` is salted per process, so not that)."""
    return (seed * 1_000_003 + (index + 1) * 7_919) % (2**63 - 1)


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
