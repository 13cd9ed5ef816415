"""The loop: gradient descent on the input of a frozen classifier, one iteration at a time.

One iteration (see :mod:`pipeline_core.step` for the kinds):

1. ``transform`` steps with ``on: image`` replace the stored image (no autograd);
2. ``transform`` steps with ``on: view`` build what the model sees (differentiable);
3. the model adapter resizes, normalises and runs the model;
4. ``objective`` steps each return a loss per image; the sum is back-propagated once;
5. ``update`` steps change the image's parameters;
6. if a frame is due, the image is snapshotted on its device and queued for the writers.

Nothing here synchronises the device every iteration: losses are read only when the progress
display is due, and frames are copied and encoded on another thread.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .context import RunContext
from .device import pick_device
from .errors import ModelLoadError, PipelineError, RunFailed
from .frames import auto_tile, compose, to_uint8
from .interrupts import StopFlag, graceful_stop
from .model import ModelAdapter
from .parameterization import Parameterization, PixelImage
from .progress import Progress
from .recipe import Recipe
from .record import RunRecord, check_free_space, save_png, versions
from .registry import Registry
from .step import Step, StepKind
from .video import VideoWriter
from .writers import FrameInfo, FramePump, Writer

#: grid.png of a big batch gets smaller tiles past this side (the PNGs keep full size)
MAX_GRID_SIDE = 8192


@dataclass
class RunResult:
    status: str  #: completed, interrupted or failed
    run_dir: Path
    iterations_done: int
    message: str = ""
    record: dict[str, Any] = field(default_factory=dict)
    error_code: int = 1

    @property
    def exit_code(self) -> int:
        return {"completed": 0, "interrupted": 130}.get(self.status, self.error_code)


@dataclass
class Scheduled:
    step: Step
    schedule: Any

    def active(self, iteration: int) -> bool:
        return self.schedule.active(iteration)


def _cpu_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "can't allocate memory" in str(exc)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


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


@contextlib.contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Keep Python's full garbage collections off the objects that exist before the loop.

    PyTorch, torchvision, pydantic and rich leave about 350,000 tracked objects in the
    process; a full collection walks all of them (about 0.2 s on a small CPU) and comes once or
    twice in a short run, in the middle of an iteration. None of them becomes garbage while
    the loop runs, so they are frozen for its duration (``gc.freeze``) and handed back after.
    """
    if gc.isenabled():
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
    else:
        yield


def _tried(exc: BaseException) -> int:
    """Bytes of the allocation that failed, from PyTorch's message ('Tried to allocate 2.00 GiB')."""
    text = str(exc)
    m = re.search(r"[Tt]ried to allocate ([\d.]+) ?([KMGT]i?B|bytes)", text)
    if not m:
        return 0
    unit = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
            "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}.get(m.group(2), 1)
    return int(float(m.group(1)) * unit)


def _finite(t: torch.Tensor) -> bool:
    """Every value finite. One reduction and no temporary: NaN propagates into the minimum and
    maximum and an infinity is one of them, so this equals ``isfinite(t).all()``, which on a
    CPU costs about 15 times as much (a boolean copy of the tensor, then a second pass)."""
    if t.numel() == 0:
        return True
    low, high = t.detach().aminmax()
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "image"


def build_model(recipe: Recipe, device: torch.device, heads: set[str]) -> ModelAdapter:
    perf = recipe.model.performance
    try:
        module = recipe.model_def.build(recipe.model_spec)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's or torchvision's builder failed
        raise ModelLoadError(f"could not build model '{recipe.model_spec.name}': {exc}") from exc
    return ModelAdapter(module, recipe.model_info, recipe.model_def.heads, sorted(heads), device,
                        precision=perf.precision, channels_last=perf.channels_last, compile=perf.compile)


