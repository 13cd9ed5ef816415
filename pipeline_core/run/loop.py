"""The loop: gradient descent on the input of a frozen classifier, one iteration at a time.

One iteration (see :mod:`pipeline_core.step` for the kinds):

1. ``transform`` steps with ``on: image`` replace the stored image (no autograd);
2. ``transform`` steps with ``on: view`` build what the model sees (differentiable; a view
   step may show the model several views of each image, whose outputs are averaged);
3. the model adapter resizes, normalises and runs the model;
4. ``objective`` steps each return a loss per image; the sum is back-propagated once;
5. ``update`` steps change the image's parameters;
6. if a frame is due, the image is snapshotted on its device and queued for the writers.

Nothing here synchronises the device every iteration: losses are read only when the progress
display is due (and recorded then in metrics.jsonl, on a GPU without waiting for the copy), and
frames are copied and encoded on another thread. What the loop does not
do is here too, by omission: the run folder (:mod:`.folder`) and explaining faults
(:mod:`.faults`) live elsewhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from pipeline_core.context import RunContext
from pipeline_core.errors import RunFailed
from pipeline_core.output.metrics import MetricsLog
from pipeline_core.output.pump import FramePump
from pipeline_core.recipe.loader import Recipe
from pipeline_core.run.faults import NumericGuard, finite, step_label
from pipeline_core.run.interrupts import StopFlag
from pipeline_core.run.progress import Progress
from pipeline_core.step import Step, StepKind


@dataclass
class Scheduled:
    step: Step
    schedule: Any

    def active(self, iteration: int) -> bool:
        return self.schedule.active(iteration)


class StepGroups:
    """The recipe's steps sorted by the place the loop calls them, each with its schedule."""

    def __init__(self, recipe: Recipe):
        self.steps = recipe.steps_bound
        self.by_kind: dict[StepKind, list[Scheduled]] = {k: [] for k in StepKind}
        for spec, step in zip(recipe.steps, self.steps):
            self.by_kind[spec.cls.kind].append(Scheduled(step, spec.schedule))
        transforms = self.by_kind[StepKind.TRANSFORM]
        self.image_transforms = [s for s in transforms if s.step.params.on == "image"]
        self.view_transforms = [s for s in transforms if s.step.params.on == "view"]
        self.objectives = self.by_kind[StepKind.OBJECTIVE]
        self.updates = self.by_kind[StepKind.UPDATE]

    def targets(self, batch: int) -> list[list[dict[str, Any]]]:
        """Per image, every class an objective aims it at (for run.json, names and the video)."""
        per_image: list[list[dict[str, Any]]] = [[] for _ in range(batch)]
        for s in self.objectives:
            for i, items in enumerate(s.step.targets() or []):
                for item in items:
                    if item not in per_image[i]:
                        per_image[i].append(item)
        return per_image

    def image_labels(self, batch: int) -> list[str | None]:
        """Per image, the first objective's words for it (names the PNG of an image without a class)."""
        labels: list[str | None] = [None] * batch
        for s in self.objectives:
            for i, text in (s.step.image_labels() or {}).items():
                if 0 <= i < batch and labels[i] is None:
                    labels[i] = text
        return labels


