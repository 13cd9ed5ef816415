"""When a per-iteration step is active.

The loop, not each step, decides this, so every step gets the article's curricula for free:
``until: 0.75`` is "the first three quarters", ``until: 76`` is "iterations 0..75",
``every: 5`` is "one iteration in five".

A bound written as an integer is an iteration number; a float in [0, 1] or a string such as
``"75%"`` is a fraction of the run. ``until`` is exclusive. The resolved :class:`Schedule` a
step is handed is public (:mod:`pipeline_core.schedule`); reading the keys is the recipe's.
"""

from __future__ import annotations

from typing import Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline_core.schedule import Schedule

Bound = Union[int, float, str]


def _check_bound(value: Bound | None) -> Bound | None:
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected an iteration number, a fraction in [0, 1] or a percentage like '75%', got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text.endswith("%"):
            raise ValueError(f"expected a percentage like '75%', got '{value}'")
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ValueError(f"expected a percentage like '75%', got '{value}'") from None
        if not 0 <= pct <= 100:
            raise ValueError(f"a percentage must lie in 0%..100%, got '{value}'")
        return pct / 100.0
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"a float bound is a fraction of the run and must lie in [0, 1], got {value}; "
                "write an integer for an iteration number"
            )
        return value
    if value < 0:
        raise ValueError(f"an iteration number cannot be negative, got {value}")
    return value


class ScheduleFields(BaseModel):
    """The schedule keys every per-iteration step accepts, next to its own parameters."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: Bound | None = Field(
        default=None,
        alias="from",
        description="First active iteration: an iteration number, a fraction of the run (0.25) or '25%'.",
    )
    until: Bound | None = Field(
        default=None,
        description="Stop before this iteration: an iteration number, a fraction (0.75) or '75%'.",
    )
    every: int = Field(default=1, ge=1, description="Active one iteration in N, counted from 'from'.")

    @field_validator("from_", "until", mode="before")
    @classmethod
    def _bounds(cls, value: Bound | None) -> Bound | None:
        return _check_bound(value)


def resolve_bound(value: Bound | None, iterations: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, float):
        return int(round(value * iterations))
    return int(value)


def resolve(fields: ScheduleFields, iterations: int) -> Schedule:
    """Turn the recipe's bounds into iteration numbers; ValueError if the window is empty."""
    start = resolve_bound(fields.from_, iterations, 0)
    stop = resolve_bound(fields.until, iterations, iterations)
    if start >= iterations:
        raise ValueError(f"the step would never run: 'from' is iteration {start} but the run has only {iterations} iterations (0..{iterations - 1})")
    stop = min(stop, iterations)  # "until 76" in a run shortened to 20 iterations means to the end
    if stop <= start:
        raise ValueError(f"the step would never run: 'from' ({start}) must come before 'until' ({stop})")
    return Schedule(start, stop, fields.every)
