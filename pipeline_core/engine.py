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

import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .context import RunContext
from .device import pick_device
from .errors import ModelLoadError, PipelineError, RunFailed
from .frames import compose, to_uint8
from .interrupts import StopFlag, graceful_stop, shielded
from .model import ModelAdapter
from .parameterization import Parameterization, PixelImage
from .progress import Progress
from .recipe import Recipe
from .record import RunRecord, save_png, versions
from .registry import Registry
from .step import Step, StepKind
from .video import VideoWriter
from .writers import FrameInfo, FramePump, Writer


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

    def _base_record(self) -> dict[str, Any]:
        perf = self.recipe.model.performance
        deterministic = self.device.type == "cpu" or perf.deterministic
        return {
            "status": "running",
            "recipe_file": str(Path(self.recipe.source.file).resolve()) if Path(self.recipe.source.file).exists() else self.recipe.source.file,
            "recipe": self.recipe.resolved(),
            "seed": self.recipe.plan.seed,
            "device": str(self.device),
            "deterministic": deterministic,
            "determinism_note": None if deterministic else (
                "GPU kernels (convolution backward, interpolate backward) are not bitwise deterministic; "
                "set performance.deterministic: true for repeatable GPU runs"
            ),
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
        t_start = time.perf_counter()
        record = RunRecord(self.run_dir, self._base_record())
        if self.resume is not None:
            record.started -= self.resume.wall_seconds
        record.update()
        status, message, pump = "failed", "", None
        self.error_code = 1
        ctx: RunContext | None = None
        with graceful_stop() as stop:
            try:
                heads = set().union(*(set(s.heads) for s in self.steps)) - {"logits"}
                t0 = time.perf_counter()
                model = build_model(self.recipe, self.device, heads)
                self._setup_backend()
                self.timings["model_load_seconds"] = round(time.perf_counter() - t0, 3)
                ctx = RunContext(plan=self.recipe.plan, device=self.device, model=model)
                for step in self.steps:
                    step.setup(ctx)
                self._init_image(ctx)
                pump = self._start_writers(record)
                status = self._loop(ctx, pump, stop, record)
                message = f"stopped by {stop.signal_name}" if status == "interrupted" else ""
            except KeyboardInterrupt:
                status, message = "interrupted", "stopped by a second interrupt"
            except PipelineError as exc:
                status, message, self.error_code = "failed", str(exc), exc.exit_code
            except torch.cuda.OutOfMemoryError as exc:  # pragma: no cover - needs a GPU
                status, message = "failed", self._oom_message(exc)
            except Exception as exc:  # noqa: BLE001 - recorded, shown with --debug
                status, message = "failed", f"{type(exc).__name__}: {exc}"
                record.data["traceback"] = traceback.format_exc()
        with shielded():
            return self._finish(ctx, pump, record, status, message, t_start)

    def _setup_backend(self) -> None:
        perf = self.recipe.model.performance
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = perf.cudnn_benchmark and not perf.deterministic
            if perf.deterministic:
                torch.backends.cudnn.deterministic = True
                torch.use_deterministic_algorithms(True, warn_only=True)

    def _init_image(self, ctx: RunContext) -> None:
        if self.resume is not None:
            image = self.resume.image.to(self.device)
        else:
            image = None
            for s in self.by_kind[StepKind.INIT]:
                image = s.step.init(ctx, image)
                if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
                    raise RunFailed(f"init step {s.step.index} ({s.step.name}) did not return a (B, 3, H, W) image")
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
        info = FrameInfo(run_dir=self.run_dir, batch=self.recipe.plan.batch, iterations=self.recipe.plan.iterations,
                         categories=list(self.recipe.model_info.categories),
                         targets=[[t["index"] for t in ts] for ts in self.targets], fps=out.fps,
                         tile=out.tile, columns=out.columns)
        writers: list[Writer] = []
        if out.video:
            segment = self.resume.segment + 1 if self.resume is not None else 0
            name = "video.mp4" if segment == 0 else f".video.part{segment}.mp4"
            writers.append(VideoWriter(None, info, logits_panel=out.logits_panel, path=self.run_dir / name))
        for options in out.writers:
            cls = self.registry.writer(options["writer"])
            params = cls.Params.model_validate({k: v for k, v in options.items() if k != "writer"})
            writers.append(cls(params, info))
        return FramePump(writers)

    def _emit(self, ctx: RunContext, pump: FramePump, iteration: int, logits: torch.Tensor | None) -> None:
        image = ctx.param.image().detach().clone()  # async on the device; the loop moves on
        pump.put(iteration, image, logits.detach().clone() if logits is not None else None)

    def _loop(self, ctx: RunContext, pump: FramePump, stop: StopFlag, record: RunRecord) -> str:
        plan = self.recipe.plan
        out = self.recipe.model.output
        on_cpu = self.device.type == "cpu"
        primary = self._primary()
        objectives, updates = self.by_kind[StepKind.OBJECTIVE], self.by_kind[StepKind.UPDATE]
        if self.done == 0:
            self._emit(ctx, pump, 0, None)
        self.progress.start(plan.iterations, self.recipe.name, done=self.done)
        last_logits = None
        checkpoint_every = out.checkpoint_every
        loop_t0 = time.perf_counter()
        start = self.done
        for it in range(start, plan.iterations):
            if stop.set:
                return "interrupted"
            ctx.iteration = it
            param = ctx.param
            active = [s for s in self.image_transforms if s.active(it)]
            if active:
                with torch.no_grad():
                    x = param.image().detach()
                    for s in active:
                        x = s.step.apply(ctx, x)
                    param.set_image(x)
            image = param.image()
            view = image
            for s in self.view_transforms:
                if s.active(it):
                    view = s.step.apply(ctx, view)
            result = ctx.model(view)
            terms = [(s.step, s.step.loss(ctx, result, image)) for s in objectives if s.active(it)]
            if not terms:
                raise RunFailed(f"no objective is active at iteration {it}: check the objectives' from/until")
            per_image = terms[0][1]
            for _, term in terms[1:]:
                per_image = per_image + term
            total = per_image.sum()
            report = self.progress.due()
            check = on_cpu or report  # on a GPU, look for NaN only when we synchronise anyway
            if check and not bool(torch.isfinite(total)):
                raise RunFailed(self._diagnose(it, terms, image))
            params = param.parameters()
            grads = torch.autograd.grad(total, params)
            with torch.no_grad():
                for s in updates:
                    if s.active(it):
                        s.step.update(ctx, params, list(grads))
            last_logits = result.logits
            self.done = it + 1
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
        self.timings["loop_seconds"] = round(time.perf_counter() - loop_t0, 3)
        self.timings["image_iterations_per_second"] = round(
            (plan.iterations - start) * plan.batch / max(time.perf_counter() - loop_t0, 1e-9), 3)
        return "completed"

    def _diagnose(self, it: int, terms: list[tuple[Step, torch.Tensor]], image: torch.Tensor) -> str:
        if not bool(torch.isfinite(image).all()):
            ups = ", ".join(f"step {s.step.index} ({s.step.name})" for s in self.by_kind[StepKind.UPDATE])
            return (f"the image holds NaN or Inf at iteration {it}, after the updates of earlier iterations ({ups}); "
                    "lower the step size. The last good image was kept")
        for step, term in terms:
            if not bool(torch.isfinite(term).all()):
                return (f"step {step.index} ({step.name}) produced a NaN or Inf loss at iteration {it}; "
                        "the last good image was kept")
        return f"the loss became NaN or Inf at iteration {it}; the last good image was kept"

    def _oom_message(self, exc: BaseException) -> str:  # pragma: no cover - needs a GPU
        batch = self.recipe.plan.batch
        free, total = torch.cuda.mem_get_info(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        fits = max(1, int(batch * (total * 0.9) / max(peak, 1))) if peak else max(1, batch // 2)
        return (f"CUDA ran out of memory with a batch of {batch} on {torch.cuda.get_device_name(self.device)} "
                f"({total / 2**30:.1f} GiB); a batch of about {min(fits, batch - 1) or 1} should fit "
                "(set batch, or performance.precision: bf16)")

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
            files = pump.close(status)
            if pump.error is not None and status == "completed":
                status, message = "failed", f"writing the outputs failed: {pump.error}"
            self.timings["encode_seconds"] = round(pump.encode_seconds, 3)
            self.timings["frames"] = pump.frames
        if self.recipe.model.output.video:
            files = self._join_video_segments(files)
        images: list[dict[str, Any]] = []
        if ctx is not None and ctx.param is not None:
            if status == "interrupted" and self.done < self.recipe.plan.iterations:
                try:
                    self._checkpoint(ctx, None, record)
                except Exception:  # noqa: BLE001 - the images and record still get written
                    pass
            images = self._save_images(ctx)
            if status == "completed":
                (self.run_dir / "checkpoint.pt").unlink(missing_ok=True)
                record.data.pop("checkpoint", None)
        record_status = status
        self.timings["total_seconds"] = round(time.perf_counter() - t_start, 3)
        record.update(status=record_status, message=message or None, iterations_done=self.done,
                      images=images, files=sorted(set(files) | {"run.json"} | ({"images/grid.png"} if images else set())
                                   | {f"images/{i['file']}" for i in images}),
                      timings={**record.data.get("timings", {}), **self.timings})
        return RunResult(record_status, self.run_dir, self.done, message, record.data, self.error_code)

    def _join_video_segments(self, files: list[str]) -> list[str]:
        from .checkpoint import join_segments

        joined = join_segments(self.run_dir)
        return sorted({f for f in files if not f.startswith(".video.part")} | ({"video.mp4"} if joined else set()))

    def _save_images(self, ctx: RunContext) -> list[dict[str, Any]]:
        with torch.no_grad():
            final = ctx.param.image().detach().float().clamp(0, 1)
            logits = ctx.model(final).logits if bool(torch.isfinite(final).all()) else None
        images_dir = self.run_dir / "images"
        pics = to_uint8(final)
        cats = self.recipe.model_info.categories
        probs = torch.softmax(logits, 1).cpu() if logits is not None else None
        out = []
        for i in range(pics.shape[0]):
            targets = self.targets[i]
            label = targets[-1]["name"] if targets else "image"
            name = f"{i:03d}_{_slug(label)}.png"
            save_png(images_dir / name, pics[i])
            top5 = []
            if probs is not None:
                p, idx = probs[i].topk(min(5, probs.shape[1]))
                top5 = [{"index": int(k), "name": str(cats[int(k)]) if int(k) < len(cats) else str(int(k)),
                         "probability": round(float(v), 6)} for v, k in zip(p, idx)]
            out.append({"file": name, "targets": targets, "top5": top5})
        save_png(images_dir / "grid.png", compose(final, columns=self.recipe.model.output.columns))
        return out


def load_resume(run_dir: Path) -> Checkpoint:
    return load_checkpoint(run_dir)
