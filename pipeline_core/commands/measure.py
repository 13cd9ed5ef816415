"""The two loops ``pipeline bench`` compares, and how one loop is measured (time, CPU, memory).

The engine is measured as a user meets it (a real run with its video and progress bar); the
bare loop is the same step objects' maths with nothing else, the floor the engine is held to.
Both are here side by side so that a change to one is seen next to the other.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline_core.context import RunContext
from pipeline_core.errors import RunFailed
from pipeline_core.output.frames import to_uint8
from pipeline_core.recipe.loader import Recipe
from pipeline_core.registry import Registry
from pipeline_core.run import memory
from pipeline_core.run.engine import Run, build_model
from pipeline_core.run.progress import BarProgress, Progress

MiB = 2**20


# -- memory --------------------------------------------------------------------------------------


@dataclass
class MemoryWatch:
    """Peak process RSS (and CUDA allocation) over a block of code.

    Linux lets a process reset its own RSS high-water mark, so two loops run one after the
    other in the same process each get their own peak. Elsewhere the peak is the process's
    lifetime peak and ``exact`` is False.
    """

    device: torch.device
    before: int | None = None
    peak: int | None = None
    exact: bool = False
    cuda_peak: int | None = None

    def __enter__(self) -> "MemoryWatch":
        gc.collect()
        self.exact = memory.reset_peak()
        self.before = memory.current_rss()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.peak = memory.peak_rss() if self.exact else memory.lifetime_peak()
        if self.device.type == "cuda":
            self.cuda_peak = torch.cuda.max_memory_allocated(self.device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read afterwards means something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # pragma: no cover - Apple only
        torch.mps.synchronize()


def _children_cpu() -> float:
    """CPU seconds of the ended child processes (the video encoder); 0 where not counted."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- one measurement -----------------------------------------------------------------------------


