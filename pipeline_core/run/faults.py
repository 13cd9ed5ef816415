"""When a run goes wrong: NaN/Inf diagnosis with roll-back, out-of-memory advice, failure lines.

A run that breaks must say which step broke it and what to change, in one line, and must
keep the last good image. Everything that explains a failure lives here, so the loop only
has to ask :func:`finite` at the places where a fault can enter and hand the rest over.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from pipeline_core.errors import RunFailed
from pipeline_core.step import Step


def finite(t: torch.Tensor) -> bool:
    """Every value finite. One reduction and no temporary: NaN propagates into the minimum and
    maximum and an infinity is one of them, so this equals ``isfinite(t).all()``, which on a
    CPU costs about 15 times as much (a boolean copy of the tensor, then a second pass)."""
    if t.numel() == 0:
        return True
    low, high = t.detach().aminmax()
    return bool(torch.isfinite(low) & torch.isfinite(high))


def step_label(step: Step) -> str:
    return f"step {step.index} ({step.name})"


class NumericGuard:
    """Keeps the image's last finite state, and turns a NaN or Inf into a message and a roll-back.

    ``updates`` are the run's update steps: most numeric faults come from a step size that is
    too large, and the advice names them.
    """

    def __init__(self, updates: list[Step]):
        self.updates = updates
        self.good: dict[str, torch.Tensor] | None = None

    def keep(self, ctx: Any) -> None:
        """Remember the image's parameters at a point known to be finite."""
        assert ctx.param is not None
        self.good = {k: v.detach().clone() for k, v in ctx.param.state_dict().items()}

    def fault(self, ctx: Any, what: str) -> RunFailed:
        """Roll the image back to the last finite state (the last frame's) and say what broke."""
        if ctx.param is not None and self.good is not None:
            with torch.no_grad():
                ctx.param.load_state_dict(self.good)
        return RunFailed(f"{what}. The run stopped there; the last good image and frame were kept")

    @staticmethod
    def magnitude(state: dict[str, torch.Tensor] | None) -> str:
        if not state:
            return ""
        values = [v for v in state.values() if v.is_floating_point() and v.numel()]  # not counters or seeds
        if not values:
            return ""
        peak = max(float(v.detach().abs().max()) for v in values)
        return f" (the image's values reach {peak:.3g})" if peak > 1e3 else ""

    def _ups(self) -> str:
        return ", ".join(step_label(s) for s in self.updates)

    def diagnose(self, it: int, terms: list[tuple[Step, torch.Tensor]], image: torch.Tensor,
                 logits: torch.Tensor | None = None) -> str:
        """Why the total loss is not finite: the image, the model, one objective, or the sum."""
        ups = self._ups()
        if not bool(torch.isfinite(image).all()):
            return f"the image holds NaN or Inf at iteration {it}; lower the step size of {ups}"
        huge = self.magnitude({"image": image})
        if logits is not None and not bool(torch.isfinite(logits).all()):
            return f"the model's logits hold NaN or Inf at iteration {it}{huge}; lower the step size of {ups}"
        for step, term in terms:
            if not bool(torch.isfinite(term).all()):
                hint = f"{huge}; lower the step size of {ups}" if huge else ""
                return f"{step_label(step)} produced a NaN or Inf loss at iteration {it}{hint}"
        names = ", ".join(step_label(st) for st, _ in terms)
        return f"the sum of the losses ({names}) overflowed to Inf at iteration {it}{huge}; lower the step size of {ups}"

    def bad_gradient(self, it: int, terms: list[tuple[Step, torch.Tensor]]) -> str:
        names = ", ".join(step_label(st) for st, _ in terms)
        return (f"the gradient of the loss holds NaN or Inf at iteration {it} although the loss is finite; "
                f"it comes from the objectives ({names}) or the model")

    def bad_update(self, it: int, step: Step) -> str:
        return (f"{step_label(step)} made the image NaN or Inf at iteration {it}{self.magnitude(self.good)}; "
                "lower its step size")


def failure_line(exc: BaseException, where: Step | str | None, iteration: int | None) -> str:
    """One line for an unexpected exception: which step (or 'the model'), when, and what."""
    if isinstance(where, Step):
        where = step_label(where)
    first = (str(exc).strip().splitlines() or [""])[0]
    when = f"at iteration {iteration}" if iteration is not None else "while setting up"
    during = f"{where} failed {when}: " if where else ""
    return f"{during}{type(exc).__name__}: {first}"


# -- out of memory ---------------------------------------------------------------------------


def cpu_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "can't allocate memory" in str(exc)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _tried(exc: BaseException) -> int:
    """Bytes of the allocation that failed, from PyTorch's message ('Tried to allocate 2.00 GiB')."""
    m = re.search(r"[Tt]ried to allocate ([\d.]+) ?([KMGT]i?B|bytes)", str(exc))
    if not m:
        return 0
    unit = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
            "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}.get(m.group(2), 1)
    return int(float(m.group(1)) * unit)


def oom_advice(batch: int, peak: int, tried: int, capacity: int, where: str) -> str:
    """The batch that should fit, assuming memory grows in proportion to the batch.

    ``peak`` is what was allocated when the allocation of ``tried`` bytes failed, so the run
    needed at least ``peak + tried``; aiming at 80% of ``capacity`` leaves room for what the
    failed allocation would have been followed by.
    """
    need = peak + tried
    fits = int(batch * 0.8 * capacity / need) if need > 0 and capacity > 0 else batch // 2
    fits = min(fits, batch - 1)
    if fits >= 1:
        return (f"out of memory {where} with a batch of {batch}; a batch of about {fits} should fit "
                f"(set batch: {fits}), or try performance.precision: bf16")
    return (f"out of memory {where} even with a batch of {batch}; make the image smaller (the init step's size) "
            "or model.size, or try performance.precision: bf16")


def gpu_oom_message(exc: BaseException, batch: int, device: torch.device) -> str:
    name, capacity, peak = str(device), 0, 0
    try:
        name = torch.cuda.get_device_name(device)
        _free, capacity = torch.cuda.mem_get_info(device)
        peak = torch.cuda.max_memory_allocated(device)
    except Exception:  # noqa: BLE001 - the advice falls back to halving the batch
        pass
    where = f"on {name} ({_gib(capacity)})" if capacity else f"on {name}"
    return oom_advice(batch, peak, _tried(exc), capacity, where)


def cpu_oom_message(exc: BaseException, batch: int) -> str:
    m = re.search(r"allocate (\d+) bytes", str(exc))
    tried = int(m.group(1)) if m else _tried(exc)
    size = f" (an allocation of {_gib(tried)} failed)" if tried else ""
    return (f"out of memory on the CPU with a batch of {batch}{size}; lower batch or the image size "
            "(the init step's size)")
