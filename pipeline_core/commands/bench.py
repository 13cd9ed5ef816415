"""``pipeline bench``: how fast the engine runs a recipe, next to a bare loop doing the same maths.

The question a user has is "how much does the engine cost me on top of the model?", and the
only honest answer is a ratio measured in one process on one machine: absolute speeds move
with the load of the machine, the CPU clock and the library versions, a ratio of two loops
run back to back much less. So this module runs, alternately and several times:

* **the engine**: a real :class:`~pipeline_core.run.engine.Run` of the recipe, with the video and
  writers the recipe asks for and the real rich progress bar (rendered into a null stream so
  the benchmark's own output stays readable; the bar does all its work either way);
* **the bare loop**: the same step objects' maths in the smallest loop that can run them
  (see :func:`bare_loop`): no frames, no progress, no NaN checks, no checkpoints, no
  interrupt handling, nothing written to disk.

Both start from the same model (built the same way, with the same ``performance`` options),
the same initial image (the same init steps and seeds) and run the same iterations, so their
final images must agree; the report says whether they do, as evidence that the two loops did
the same work. Speed is image-iterations per second (iterations x batch / loop seconds); for
the engine the loop seconds include draining the frames still queued for the encoder when
the loop ends, since a user waits for those too. Starting the encoder (ffmpeg) is set-up, like
loading the model: the engine does it with the first frame, before the loop's clock starts,
and the report gives its time separately.

Memory: the peak resident set size of the process during each loop (Linux: the kernel's
high-water mark, reset before each loop; elsewhere only the process's lifetime peak is
known and the report says so), and on CUDA the peak memory PyTorch allocated. The video
encoder is a separate ffmpeg process; its CPU time is reported separately, because on a
small CPU it competes with the model for the same cores.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pipeline_core.run.device import pick_device
from pipeline_core.errors import RecipeError, RunFailed
from pipeline_core.commands.measure import MiB, Measurement, bare_loop, null_progress, run_engine
from pipeline_core.run.progress import Progress
from pipeline_core.recipe.loader import Recipe, load_recipe
from pipeline_core.registry import Registry
from pipeline_core.run.threads import using_threads

# -- the comparison ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    # the model name is in /proc/cpuinfo on Linux; psutil does not report it
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            found = re.search(r"^model name\s*:\s*(.+)$", fh.read(), re.M)
            if found:
                cpu = found.group(1).strip()
    info: dict[str, Any] = {
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


@dataclass
class ImageAgreement:
    """How far the engine's final images are from the bare loop's, in 8-bit levels."""

    max_difference: int
    values_differing: int
    values: int

    @property
    def identical(self) -> bool:
        return self.max_difference == 0

    def describe(self) -> str:
        if self.identical:
            return "identical (the two loops did the same arithmetic)"
        return (f"max difference {self.max_difference}/255 in {self.values_differing} of {self.values} values "
                "(floating-point order; expected on a GPU)")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def compare_images(a: np.ndarray, b: np.ndarray) -> ImageAgreement:
    if a.shape != b.shape:
        raise RunFailed(f"the engine's final images {a.shape} and the bare loop's {b.shape} differ in shape")
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return ImageAgreement(int(diff.max()), int((diff > 0).sum()), int(diff.size))


@dataclass
class BenchReport:
    """Every round of both loops, and the medians the verdict rests on."""

    recipe: str
    device: str
    batch: int
    iterations: int
    warmup: int
    frame_every: int | None
    video: bool
    machine: dict[str, Any]
    load_before: float | None = None  #: the 1-minute load average when the benchmark started
    engine: list[Measurement] = field(default_factory=list)
    bare: list[Measurement] = field(default_factory=list)
    agreement: ImageAgreement | None = None
    #: the bare loop's label in the printed table ("bare loop", "hand-written loop")
    bare_label: str = "bare loop"

    @staticmethod
    def _median(values: Sequence[float | int | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    def median(self, kind: str, attribute: str) -> float | None:
        return self._median([getattr(m, attribute) for m in getattr(self, kind)])

    @property
    def ratio(self) -> float | None:
        """Engine over bare image-iterations per second (medians); 1.0 means no overhead."""
        e, b = self.median("engine", "image_iterations_per_second"), self.median("bare", "image_iterations_per_second")
        return e / b if e and b else None

    @property
    def memory_ratio(self) -> float | None:
        e, b = self.median("engine", "peak_rss_bytes"), self.median("bare", "peak_rss_bytes")
        return e / b if e and b else None

    @property
    def cuda_memory_ratio(self) -> float | None:
        e, b = self.median("engine", "cuda_max_allocated_bytes"), self.median("bare", "cuda_max_allocated_bytes")
        return e / b if e and b else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe, "device": self.device, "batch": self.batch, "iterations": self.iterations,
            "warmup": self.warmup, "rounds": len(self.engine), "video": self.video, "frame_every": self.frame_every,
            "load_average_before": self.load_before,
            "machine": self.machine,
            "engine_image_iterations_per_second": self.median("engine", "image_iterations_per_second"),
            "bare_image_iterations_per_second": self.median("bare", "image_iterations_per_second"),
            "ratio": self.ratio,
            "engine_cpu_per_image_iteration": self.median("engine", "cpu_per_image_iteration"),
            "bare_cpu_per_image_iteration": self.median("bare", "cpu_per_image_iteration"),
            "engine_peak_rss_bytes": self.median("engine", "peak_rss_bytes"),
            "bare_peak_rss_bytes": self.median("bare", "peak_rss_bytes"),
            "peak_rss_ratio": self.memory_ratio,
            "engine_rss_growth_bytes": self.median("engine", "rss_growth_bytes"),
            "bare_rss_growth_bytes": self.median("bare", "rss_growth_bytes"),
            "cuda_max_allocated_ratio": self.cuda_memory_ratio,
            "encode_seconds": self.median("engine", "encode_seconds"),
            "drain_seconds": self.median("engine", "drain_seconds"),
            "video_start_seconds": self.median("engine", "video_start_seconds"),
            "encode_cpu_seconds": self.median("engine", "encode_cpu_seconds"),
            "encoder_process_cpu_seconds": self.median("engine", "encoder_process_cpu_seconds"),
            "images": None if self.agreement is None else {**asdict(self.agreement), "identical": self.agreement.identical},
            "rounds_detail": {"engine": [m.to_dict() for m in self.engine], "bare": [m.to_dict() for m in self.bare]},
        }

    def lines(self) -> list[str]:
        """The report as text lines (medians over the rounds)."""

        def mib(v: float | None) -> str:
            return "-" if v is None else f"{v / MiB:.0f} MiB"

        def num(v: float | None, fmt: str = "{:.2f}") -> str:
            return "-" if v is None else fmt.format(v)

        rounds = len(self.engine)
        m = self.machine
        load = m.get("load_average")
        out = [
            f"recipe: {self.recipe} (batch {self.batch}, {self.iterations} iterations, "
            f"video {'on, a frame every ' + str(self.frame_every) if self.video else 'off'}, progress bar on)",
            f"machine: {m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']} on {self.device} "
            f"({m['torch_threads']} threads)" + (f", {m['gpu']}" if m.get("gpu") else "")
            + (f"; load average {self.load_before:.2f} at the start, {load[0]:.2f} at the end"
               if load and self.load_before is not None else ""),
            f"median of {rounds} alternating round{'s' if rounds != 1 else ''}, after a warm-up of {self.warmup} "
            "iterations each:",
        ]
        w = max(len(self.bare_label), 10)
        rows = [
            ("image-iterations/s", num(self.median("bare", "image_iterations_per_second")),
             num(self.median("engine", "image_iterations_per_second"))),
            ("loop seconds", num(self.median("bare", "seconds")), num(self.median("engine", "seconds"))),
            ("CPU ms/image-iteration", num(_ms(self.median("bare", "cpu_per_image_iteration")), "{:.1f}"),
             num(_ms(self.median("engine", "cpu_per_image_iteration")), "{:.1f}")),
            ("peak RSS", mib(self.median("bare", "peak_rss_bytes")), mib(self.median("engine", "peak_rss_bytes"))),
            ("RSS growth in loop", mib(self.median("bare", "rss_growth_bytes")),
             mib(self.median("engine", "rss_growth_bytes"))),
        ]
        if self.device.startswith("cuda"):
            rows.append(("CUDA max allocated", mib(self.median("bare", "cuda_max_allocated_bytes")),
                         mib(self.median("engine", "cuda_max_allocated_bytes"))))
        out.append(f"  {'':<22}{self.bare_label:>{w}}  {'engine':>10}")
        for label, b, e in rows:
            out.append(f"  {label:<22}{b:>{w}}  {e:>10}")
        out.append(f"  ratio engine/{self.bare_label.split()[0]}: {num(self.ratio, '{:.3f}')} (image-iterations/s), "
                   f"{num(self.memory_ratio, '{:.3f}')} (peak RSS)"
                   + (f", {num(self.cuda_memory_ratio, '{:.3f}')} (CUDA max allocated)" if self.cuda_memory_ratio else ""))
        if self.video or self.median("engine", "frames"):
            frames = self.median("engine", "frames")
            out.append(f"  frames: {num(frames, '{:.0f}')} per run; writer thread {num(self.median('engine', 'encode_seconds'))} s "
                       f"wall, {num(self.median('engine', 'encode_cpu_seconds'))} s CPU; ffmpeg "
                       f"{num(self.median('engine', 'encoder_process_cpu_seconds'))} s CPU; "
                       f"{num(self.median('engine', 'drain_seconds'))} s waiting for the last frames at the end; "
                       f"{num(self.median('engine', 'video_start_seconds'))} s starting the encoder before the loop")
        busy = self.load_before if self.load_before is not None else 0.0
        if busy > 0.5 * (m.get("cpu_count") or 1):
            out.append(f"  note: the machine was busy (load average {busy:.2f} on {m.get('cpu_count')} CPUs) when the "
                       "benchmark started; other work makes these figures noisy")
        if self.engine and not self.engine[0].rss_exact:
            out.append("  note: this system cannot reset the peak-RSS mark; peak RSS is the process's lifetime peak")
        if self.agreement is not None:
            out.append(f"  final images: {self.agreement.describe()}")
        return out


def bench(recipe_path: str | Path, registry: Registry, overrides: Sequence[str] = (), iterations: int | None = 20,
          warmup: int = 2, rounds: int = 3, device: str | None = None,
          progress: Callable[[], Progress] = null_progress,
          bare: Callable[[Recipe, Registry, str | None], tuple[Measurement, np.ndarray]] = bare_loop,
          bare_label: str = "bare loop", echo: Callable[[str], None] | None = None) -> BenchReport:
    """Measure ``recipe_path`` on this machine: ``rounds`` of the engine and the bare loop, alternating.

    ``iterations`` replaces the recipe's (None keeps it): schedules given as fractions scale
    with it, so both loops still run the same steps. A warm-up run of each loop comes first
    (``warmup`` iterations, not counted) so one-off costs (oneDNN and cuDNN kernel selection,
    torch.compile) stay out of the figures. The order alternates between rounds so that a
    drift in the machine's speed does not favour one loop.
    """
    sets = list(overrides)
    if device is not None:
        sets.append(f"device={device}")

    def load(n: int | None) -> Recipe:
        return load_recipe(recipe_path, registry, sets + ([f"iterations={n}"] if n is not None else []))

    say = echo or (lambda _text: None)

    recipe = load(iterations)
    # both loops with the engine's thread count (the recipe's, or the free cores)
    with using_threads(recipe.model.performance.threads):
        return _bench(str(recipe_path), recipe, load, registry, iterations, warmup, rounds, device, progress,
                      bare, bare_label, say)


def _bench(name: str, recipe: Recipe, load: Callable[[int | None], Recipe], registry: Registry, iterations: int | None,
           warmup: int, rounds: int, device: str | None, progress: Callable[[], Progress],
           bare: Callable[[Recipe, Registry, str | None], tuple[Measurement, np.ndarray]], bare_label: str,
           say: Callable[[str], None]) -> BenchReport:
    dev = pick_device(device or recipe.model.device)
    out = recipe.model.output
    report = BenchReport(recipe=name, device=str(dev), batch=recipe.plan.batch,
                         iterations=recipe.plan.iterations, warmup=warmup,
                         frame_every=out.frame_every if out.video else None, video=out.video, machine={},
                         load_before=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                         bare_label=bare_label)
    if warmup > 0:
        try:
            load(warmup)
        except RecipeError:  # a schedule that needs more iterations than the warm-up has
            warmup = report.warmup = recipe.plan.iterations
        say(f"warm-up: {warmup} iterations of each loop")
        bare(load(warmup), registry, device)
        run_engine(load(warmup), registry, device, progress)
    engine_images = bare_images = None
    for r in range(rounds):
        order = ("engine", "bare") if r % 2 else ("bare", "engine")
        for kind in order:
            if kind == "engine":
                measured, engine_images = run_engine(load(iterations), registry, device, progress)
                report.engine.append(measured)
            else:
                measured, bare_images = bare(load(iterations), registry, device)
                report.bare.append(measured)
            say(f"round {r + 1}/{rounds}: {kind:<6} {measured.image_iterations_per_second:8.2f} image-iterations/s"
                + (f"  (frames: {measured.frames}, writer {measured.encode_seconds:.2f} s)" if kind == "engine" and measured.frames else ""))
    if engine_images is not None and bare_images is not None:
        report.agreement = compare_images(engine_images, bare_images)
    report.machine = machine()
    return report

