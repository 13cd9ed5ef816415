"""The run context: everything a step may read or change during a run.

Steps never reach for globals: the device, the model, the image and the random generators
all come from here. Each step gets its own generator seeded from the run's seed and the
step's position, so adding a step never changes another step's random draws, and the same
seed gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:  # torch is imported where tensors are made, so the host lists and validates without it
    import torch

    from pipeline_core.model import ModelAdapter
    from pipeline_core.parameterization import Parameterization
    from pipeline_core.recipe.plan import Plan


__all__ = [
    "RunContext",
    "seeded_draw",
    "step_seed",
    "to_device",
]


class _Placed(Protocol):
    """What the context needs of a step: its position in the recipe. Every
    :class:`~pipeline_core.step.Step` has one; naming only this keeps this module free of the
    step module, which needs the context's type in its own signatures."""

    index: int


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


def seeded_draw(sample: Callable[..., torch.Tensor], shape: tuple[int, ...], generator: torch.Generator,
                like: torch.Tensor) -> torch.Tensor:
    """Random numbers of ``shape`` from ``sample`` (``torch.rand``, ``torch.randn``), on
    ``like``'s device with its dtype, drawn from the step's ``generator`` (``ctx.generator(step)``).

    A step's randomness must replay on any device, so its generator is a CPU one. For a few
    numbers (offsets, angles) draw on it directly and move them with :func:`to_device`. For a
    whole batch of noise this is the way: on the CPU the generator draws the noise itself; on
    a GPU, drawing it on the host and copying it over would cost more than the model's pass,
    so the generator draws only the seed of a fresh device generator, which draws the noise
    where it is used. Either way it is one seeded stream that a checkpoint saves, so runs
    replay and resume exactly (on the same kind of device: a GPU's noise differs from the
    CPU's).
    """
    if like.device.type == "cpu":
        return sample(shape, generator=generator).to(like.dtype)
    import torch

    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    device_generator = torch.Generator(device=like.device).manual_seed(seed)
    return sample(shape, generator=device_generator, device=like.device, dtype=like.dtype)


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

    def generator(self, step: _Placed) -> torch.Generator:
        """The step's own CPU generator; draw on it, then move the numbers to ``device``."""
        if step.index not in self.generators:
            import torch

            self.generators[step.index] = torch.Generator().manual_seed(step_seed(self.plan.seed, step.index))
        return self.generators[step.index]