class Run:
    """One run of a recipe into a run folder."""

    def __init__(self, recipe: Recipe, registry: Registry, run_dir: Path, progress: Progress,
                 device: str | None = None, resume: Checkpoint | None = None):
        self.recipe = recipe
        self.registry = registry
        self.run_dir = run_dir
        self.progress = progress
        self.device = pick_device(device or recipe.model.device)
        self.resume = resume
        self.steps = recipe.steps_bound
        self.by_kind: dict[StepKind, list[Scheduled]] = {k: [] for k in StepKind}
        for spec, step in zip(recipe.steps, self.steps):
            self.by_kind[spec.cls.kind].append(Scheduled(step, spec.schedule))
        self.image_transforms = [s for s in self.by_kind[StepKind.TRANSFORM] if s.step.params.on == "image"]
        self.view_transforms = [s for s in self.by_kind[StepKind.TRANSFORM] if s.step.params.on == "view"]
        self.targets = self._targets()
        self.done = 0
        self.timings: dict[str, float] = {}
        self.error_code = 1
        #: True between iterations, when the image, step states and generators agree
        self._between = True
        self._good: dict[str, torch.Tensor] | None = None
        self._ctx: RunContext | None = None
        self._pump: FramePump | None = None
        #: the step (or "the model") running now, so an exception can be pinned on it
        self._where: Step | str | None = None
        self._in_loop = False
        #: what went wrong at the end without failing the run, for its message
        self._notes: list[str] = []

    # -- facts for run.json ---------------------------------------------------------------
    def _targets(self) -> list[list[dict[str, Any]]]:
        per_image: list[list[dict[str, Any]]] = [[] for _ in range(self.recipe.plan.batch)]
        for s in self.by_kind[StepKind.OBJECTIVE]:
            found = s.step.targets()
            if found:
                for i, items in enumerate(found):
                    for item in items:
                        if item not in per_image[i]:
                            per_image[i].append(item)
        return per_image

    def _primary(self) -> torch.Tensor | None:
        """Per image, the class whose probability the progress bar shows (the final target)."""
        if not any(self.targets):
            return None
        idx = [max(t, key=lambda d: d.get("final_weight", d.get("weight", 1.0)))["index"] if t else 0 for t in self.targets]
        return torch.tensor(idx, device=self.device)

    def _determinism(self) -> tuple[bool, str]:
        """Whether a replay gives the same bytes, and under which conditions (for run.json)."""
        perf = self.recipe.model.performance
        if self.device.type == "cpu":
            return True, ("bitwise repeatable on the CPU with the same PyTorch version, CPU kind and thread count "
                          "(recipe.performance.threads holds it, so a replay uses the same)")
        if self.device.type == "cuda" and perf.deterministic:
            return True, ("deterministic GPU kernels were asked for (cuDNN deterministic, CUBLAS_WORKSPACE_CONFIG); "
                          "repeatable on the same GPU model, driver and PyTorch version, except for the operations "
                          "listed under determinism_warnings, which have no deterministic GPU kernel")
        return False, (f"{self.device.type.upper()} kernels (convolution and interpolation backward, grid sampling) "
                       "are not bitwise deterministic, so a replay differs in the last bits; set "
                       "performance.deterministic: true for repeatable GPU runs (somewhat slower)")

    def _base_record(self) -> dict[str, Any]:
        deterministic, note = self._determinism()
        recipe = self.recipe.resolved()
        recipe.setdefault("performance", {})["threads"] = torch.get_num_threads()
        return {
            "status": "running",
            "recipe_file": str(Path(self.recipe.source.file).resolve()) if Path(self.recipe.source.file).exists() else self.recipe.source.file,
            "recipe": recipe,
            "seed": self.recipe.plan.seed,
            "device": str(self.device),
            "deterministic": deterministic,
            "determinism_note": note,
            "threads": torch.get_num_threads(),
            "versions": versions(),
            "iterations": self.recipe.plan.iterations,
            "iterations_done": 0,
            "batch": self.recipe.plan.batch,
            "model": {"name": self.recipe.model_spec.name,
                      "weights": str(self.recipe.model_spec.weights) if self.recipe.model_spec.weights else "torchvision default",
                      "mean": list(self.recipe.model_info.mean), "std": list(self.recipe.model_info.std),
                      "size": self.recipe.model_info.size},
        }

    # -- the run --------------------------------------------------------------------------
    def execute(self) -> RunResult:
        """Run to the end, whatever happens: every way out goes through :meth:`_finish`, so the
        video, the images and run.json are written after a failure or an interrupt too."""
        t_start = time.perf_counter()
        threads_before = torch.get_num_threads()
        if self.recipe.model.performance.threads:
            torch.set_num_threads(self.recipe.model.performance.threads)
        try:
            with graceful_stop() as stop:  # from the first moment: a Ctrl-C while run.json is begun still stops cleanly
                return self._execute(t_start, stop)
        finally:
            torch.set_num_threads(threads_before)  # the process's setting, for whatever runs next

    def _execute(self, t_start: float, stop: StopFlag) -> RunResult:
        record = RunRecord(self.run_dir, self._base_record())
        if self.resume is not None:
            record.started -= self.resume.wall_seconds
            self._carry_over(record)
        try:
            record.update()
        except OSError as exc:
            message = f"cannot write run.json in {self.run_dir}: {exc.strerror or exc}"
            return RunResult("failed", self.run_dir, self.done, message, record.data, error_code=2)
        try:
            status, message = self._work(stop, record)
            stop.finishing = True
        except KeyboardInterrupt:  # a second signal: the handler already set stop.finishing
            status, message = "interrupted", "stopped at once by a second interrupt"
        return self._finish(self._ctx, self._pump, record, status, message, t_start)

    def _work(self, stop: StopFlag, record: RunRecord) -> tuple[str, str]:
        """Load, set up and loop; (status, message). Only KeyboardInterrupt escapes."""
        try:
            heads = set().union(*(set(s.heads) for s in self.steps)) - {"logits"}
            self._setup_backend()
            t0 = time.perf_counter()
            model = build_model(self.recipe, self.device, heads)
            self.timings["model_load_seconds"] = round(time.perf_counter() - t0, 3)
            ctx = self._ctx = RunContext(plan=self.recipe.plan, device=self.device, model=model)
            for step in self.steps:
                self._where = step
                step.setup(ctx)
            self._where = None
            self._init_image(ctx)
            self._check_space(ctx)
            self._pump = self._start_writers(record)
            with long_lived_objects_frozen():
                if self.device.type == "cuda" and self.recipe.model.performance.deterministic:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        status = self._loop(ctx, self._pump, stop, record)
                    found = sorted({str(w.message).splitlines()[0] for w in caught if "determinis" in str(w.message)})
                    if found:
                        record.data["determinism_warnings"] = found
                else:
                    status = self._loop(ctx, self._pump, stop, record)
            return status, (f"stopped by {stop.signal_name}" if status == "interrupted" else "")
        except PipelineError as exc:
            self.error_code = exc.exit_code
            return "failed", str(exc)
        except torch.cuda.OutOfMemoryError as exc:
            return "failed", self._oom_message(exc)
        except Exception as exc:  # noqa: BLE001 - recorded, shown with --debug
            if _cpu_out_of_memory(exc):
                return "failed", self._cpu_oom_message(exc)
            record.data["traceback"] = traceback.format_exc()
            where = self._where
            if isinstance(where, Step):
                where = f"step {where.index} ({where.name})"
            first = (str(exc).strip().splitlines() or [""])[0]
            when = f"at iteration {self._ctx.iteration}" if self._ctx is not None and self._in_loop else "while setting up"
            during = f"{where} failed {when}: " if where else ""
            return "failed", f"{during}{type(exc).__name__}: {first}"

    def _carry_over(self, record: RunRecord) -> None:
        """A resumed run keeps its history: the original recipe file and every earlier resume."""
        try:
            before = json.loads((self.run_dir / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = {}
        if isinstance(before, dict):
            if before.get("recipe_file"):
                record.data["recipe_file"] = before["recipe_file"]
            earlier = before.get("resumed") if isinstance(before.get("resumed"), list) else []
        else:
            earlier = []
        assert self.resume is not None
        record.data["resumed"] = [*earlier, {"from_iteration": self.resume.iteration,
                                             "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
        # the checkpoint resumed from stays until a newer one replaces it
        record.data["checkpoint"] = {"file": "checkpoint.pt", "iteration": self.resume.iteration}

    def _check_space(self, ctx: RunContext) -> None:
        """Refuse to start when the run folder's disk cannot take the outputs (rough upper bound)."""
        assert ctx.param is not None
        out, plan = self.recipe.model.output, self.recipe.plan
        pixels = ctx.param.image().numel()
        state = sum(v.numel() for v in ctx.param.state_dict().values())
        checkpoint = (pixels + 3 * state) * 4 if out.checkpoint_every or plan.iterations > 1 else 0
        frames = (1 + plan.iterations // out.frame_every) if out.video else 0
        need = 2 * checkpoint + 2 * pixels + frames * pixels // 2 + (1 << 20)
        check_free_space(self.run_dir, need)

    def _setup_backend(self) -> None:
        """Before the model is built: cuBLAS reads its workspace setting when it first starts."""
        perf = self.recipe.model.performance
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = perf.cudnn_benchmark and not perf.deterministic
            if perf.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.deterministic = True
                torch.use_deterministic_algorithms(True, warn_only=True)

    def _init_image(self, ctx: RunContext) -> None:
        if self.resume is not None:
            image = self.resume.image.to(self.device)
        else:
            image = None
            for s in self.by_kind[StepKind.INIT]:
                self._where = s.step
                image = s.step.init(ctx, image)
                self._where = None
                if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
                    raise RunFailed(f"init step {s.step.index} ({s.step.name}) did not return a (B, 3, H, W) image")
                if not bool(torch.isfinite(image).all()):
                    raise RunFailed(f"step {s.step.index} ({s.step.name}) made a starting image with NaN or Inf")
            image = image.to(self.device, torch.float32)
            if image.shape[0] != ctx.batch:
                if ctx.batch % image.shape[0]:
                    raise RunFailed(f"the init steps made {image.shape[0]} images for a batch of {ctx.batch}")
                image = image.repeat(ctx.batch // image.shape[0], 1, 1, 1)
        param_steps = self.by_kind[StepKind.PARAM]
        ctx.param = param_steps[0].step.build(ctx, image) if param_steps else PixelImage(image)
        if self.resume is not None:
            self.resume.restore(ctx, self.steps)
            self.done = self.resume.iteration

    def _start_writers(self, record: RunRecord) -> FramePump:
        out = self.recipe.model.output
        if self.resume is not None and out.video:
            self._video_to_checkpoint(record)
        tile = out.tile
        if tile is None and self._ctx is not None:
            side = max(self._ctx.image.shape[-2:])
            tile = auto_tile(self.recipe.plan.batch, side, out.video and out.logits_panel, out.columns)
        info = FrameInfo(run_dir=self.run_dir, batch=self.recipe.plan.batch, iterations=self.recipe.plan.iterations,
                         categories=list(self.recipe.model_info.categories),
                         targets=[[t["index"] for t in ts] for ts in self.targets], fps=out.fps,
                         tile=tile, columns=out.columns)
        writers: list[Writer] = []
        if out.video:
            segment = self.resume.segment + 1 if self.resume is not None else 0
            name = "video.mp4" if segment == 0 else f".video.part{segment}.mp4"
            writers.append(VideoWriter(None, info, logits_panel=out.logits_panel, path=self.run_dir / name,
                                       encoder_threads=1 if self.device.type == "cpu" else None))
        for options in out.writers:
            cls = self.registry.writer(options["writer"])
            params = cls.Params.model_validate({k: v for k, v in options.items() if k != "writer"})
            writers.append(cls(params, info))
        return FramePump(writers)

    def _emit(self, ctx: RunContext, pump: FramePump, iteration: int, logits: torch.Tensor | None) -> None:
        # the pump copies (on a GPU asynchronously, into pinned memory); the loop moves on
        pump.snapshot(iteration, ctx.param.image().detach(), logits.detach() if logits is not None else None)

    def _loop(self, ctx: RunContext, pump: FramePump, stop: StopFlag, record: RunRecord) -> str:
        plan = self.recipe.plan
        out = self.recipe.model.output
        on_cpu = self.device.type == "cpu"
        primary = self._primary()
        objectives, updates = self.by_kind[StepKind.OBJECTIVE], self.by_kind[StepKind.UPDATE]
        if self.resume is None:  # a resumed run's first frame is already in the video
            self._emit(ctx, pump, 0, None)
            t0 = time.perf_counter()
            pump.wait()  # the encoders start now, not on the cores the first iterations need
            self.timings["video_start_seconds"] = round(time.perf_counter() - t0, 3)
        self.progress.start(plan.iterations, self.recipe.name, done=self.done)
        last_logits = None
        checkpoint_every = out.checkpoint_every
        loop_t0, loop_cpu0 = time.perf_counter(), time.process_time()
        start = self.done
        self._good = self._snapshot(ctx)
        self._in_loop = True
        for it in range(start, plan.iterations):
            if stop.set:
                return "interrupted"
            self._between = False  # from here until the iteration ends, the state is half-changed
            ctx.iteration = it
            param = ctx.param
            report = self.progress.due() or it == plan.iterations - 1  # the bar ends on the last iteration's numbers
            check = on_cpu or report  # on a GPU, look for NaN only when we synchronise anyway
            active = [s for s in self.image_transforms if s.active(it)]
            if active:
                with torch.no_grad():
                    x = param.image().detach()
                    for s in active:
                        self._where = s.step
                        x = s.step.apply(ctx, x)
                        if check and not _finite(x):
                            raise self._fault(ctx, f"step {s.step.index} ({s.step.name}) turned the image into NaN or Inf "
                                                   f"at iteration {it}")
                    param.set_image(x)
            image = param.image()
            view = image
            for s in self.view_transforms:
                if s.active(it):
                    self._where = s.step
                    view = s.step.apply(ctx, view)
                    if check and not _finite(view):
                        raise self._fault(ctx, f"step {s.step.index} ({s.step.name}) turned the view into NaN or Inf "
                                               f"at iteration {it}")
            self._where = "the model"
            result = ctx.model(view).per_image(ctx.batch)
            terms = []
            for s in objectives:
                if s.active(it):
                    self._where = s.step
                    terms.append((s.step, s.step.loss(ctx, result, image)))
            self._where = "the backward pass"
            if not terms:
                raise RunFailed(f"no objective is active at iteration {it}: check the objectives' from/until")
            per_image = terms[0][1]
            for _, term in terms[1:]:
                per_image = per_image + term
            total = per_image.sum()
            if check and not bool(torch.isfinite(total)):
                raise self._fault(ctx, self._diagnose(it, terms, image, result.logits))
            params = param.parameters()
            grads = torch.autograd.grad(total, params)
            if check and not all(_finite(g) for g in grads):
                names = ", ".join(f"step {st.index} ({st.name})" for st, _ in terms)
                raise self._fault(ctx, f"the gradient of the loss holds NaN or Inf at iteration {it} although the loss "
                                       f"is finite; it comes from the objectives ({names}) or the model")
            with torch.no_grad():
                for s in updates:
                    if s.active(it):
                        self._where = s.step
                        s.step.update(ctx, params, list(grads))
                        if check and not all(_finite(q) for q in param.parameters()):
                            raise self._fault(ctx, f"step {s.step.index} ({s.step.name}) made the image NaN or Inf at "
                                                   f"iteration {it}{self._magnitude(self._good)}; lower its step size")
            if check:
                self._good = self._snapshot(ctx)
            self._where = None
            last_logits = result.logits
            self.done = it + 1
            self._between = True
            if self.done % out.frame_every == 0 or self.done == plan.iterations:
                self._emit(ctx, pump, self.done, last_logits)
            if report:
                prob = None
                if primary is not None and self.progress is not None:
                    probs = torch.softmax(last_logits.detach(), dim=1)
                    prob = float(probs.gather(1, primary.view(-1, 1)).mean())
                self.progress.update(self.done, float(total.detach()), prob)
            if checkpoint_every and self.done % checkpoint_every == 0 and self.done < plan.iterations:
                self._checkpoint(ctx, pump, record)
        if self.device.type == "cuda":  # the clock must include the work still queued on the GPU
            torch.cuda.synchronize(self.device)
        self.timings["loop_seconds"] = round(time.perf_counter() - loop_t0, 3)
        self.timings["loop_cpu_seconds"] = round(time.process_time() - loop_cpu0, 3)  # every thread of the process
        self.timings["image_iterations_per_second"] = round(
            (plan.iterations - start) * plan.batch / max(time.perf_counter() - loop_t0, 1e-9), 3)
        return "completed"

    # -- numerical faults ----------------------------------------------------------------------
    def _snapshot(self, ctx: RunContext) -> dict[str, torch.Tensor]:
        """The image's parameters at a point known to be finite: what a fault rolls back to."""
        assert ctx.param is not None
        return {k: v.detach().clone() for k, v in ctx.param.state_dict().items()}

    def _fault(self, ctx: RunContext, what: str) -> RunFailed:
        """Roll the image back to the last finite state (the last frame's) and say what broke."""
        if ctx.param is not None and self._good is not None:
            with torch.no_grad():
                ctx.param.load_state_dict(self._good)
        return RunFailed(f"{what}. The run stopped there; the last good image and frame were kept")

    @staticmethod
    def _magnitude(state: dict[str, torch.Tensor] | None) -> str:
        if not state:
            return ""
        peak = max(float(v.detach().abs().max()) for v in state.values())
        return f" (the image's values reach {peak:.3g})" if peak > 1e3 else ""

    def _diagnose(self, it: int, terms: list[tuple[Step, torch.Tensor]], image: torch.Tensor,
                  logits: torch.Tensor | None = None) -> str:
        ups = ", ".join(f"step {s.step.index} ({s.step.name})" for s in self.by_kind[StepKind.UPDATE])
        if not bool(torch.isfinite(image).all()):
            return f"the image holds NaN or Inf at iteration {it}; lower the step size of {ups}"
        if logits is not None and not bool(torch.isfinite(logits).all()):
            return (f"the model's logits hold NaN or Inf at iteration {it}{self._magnitude({'image': image})}; "
                    f"lower the step size of {ups}")
        huge = self._magnitude({"image": image})
        for step, term in terms:
            if not bool(torch.isfinite(term).all()):
                hint = f"{huge}; lower the step size of {ups}" if huge else ""
                return f"step {step.index} ({step.name}) produced a NaN or Inf loss at iteration {it}{hint}"
        names = ", ".join(f"step {st.index} ({st.name})" for st, _ in terms)
        return (f"the sum of the losses ({names}) overflowed to Inf at iteration {it}"
                f"{self._magnitude({'image': image})}; lower the step size of {ups}")

    def _oom_message(self, exc: BaseException) -> str:
        batch = self.recipe.plan.batch
        name, capacity, peak = str(self.device), 0, 0
        try:
            name = torch.cuda.get_device_name(self.device)
            _free, capacity = torch.cuda.mem_get_info(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        except Exception:  # noqa: BLE001 - the advice falls back to halving the batch
            pass
        where = f"on {name} ({_gib(capacity)})" if capacity else f"on {name}"
        return oom_advice(batch, peak, _tried(exc), capacity, where)

    def _cpu_oom_message(self, exc: BaseException) -> str:
        batch, tried = self.recipe.plan.batch, _tried(exc)
        m = re.search(r"allocate (\d+) bytes", str(exc))
        tried = int(m.group(1)) if m else tried
        size = f" (an allocation of {_gib(tried)} failed)" if tried else ""
        return (f"out of memory on the CPU with a batch of {batch}{size}; lower batch or the image size "
                "(the init step's size)")

    def _checkpoint(self, ctx: RunContext, pump: FramePump | None, record: RunRecord) -> None:
        segment = self.resume.segment + 1 if self.resume is not None else 0
        save_checkpoint(self.run_dir, Checkpoint.capture(ctx, self.steps, self.done, segment,
                                                         time.time() - record.started))
        record.update(iterations_done=self.done, checkpoint={"file": "checkpoint.pt", "iteration": self.done})

    # -- the end, whatever happened ---------------------------------------------------------
    def _finish(self, ctx: RunContext | None, pump: FramePump | None, record: RunRecord, status: str,
                message: str, t_start: float) -> RunResult:
        files: list[str] = []
        if pump is not None:
            t_close = time.perf_counter()
            files = pump.close(status)
            self.timings["drain_seconds"] = round(time.perf_counter() - t_close, 3)  # frames still queued
            if pump.error is not None and status == "completed":
                status, message = "failed", f"writing the outputs failed: {pump.error}"
            self.timings["encode_seconds"] = round(pump.encode_seconds, 3)
            self.timings["encode_cpu_seconds"] = round(pump.encode_cpu_seconds, 3)
            self.timings["frames"] = pump.frames
        problems: list[str] = []
        if self.recipe.model.output.video:
            try:
                files = self._join_video_segments(files)
            except Exception as exc:  # noqa: BLE001 - the segments stay; the next resume joins them
                problems.append(f"joining the video failed ({type(exc).__name__}: {exc})")
        images: list[dict[str, Any]] = []
        if ctx is not None and ctx.param is not None:
            # only between iterations do the image, step states and generators agree; a run stopped
            # in the middle of one keeps its last periodic checkpoint instead
            if status == "interrupted" and self._between and self.done < self.recipe.plan.iterations:
                try:
                    self._checkpoint(ctx, None, record)
                except Exception as exc:  # noqa: BLE001 - the images and record still get written
                    problems.append(f"the checkpoint could not be written ({type(exc).__name__}: {exc})")
            try:
                images = self._save_images(ctx)
            except Exception as exc:  # noqa: BLE001 - a full disk, or the model failing on the last image
                problems.append(f"the final images could not be written ({type(exc).__name__}: {exc})")
                if status == "completed":
                    status, self.error_code = "failed", 1
            problems.extend(self._notes)
            if status == "completed":
                (self.run_dir / "checkpoint.pt").unlink(missing_ok=True)
                record.data.pop("checkpoint", None)
        message = " ".join("; ".join([m for m in [message, *problems] if m]).splitlines())  # one line
        record_status = status
        self.timings["total_seconds"] = round(time.perf_counter() - t_start, 3)
        try:
            record.update(status=record_status, message=message or None, iterations_done=self.done,
                          images=images, files=sorted(set(files) | {"run.json"} | ({"images/grid.png"} if images else set())
                                       | {f"images/{i['file']}" for i in images}),
                          timings={**record.data.get("timings", {}), **self.timings})
        except OSError as exc:  # the record cannot be written (disk full): say so rather than crash
            message = "; ".join([m for m in [message, f"run.json could not be written ({exc.strerror or exc})"] if m])
            if record_status == "completed":
                record_status, self.error_code = "failed", 1
        return RunResult(record_status, self.run_dir, self.done, message, record.data, self.error_code)

    def _video_to_checkpoint(self, record: RunRecord) -> None:
        """Make video.mp4 end at the checkpoint's frame: a run killed outright (SIGKILL, power
        cut, a second Ctrl-C) may have encoded frames past its last checkpoint."""
        from .checkpoint import join_segments, trim_video

        assert self.resume is not None
        join_segments(self.run_dir)
        out = self.recipe.model.output
        expected = 1 + self.resume.iteration // out.frame_every
        found = trim_video(self.run_dir / "video.mp4", expected, out.fps)
        if found < expected:
            record.data["video_note"] = (f"{expected - found} frame(s) before iteration {self.resume.iteration} were "
                                         "lost when the run was stopped; the video skips them")

    def _join_video_segments(self, files: list[str]) -> list[str]:
        from .checkpoint import join_segments

        joined = join_segments(self.run_dir)
        return sorted({f for f in files if not f.startswith(".video.part")} | ({"video.mp4"} if joined else set()))

    def _save_images(self, ctx: RunContext) -> list[dict[str, Any]]:
        """The final PNGs and grid first, then the model's top five for each, so that a batch too
        big to score (a run that failed for lack of memory) still leaves its images."""
        final = ctx.param.image().detach().float().clamp(0, 1)
        images_dir = self.run_dir / "images"
        pics = to_uint8(final)
        names = []
        for i in range(pics.shape[0]):
            targets = self.targets[i]
            label = targets[-1]["name"] if targets else "image"
            names.append(f"{i:03d}_{_slug(label)}.png")
            save_png(images_dir / names[-1], pics[i])
        side = max(final.shape[-2:])
        columns = self.recipe.model.output.columns
        tile = auto_tile(final.shape[0], side, False, columns, budget=MAX_GRID_SIDE)
        save_png(images_dir / "grid.png", compose(final, tile=tile, columns=columns))
        probs = self._final_probabilities(ctx, final)
        cats = self.recipe.model_info.categories
        out = []
        for i, name in enumerate(names):
            top5 = []
            if probs is not None:
                p, idx = probs[i].topk(min(5, probs.shape[1]))
                top5 = [{"index": int(k), "name": str(cats[int(k)]) if int(k) < len(cats) else str(int(k)),
                         "probability": round(float(v), 6)} for v, k in zip(p, idx)]
            out.append({"file": name, "targets": self.targets[i], "top5": top5})
        return out

    def _final_probabilities(self, ctx: RunContext, final: torch.Tensor) -> torch.Tensor | None:
        """Softmax of the model on the final images, in smaller pieces if the whole batch does not
        fit; None (and a note in the message) if the images cannot be scored at all."""
        if not bool(torch.isfinite(final).all()):
            return None
        chunk = final.shape[0]
        while True:
            try:
                with torch.no_grad():
                    logits = torch.cat([ctx.model(part).logits.float() for part in final.split(chunk)])
                return torch.softmax(logits, 1).cpu()
            except torch.cuda.OutOfMemoryError as exc:
                if ctx.device.type == "cuda":
                    torch.cuda.empty_cache()
                if chunk == 1:
                    first = (str(exc).strip().splitlines() or [""])[0]
                    self._notes.append(f"the final images were saved but not scored: {type(exc).__name__}: {first}")
                    return None
                chunk = max(1, chunk // 4)


def load_resume(run_dir: Path) -> Checkpoint:
    return load_checkpoint(run_dir)