@dataclass
class Measurement:
    """One loop, timed: the engine's or the bare loop's."""

    kind: str  #: "engine" or "bare"
    iterations: int
    batch: int
    seconds: float  #: the loop (engine: loop plus draining queued frames)
    cpu_seconds: float | None = None  #: CPU time of every thread of this process during the loop
    peak_rss_bytes: int | None = None
    rss_before_bytes: int | None = None
    rss_exact: bool = False
    cuda_max_allocated_bytes: int | None = None
    encode_seconds: float | None = None  #: engine: the writer thread's wall time on frames
    encode_cpu_seconds: float | None = None  #: engine: the writer thread's CPU time on frames
    encoder_process_cpu_seconds: float | None = None  #: engine: ffmpeg's CPU time (user + system)
    frames: int | None = None
    #: engine: the wait at the end for frames still queued and for ffmpeg to finish the file; a
    #: fixed cost per run that a short benchmark shows as a per-iteration one
    drain_seconds: float | None = None
    #: engine: starting the encoders with the first frame, before the loop (set-up, not loop time)
    video_start_seconds: float | None = None

    @property
    def image_iterations_per_second(self) -> float:
        return self.iterations * self.batch / max(self.seconds, 1e-9)

    @property
    def cpu_per_image_iteration(self) -> float | None:
        """CPU seconds per image-iteration, the encoder process's included: less sensitive to load."""
        if self.cpu_seconds is None:
            return None
        total = self.cpu_seconds + (self.encoder_process_cpu_seconds or 0.0)
        return total / max(self.iterations * self.batch, 1)

    @property
    def rss_growth_bytes(self) -> int | None:
        if self.peak_rss_bytes is None or self.rss_before_bytes is None:
            return None
        return max(self.peak_rss_bytes - self.rss_before_bytes, 0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_iterations_per_second"] = round(self.image_iterations_per_second, 4)
        data["rss_growth_bytes"] = self.rss_growth_bytes
        data["cpu_per_image_iteration"] = self.cpu_per_image_iteration
        return data


class _NullBar(BarProgress):
    """The real terminal progress bar, drawing into the null device (closed when the bar stops)."""

    def __init__(self) -> None:
        from rich.console import Console

        self._sink = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        super().__init__(Console(file=self._sink, force_terminal=True, width=120, color_system="standard"))

    def stop(self) -> None:
        super().stop()
        self._sink.close()


def null_progress() -> Progress:
    """The real terminal progress bar (rich, redrawn at its fixed rate) drawing into a null stream."""
    return _NullBar()


def run_engine(recipe: Recipe, registry: Registry, device: str | None = None,
               progress: Callable[[], Progress] = null_progress,
               run_dir: Path | None = None) -> tuple[Measurement, np.ndarray]:
    """Run the engine on ``recipe`` into a scratch folder; returns its timing and final images.

    The final images are read back from the PNGs the run wrote, as (B, H, W, 3) uint8.
    """
    from PIL import Image

    with contextlib.ExitStack() as stack:
        if run_dir is None:
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pipeline-bench-")))
        bar = progress()
        run = Run(recipe, registry, run_dir, bar, device=device)
        cpu0 = _children_cpu()
        with MemoryWatch(run.device) as mem:
            result = run.execute()
        bar.stop()
        if result.status != "completed":
            raise RunFailed(f"the engine's run did not complete: {result.message}")
        t = run.timings
        images = np.stack([np.asarray(Image.open(run_dir / "images" / i["file"]).convert("RGB"))
                           for i in result.record["images"]])
    measured = Measurement(
        kind="engine", iterations=recipe.plan.iterations, batch=recipe.plan.batch,
        seconds=t["loop_seconds"] + t.get("drain_seconds", 0.0), cpu_seconds=t.get("loop_cpu_seconds"),
        peak_rss_bytes=mem.peak, rss_before_bytes=mem.before, rss_exact=mem.exact,
        cuda_max_allocated_bytes=mem.cuda_peak, encode_seconds=t.get("encode_seconds"),
        encode_cpu_seconds=t.get("encode_cpu_seconds"),
        encoder_process_cpu_seconds=round(_children_cpu() - cpu0, 3), frames=t.get("frames"),
        drain_seconds=t.get("drain_seconds"), video_start_seconds=t.get("video_start_seconds"),
    )
    return measured, images


def bare_loop(recipe: Recipe, registry: Registry, device: str | None = None) -> tuple[Measurement, np.ndarray]:
    """The recipe's maths in a minimal loop; returns its timing and final images.

    Exactly what it does: build the model as the engine does (same adapter, precision,
    channels_last, compile and cuDNN settings); ``setup`` every step and run the init and
    parameterisation steps as the engine does; then, per iteration, with the same schedules:
    the active ``on: image`` transforms under ``no_grad`` written back into the image, the
    active ``on: view`` transforms, the model, the sum of the active objectives, one
    ``torch.autograd.grad`` to the image's parameters, and the active updates. Nothing else:
    no frames, progress, NaN checks, checkpoints or run folder. The device is synchronised
    once before and once after the loop.
    """
    run = Run(recipe, registry, Path(os.devnull), Progress(), device=device)
    steps = recipe.steps_bound
    heads = set().union(*(set(s.heads) for s in steps)) - {"logits"}
    model = build_model(recipe, run.device, heads)
    run.setup_backend()
    ctx = RunContext(plan=recipe.plan, device=run.device, model=model)
    for step in steps:
        step.setup(ctx)
    run.init_image(ctx)
    image_tf = [(s.step, s.schedule) for s in run.groups.image_transforms]
    view_tf = [(s.step, s.schedule) for s in run.groups.view_transforms]
    objectives = [(s.step, s.schedule) for s in run.groups.objectives]
    updates = [(s.step, s.schedule) for s in run.groups.updates]
    iterations = recipe.plan.iterations
    with MemoryWatch(run.device) as mem:
        synchronize(run.device)
        t0, cpu0 = time.perf_counter(), time.process_time()
        for it in range(iterations):
            ctx.iteration = it
            param = ctx.param
            active = [step for step, sched in image_tf if sched.active(it)]
            if active:
                with torch.no_grad():
                    x = param.image().detach()
                    for step in active:
                        x = step.apply(ctx, x)
                    param.set_image(x)
            image = param.image()
            view = image
            for step, sched in view_tf:
                if sched.active(it):
                    view = step.apply(ctx, view)
            out = ctx.model(view).per_image(ctx.batch)
            total = sum(step.loss(ctx, out, image) for step, sched in objectives if sched.active(it)).sum()
            params = param.parameters()
            grads = list(torch.autograd.grad(total, params))
            with torch.no_grad():
                for step, sched in updates:
                    if sched.active(it):
                        step.update(ctx, params, grads)
        synchronize(run.device)
        seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - cpu0
    with torch.no_grad():
        final = to_uint8(ctx.param.image().detach().float().clamp(0, 1))
    measured = Measurement(kind="bare", iterations=iterations, batch=recipe.plan.batch, seconds=seconds,
                           cpu_seconds=round(cpu_seconds, 3),
                           peak_rss_bytes=mem.peak, rss_before_bytes=mem.before, rss_exact=mem.exact,
                           cuda_max_allocated_bytes=mem.cuda_peak)
    return measured, final
