"""When a per-iteration step is active: the schedule a step finds in ``self.schedule``.

The loop, not each step, decides when a step runs, from the recipe's ``from``, ``until`` and
``every`` keys (read by the host); a step only reads its schedule to know how far through its
own window it is (:meth:`Schedule.progress`, what ``Step.ramp`` uses). A plugin's own tests may
make one directly: ``MyStep(params, 0, Schedule(0, 10))`` or ``Schedule.always(iterations)``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Schedule"]


@dataclass(frozen=True)
class Schedule:
    """A resolved schedule: plain iteration numbers, start inclusive, stop exclusive."""

    start: int
    stop: int
    every: int = 1

    def active(self, iteration: int) -> bool:
        return self.start <= iteration < self.stop and (iteration - self.start) % self.every == 0

    def progress(self, iteration: int) -> float:
        """How far through its own window the step is, 0 at start and 1 at the last active iteration."""
        span = max(self.stop - 1 - self.start, 1)
        return min(max((iteration - self.start) / span, 0.0), 1.0)

    @classmethod
    def always(cls, iterations: int) -> "Schedule":
        return cls(0, iterations, 1)
