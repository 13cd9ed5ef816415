"""A run from start to end: set up, loop, and an ending that always happens.

:class:`Run` is the conductor. It builds the model and the run context, starts the run folder
(:mod:`.folder`) and the loop (:mod:`.loop`), and makes sure every way out, an error of any
kind or an interrupt, goes through :meth:`Run.finish`, so that the video, the images and
run.json are written after a failure or an interrupt too. What a failure means is worded by
:mod:`.faults`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from pipeline_core.context import RunContext
from pipeline_core.errors import ModelLoadError, PipelineError, RecipeError, RunFailed
from pipeline_core.model import ModelAdapter, ModelDef, ModelSpec, _unknown_layer
from pipeline_core.output.pump import FramePump
from pipeline_core.parameterization import PixelImage
from pipeline_core.recipe.loader import Recipe, load_recipe
from pipeline_core.registry import Registry
from pipeline_core.run.checkpoint import Checkpoint, load_checkpoint
from pipeline_core.run.device import pick_device
from pipeline_core.run.faults import cpu_oom_message, cpu_out_of_memory, failure_line, gpu_oom_message, step_label
from pipeline_core.run.folder import RunFolder, primary_targets
from pipeline_core.run.interrupts import StopFlag, graceful_stop
from pipeline_core.run.record import RunLock, read_record
from pipeline_core.run.threads import using_threads
from pipeline_core.run.loop import Loop, StepGroups, emit
from pipeline_core.run.progress import Progress
from pipeline_core.step import Step, StepKind


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


def step_facts(steps: list[Step]) -> dict[str, dict[str, Any]]:
    """What the steps found out while setting up (an octave's sizes, the layers a prior hooked),
    for run.json: a reader of the record sees what the recipe's words became on this model.
    A step whose ``record`` fails (its setup never ran) is left out rather than lose the record."""
    facts: dict[str, dict[str, Any]] = {}
    for step in steps:
        try:
            found = step.record()
        except Exception:  # noqa: BLE001 - the record of a failed run matters more
            continue
        if found:
            facts[step_label(step)] = found
    return facts


def build_model(recipe: Recipe, device: torch.device, heads: set[str]) -> ModelAdapter:
    perf = recipe.model.performance
    try:
        module = _build(recipe.model_def, recipe.model_spec)
    except ModelLoadError as exc:
        if recipe.download is not None:  # the weights had to be downloaded, and that failed: the run failed
            raise RunFailed(exc.message, exc.location) from None
        raise
    if recipe.ensemble:
        module = _with_ensemble(recipe, module)
    _check_layers(recipe, module)
    return ModelAdapter(module, recipe.model_info, recipe.model_def.heads, sorted(heads), device,
                        precision=perf.precision, channels_last=perf.channels_last, compile=perf.compile,
                        max_rows=perf.max_rows if isinstance(perf.max_rows, int) else None)


def _build(model_def: ModelDef, spec: ModelSpec) -> torch.nn.Module:
    """``model_def.build(spec)``, a builder's own failure made one line (a ModelLoadError)."""
    try:
        return model_def.build(spec)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's or torchvision's builder failed
        raise ModelLoadError(f"could not build model '{spec.name}': {exc}") from exc


def _with_ensemble(recipe: Recipe, module: torch.nn.Module) -> torch.nn.Module:
    """The main module with the recipe's ``model.ensemble`` members (see :mod:`run.ensemble`)."""
    from pipeline_core.run.ensemble import Ensemble

    members = []
    for i, (model_def, spec, info) in enumerate(recipe.ensemble):
        try:
            members.append((_build(model_def, spec).eval().requires_grad_(False), info))
        except PipelineError as exc:  # its wording names model.* keys: say which model it is about
            fix = exc.message.replace("(with model.mean, model.std and model.size)", "(with mean=, std= and size=)")
            fix = fix.replace("set model.weights to a local state-dict file", "give the member weights=FILE")
            message = f"model.ensemble[{i}] '{recipe.model.model.ensemble[i]}': {fix}"
            where = recipe.source.where(("model", "ensemble", i))
            if i < len(recipe.ensemble_downloads) and recipe.ensemble_downloads[i] is not None:
                raise RunFailed(message, where) from None  # its weights had to be downloaded: the run failed
            raise ModelLoadError(message, where) from None
    if "ensemble" in dict(module.named_children()):
        raise ModelLoadError(f"model '{recipe.model_spec.name}' has a layer named 'ensemble', the name "
                             "model.ensemble gives its members; drop model.ensemble for this model")
    return Ensemble(module, recipe.model_info, members)


def _check_layers(recipe: Recipe, module: torch.nn.Module) -> None:
    """A ``layer:NAME`` head names a layer of the model; which layers there are is known only
    once the model is built, so this is checked here, pointing at the step that reads it."""
    names: list[str] | None = None
    for spec, step in zip(recipe.steps, recipe.steps_bound):
        for head in sorted(step.heads):
            if not head.startswith("layer:") or head in recipe.model_def.heads:
                continue
            if names is None:
                names = [n for n, _ in module.named_modules() if n]
            layer = head[len("layer:"):]
            if layer in names:
                continue
            key = step.head_key(head) if hasattr(step, "head_key") else "head"  # a layer objective's own key
            raise RecipeError(
                _unknown_layer(recipe.model_spec.name, layer, names),
                recipe.source.where(("steps", spec.index, key), step_index=spec.index, step_name=spec.cls.name,
                                    key=key),
            )


def load_resume(run_dir: Path, recipe: Recipe | None = None) -> Checkpoint:
    """The checkpoint of ``run_dir``, checked against its record (and against ``recipe``, the
    record's recipe as loaded): it must carry the record's run id and fit the run."""
    checkpoint = load_checkpoint(run_dir)
    record = read_record(run_dir)
    path = run_dir / "checkpoint.pt"
    run_id = record.get("run_id")
    if not checkpoint.run_id or not isinstance(run_id, str) or not run_id:
        raise RecipeError(f"{path} cannot be matched to {run_dir / 'run.json'}: "
                          f"{'the checkpoint' if not checkpoint.run_id else 'the record'} carries no run id "
                          "(written by another version, or by hand); start the run again")
    if checkpoint.run_id != run_id:
        raise RecipeError(f"{path} belongs to another run (run id {checkpoint.run_id[:12]}, but run.json is run "
                          f"{run_id[:12]}): it was left by an earlier run or copied in; start the run again")
    if recipe is not None:
        plan = recipe.plan
        if checkpoint.iteration >= plan.iterations:
            raise RecipeError(f"{path} is at iteration {checkpoint.iteration} but the run's record has only "
                              f"{plan.iterations} iterations: the record or the checkpoint was changed; "
                              "start the run again")
        if checkpoint.image.shape[0] != plan.batch:
            raise RecipeError(f"{path} holds {checkpoint.image.shape[0]} images but the run's record has a batch "
                              f"of {plan.batch}: the record or the checkpoint was changed; start the run again")
        indices = {s.index for s in recipe.steps}
        stray = sorted(set(checkpoint.steps) - indices) + sorted(set(checkpoint.generators) - indices)
        if stray:
            raise RecipeError(f"{path} holds the state of step {stray[0]}, which the run's recipe does not have; "
                              "start the run again")
    return checkpoint


def prepare_resume(run_dir: Path, registry: Registry, overrides: list[str] | None = None) -> tuple[Recipe, Checkpoint]:
    """Everything ``--resume`` checks before the run starts: the folder holds a run record, its
    recipe is valid, and its checkpoint belongs to it and fits it."""
    if not run_dir.is_dir():
        raise RecipeError(f"--resume {run_dir}: no such run folder")
    if not (run_dir / "run.json").is_file():
        raise RecipeError(f"--resume {run_dir}: the folder has no run.json, so it holds no run to continue")
    record = read_record(run_dir)
    if not isinstance(record.get("recipe"), dict):
        raise RecipeError(f"{run_dir / 'run.json'} is not a run record: it holds no 'recipe' mapping")
    if not (run_dir / "checkpoint.pt").is_file():
        load_checkpoint(run_dir)  # the one clear line about a missing checkpoint
    recipe = load_recipe(run_dir / "run.json", registry, overrides or [])
    return recipe, load_resume(run_dir, recipe)


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
        self.groups = StepGroups(recipe)
        self.steps = self.groups.steps
        self.targets = self.groups.targets(recipe.plan.batch)
        self.loop = Loop(recipe, self.groups, progress, self.device, self._primary())
        self.timings: dict[str, float] = {}
        self.error_code = 1
        self.ctx: RunContext | None = None
        self.pump: FramePump | None = None

    def _primary(self) -> torch.Tensor | None:
        """Per image, the class whose probability the progress bar shows (the final target)."""
        if not any(self.targets):
            return None
        idx = [0 if k is None else k for k in primary_targets(self.targets)]
        return torch.tensor(idx, device=self.device)

    # -- the run --------------------------------------------------------------------------
    def execute(self) -> RunResult:
        """Run to the end, whatever happens."""
        t_start = time.perf_counter()
        # the recipe's count, or the free cores (run.json records it, so a replay uses the same);
        # the process's own setting is given back for whatever runs next
        with using_threads(self.recipe.model.performance.threads):
            with graceful_stop() as stop:  # from the first moment: a Ctrl-C while run.json is begun still stops cleanly
                return self._execute(t_start, stop)

    def _execute(self, t_start: float, stop: StopFlag) -> RunResult:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            lock: RunLock | None = RunLock.acquire(self.run_dir)
        except OSError:  # a folder that cannot even hold the lock: writing run.json says why
            lock = None
        try:
            return self._execute_locked(t_start, stop)
        finally:
            if lock is not None:
                lock.release()

    def _execute_locked(self, t_start: float, stop: StopFlag) -> RunResult:
        folder = RunFolder(self.recipe, self.run_dir, self.device, self.targets, self.resume,
                           labels=self.groups.image_labels(self.recipe.plan.batch))
        try:
            folder.record.update()
        except OSError as exc:
            message = f"cannot write run.json in {self.run_dir}: {exc.strerror or exc}"
            return RunResult("failed", self.run_dir, self.loop.done, message, folder.record.data, error_code=2)
        try:
            status, message = self._work(stop, folder)
            stop.finishing = True
        except KeyboardInterrupt:  # a second signal: the handler already set stop.finishing
            status, message = "interrupted", "stopped at once by a second interrupt"
        return self.finish(folder, status, message, t_start)

    def _work(self, stop: StopFlag, folder: RunFolder) -> tuple[str, str]:
        """Load, set up and loop; (status, message). Only KeyboardInterrupt escapes."""
        try:
            ctx = self.start_context()
            folder.check_space(ctx)
            self.loop.metrics = folder.start_metrics(self.loop.primary)
            pump = self.pump = folder.start_writers(ctx, self.registry)
            if self.resume is None:  # a resumed run's first frame is already in the video
                emit(ctx, pump, 0, self._first_logits(ctx) if pump.writers else None)
                t0 = time.perf_counter()
                pump.wait()  # the encoders start now, not on the cores the first iterations need
                self.timings["video_start_seconds"] = round(time.perf_counter() - t0, 3)
            with long_lived_objects_frozen():
                status = self._loop(ctx, pump, stop, folder)
            return status, (f"stopped by {stop.signal_name}" if status == "interrupted" else "")
        except PipelineError as exc:
            self.error_code = exc.exit_code
            return "failed", str(exc)
        except torch.cuda.OutOfMemoryError as exc:
            return "failed", gpu_oom_message(exc, self.recipe.plan.batch, self.device)
        except Exception as exc:  # noqa: BLE001 - recorded, shown with --debug
            if cpu_out_of_memory(exc):
                return "failed", cpu_oom_message(exc, self.recipe.plan.batch)
            folder.record.data["traceback"] = traceback.format_exc()
            iteration = self.ctx.iteration if self.ctx is not None and self.loop.running else None
            return "failed", failure_line(exc, self.loop.where, iteration)

    def _loop(self, ctx: RunContext, pump: FramePump, stop: StopFlag, folder: RunFolder) -> str:
        def checkpoint(ctx: RunContext) -> None:
            folder.checkpoint(ctx, self.steps, self.loop.done)

        if not (self.device.type == "cuda" and self.recipe.model.performance.deterministic):
            return self.loop.run(ctx, pump, stop, checkpoint)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            status = self.loop.run(ctx, pump, stop, checkpoint)
        found = sorted({str(w.message).splitlines()[0] for w in caught if "determinis" in str(w.message)})
        if found:
            folder.record.data["determinism_warnings"] = found
        return status

    def _first_logits(self, ctx: RunContext) -> torch.Tensor | None:
        """What the model sees in the starting image, for the first frame's panels (one forward
        pass before the loop; skipped for a compiled model, whose first call compiles)."""
        if not self.recipe.model.output.logits_panel or self.recipe.model.performance.compile:
            return None
        assert ctx.param is not None
        try:
            with torch.no_grad():
                return ctx.model(ctx.param.image().detach()).logits
        except Exception:  # noqa: BLE001 - the panels start empty; the loop will say what is wrong
            return None

    # -- setting up ------------------------------------------------------------------------
    def setup_backend(self) -> None:
        """Before the model is built: cuBLAS reads its workspace setting when it first starts."""
        perf = self.recipe.model.performance
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = perf.cudnn_benchmark and not perf.deterministic
            if perf.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.deterministic = True
                torch.use_deterministic_algorithms(True, warn_only=True)

    def start_context(self) -> RunContext:
        """The model built, every step set up and the image made (or restored): ready to loop."""
        heads = set().union(*(set(s.heads) for s in self.steps)) - {"logits"}
        self.setup_backend()
        t0 = time.perf_counter()
        model = build_model(self.recipe, self.device, heads)
        self.timings["model_load_seconds"] = round(time.perf_counter() - t0, 3)
        ctx = self.ctx = RunContext(plan=self.recipe.plan, device=self.device, model=model)
        for step in self.steps:
            self.loop.where = step
            step.setup(ctx)
        self.loop.where = None
        self.init_image(ctx)
        return ctx

    def init_image(self, ctx: RunContext) -> None:
        """The init steps' image (or the checkpoint's), inside the parameterisation step's map."""
        if self.resume is not None:
            image = self.resume.image.to(self.device)
            for s in self.groups.by_kind[StepKind.INIT]:  # photos kept whole on a shared canvas: their frames
                frames = getattr(s.step, "frames", None)
                if frames:
                    ctx.state["frames"] = list(frames) * (ctx.batch // len(frames))
        else:
            image = None
            for s in self.groups.by_kind[StepKind.INIT]:
                self.loop.where = s.step
                image = s.step.init(ctx, image)
                self.loop.where = None
                if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
                    raise RunFailed(f"init {step_label(s.step)} did not return a (B, 3, H, W) image")
                if not bool(torch.isfinite(image).all()):
                    raise RunFailed(f"{step_label(s.step)} made a starting image with NaN or Inf")
            image = image.to(self.device, torch.float32)
            if image.shape[0] != ctx.batch:
                if ctx.batch % image.shape[0]:
                    raise RunFailed(f"the init steps made {image.shape[0]} images for a batch of {ctx.batch}")
                image = image.repeat(ctx.batch // image.shape[0], 1, 1, 1)
        param_steps = self.groups.by_kind[StepKind.PARAM]
        ctx.param = param_steps[0].step.build(ctx, image) if param_steps else PixelImage(image)
        if self.resume is not None:
            try:
                self.resume.restore(ctx, self.steps)
            except Exception as exc:  # noqa: BLE001 - a checkpoint tampered with, or from another recipe
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                raise RecipeError(f"the checkpoint {self.run_dir / 'checkpoint.pt'} does not fit this run "
                                  f"({type(exc).__name__}: {first}); start the run again") from None
            self.loop.done = self.resume.iteration

    # -- the end, whatever happened ---------------------------------------------------------
    def finish(self, folder: RunFolder, status: str, message: str, t_start: float) -> RunResult:
        """Close the writers, keep a checkpoint if stopped, write the images and the record."""
        loop, ctx = self.loop, self.ctx
        self.timings.update(loop.timings)
        files, pump_error = folder.close_writers(self.pump, status, self.timings)
        if pump_error is not None and status == "completed":
            status, message = "failed", f"writing the outputs failed: {pump_error}"
        problems: list[str] = []
        if self.recipe.model.output.video:
            try:
                files = folder.join_video(files)
            except Exception as exc:  # noqa: BLE001 - the segments stay; the next resume joins them
                problems.append(f"joining the video failed ({type(exc).__name__}: {exc})")
        images: list[dict[str, Any]] = []
        if ctx is not None and ctx.param is not None:
            # only between iterations do the image, step states and generators agree; a run stopped
            # in the middle of one keeps its last periodic checkpoint instead
            if status == "interrupted" and loop.between and loop.done < self.recipe.plan.iterations:
                try:
                    folder.checkpoint(ctx, self.steps, loop.done)
                except Exception as exc:  # noqa: BLE001 - the images and record still get written
                    problems.append(f"the checkpoint could not be written ({type(exc).__name__}: {exc})")
            try:
                images = folder.save_images(ctx)
            except Exception as exc:  # noqa: BLE001 - a full disk, or the model failing on the last image
                problems.append(f"the final images could not be written ({type(exc).__name__}: {exc})")
                if status == "completed":
                    status, self.error_code = "failed", 1
            problems.extend(folder.notes)
            if status == "completed":
                (self.run_dir / "checkpoint.pt").unlink(missing_ok=True)
                folder.record.data.pop("checkpoint", None)
        metrics_problem = folder.close_metrics()
        if metrics_problem:
            problems.append(metrics_problem)
        message = " ".join("; ".join([m for m in [message, *problems] if m]).splitlines())  # one line
        self.timings["total_seconds"] = round(time.perf_counter() - t_start, 3)
        facts = step_facts(self.steps)
        if facts:
            folder.record.data["step_facts"] = facts
        unwritten = folder.write_record(status, message, loop.done, images, files, self.timings)
        if unwritten:  # the record cannot be written (disk full): say so rather than crash
            message = "; ".join([m for m in [message, unwritten] if m])
            if status == "completed":
                status, self.error_code = "failed", 1
        else:
            problem = folder.finish_report()
            if problem:
                self.progress.message(f"warning: {problem}")
        return RunResult(status, self.run_dir, loop.done, message, folder.record.data, self.error_code)

    @property
    def done(self) -> int:
        return self.loop.done