class Loop:
    """Iterations ``start .. plan.iterations`` of one run.

    It keeps what the run's end and its error messages need to know: how many iterations are
    done, whether the state is between iterations (only then may it be checkpointed) and
    which step is running (so an exception can be pinned on it).
    """

    def __init__(self, recipe: Recipe, groups: StepGroups, progress: Progress, device: torch.device,
                 primary: torch.Tensor | None):
        self.recipe = recipe
        self.groups = groups
        self.progress = progress
        self.device = device
        self.primary = primary  #: per image, the class whose probability the progress bar shows
        self.guard = NumericGuard([s.step for s in groups.updates])
        self.done = 0
        self.between = True
        self.running = False
        self.where: Step | str | None = None
        self.timings: dict[str, float] = {}
        #: performance.max_rows 'auto': chunk the model's passes when a GPU runs out of memory
        self.auto_rows = recipe.model.performance.max_rows == "auto"
        self.rows = 0  #: rows (images x views) of the last model pass
        #: where the numbers read at the progress display's cadence go (None: nowhere)
        self.metrics: MetricsLog | None = None
        #: the last iteration's objective terms, (step, loss per image)
        self.terms: list[tuple[Step, torch.Tensor]] = []

    def run(self, ctx: RunContext, pump: FramePump, stop: StopFlag,
            checkpoint: Callable[[RunContext], None]) -> str:
        """Iterate to the end or until ``stop`` is set; 'completed' or 'interrupted'.

        Faults raise :class:`~pipeline_core.errors.RunFailed` with the image rolled back.
        """
        plan = self.recipe.plan
        out = self.recipe.model.output
        start = self.done
        self.progress.start(plan.iterations, self.recipe.name, done=start)
        loop_t0, loop_cpu0 = time.perf_counter(), time.process_time()
        self.guard.keep(ctx)
        self.running = True
        for it in range(start, plan.iterations):
            if stop.set:
                return "interrupted"
            self.between = False  # from here until the iteration ends, the state is half-changed
            ctx.iteration = it
            report = self.progress.due() or it == plan.iterations - 1  # the bar ends on the last iteration's numbers
            check = self.device.type == "cpu" or report  # on a GPU, look for NaN only when we synchronise anyway
            total, logits = self.iteration(ctx, it, check)
            self.where = None
            self.done = it + 1
            self.between = True
            if self.done % out.frame_every == 0 or self.done == plan.iterations:
                emit(ctx, pump, self.done, logits)
            if report:
                if self.metrics is not None:
                    self.metrics.record(self.done, total, [(step_label(s), t) for s, t in self.terms], logits)
                self.progress.update(self.done, float(total.detach()), self._probability(logits))
            if out.checkpoint_every and self.done % out.checkpoint_every == 0 and self.done < plan.iterations:
                checkpoint(ctx)
        if self.device.type == "cuda":  # the clock must include the work still queued on the GPU
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - loop_t0
        self.timings["loop_seconds"] = round(seconds, 3)
        self.timings["loop_cpu_seconds"] = round(time.process_time() - loop_cpu0, 3)  # every thread of the process
        self.timings["image_iterations_per_second"] = round((plan.iterations - start) * plan.batch / max(seconds, 1e-9), 3)
        return "completed"

    def iteration(self, ctx: RunContext, it: int, check: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1-5 of the anatomy above; the total loss and the model's logits per image."""
        g, guard, param = self.groups, self.guard, ctx.param
        assert param is not None
        active = [s for s in g.image_transforms if s.active(it)]
        if active:
            with torch.no_grad():
                x = param.image().detach()
                for s in active:
                    self.where = s.step
                    x = s.step.apply(ctx, x)
                    if check and not finite(x):
                        raise guard.fault(ctx, f"{step_label(s.step)} turned the image into NaN or Inf at iteration {it}")
                param.set_image(x)
        total, result, grads = self._fitting_memory(ctx, it, check)
        params = param.parameters()
        with torch.no_grad():
            for s in g.updates:
                if s.active(it):
                    self.where = s.step
                    s.step.update(ctx, params, list(grads))
                    if check and not all(finite(q) for q in param.parameters()):
                        raise guard.fault(ctx, guard.bad_update(it, s.step))
        if check:
            guard.keep(ctx)
        return total, result.logits

    def _fitting_memory(self, ctx: RunContext, it: int, check: bool) -> tuple[torch.Tensor, Any, tuple[torch.Tensor, ...]]:
        """Steps 2-4, again with half as many rows per model pass while a GPU runs out of memory.

        Only with ``performance.max_rows: auto``: the view steps, the model and the backward pass
        are done again (the stored image has not changed yet), in chunks (see ModelAdapter),
        and the chunk size stays for the rest of the run and is recorded in run.json.
        """
        while True:
            try:
                return self._gradients(ctx, it, check)
            except torch.cuda.OutOfMemoryError:
                rows = (ctx.model.max_rows or self.rows) // 2
                if not self.auto_rows or rows < 1:
                    raise
                ctx.model.max_rows = rows
                self.timings["model_rows_per_pass"] = rows
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _gradients(self, ctx: RunContext, it: int, check: bool) -> tuple[torch.Tensor, Any, tuple[torch.Tensor, ...]]:
        """Steps 2-4 of the anatomy above: the total loss, the model's outputs and the gradients."""
        g, guard, param = self.groups, self.guard, ctx.param
        assert param is not None
        image = param.image()
        view = image
        for s in g.view_transforms:
            if s.active(it):
                self.where = s.step
                view = s.step.apply(ctx, view)
                if check and not finite(view):
                    raise guard.fault(ctx, f"{step_label(s.step)} turned the view into NaN or Inf at iteration {it}")
        self.where = "the model"
        self.rows = view.shape[0]
        result = ctx.model(view).per_image(ctx.batch)
        terms = []
        for s in g.objectives:
            if s.active(it):
                self.where = s.step
                terms.append((s.step, s.step.loss(ctx, result, image)))
        self.where = "the backward pass"
        if not terms:
            raise RunFailed(f"no objective is active at iteration {it}: check the objectives' from/until")
        self.terms = terms
        per_image = terms[0][1]
        for _, term in terms[1:]:
            per_image = per_image + term
        total = per_image.sum()
        if check and not bool(torch.isfinite(total)):
            raise guard.fault(ctx, guard.diagnose(it, terms, image, result.logits))
        grads = torch.autograd.grad(total, param.parameters())
        if check and not all(finite(grad) for grad in grads):
            raise guard.fault(ctx, guard.bad_gradient(it, terms))
        return total, result, grads

    def _probability(self, logits: torch.Tensor) -> float | None:
        if self.primary is None:
            return None
        probs = torch.softmax(logits.detach(), dim=1)
        return float(probs.gather(1, self.primary.view(-1, 1)).mean())


def emit(ctx: RunContext, pump: FramePump, iteration: int, logits: torch.Tensor | None) -> None:
    """Queue a frame: the pump copies (on a GPU asynchronously, into pinned memory); the loop moves on."""
    assert ctx.param is not None
    pump.snapshot(iteration, ctx.param.image().detach(), logits.detach() if logits is not None else None)
