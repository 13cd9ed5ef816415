"""From a sweep file to jobs and batches: which settings share a run, and where it goes.

A job is one image: one value of every axis. Jobs that differ only in *per-image* values (the
``target`` of a class objective, which is a per-image list in a recipe) share a batch: the
batch's run gets the list of their targets and ``batch`` set to its length. Jobs that differ
in a *scalar* setting (seed, lr, iterations: one value for the whole run) go to different
batches. Without a per-image axis each setting is one run of the recipe's own batch, and each
of its images is a job.

Every batch's run folder is named for what it holds, with a short hash of the resolved recipe
and the batch's overrides (``runs/seed-0_target-0-9_3f9a1c20``): a folder already holding a
finished run of exactly that batch is skipped, whichever sweep made it, so a big sweep run in
pieces (``--axis target=0-9``, then ``10-19``) and later whole reuses the pieces' batches
when the pieces' ranges are multiples of the batch size. The plan depends on nothing but the
files and options, never on the rank or the number of ranks: every rank computes the same one.

Every batch runs at its setting's seed (the recipe's, or the value of a ``seed`` axis), not
at one derived from the batch: a one-batch sweep is then exactly ``pipeline run`` with those
settings, and a batch's folder and bytes depend only on what it holds, which is what lets
pieces of a sweep be reused by the whole. A class's image depends on its setting, the batch
size and its place in its batch, and never on which rank, or how many, ran it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline_core.errors import Location, RecipeError
from pipeline_core.objectives import ClassObjective
from pipeline_core.recipe.loader import Recipe, load_recipe
from pipeline_core.recipe.sections import MAX_BATCH
from pipeline_core.recipe.source import Override, step_path
from pipeline_core.registry import Registry
from pipeline_core.sweep.contents import read_files
from pipeline_core.sweep.spec import MAX_JOBS, Axis, SweepSpec, range_values


#: a sweep of more jobs than this is refused unless --max-jobs allows it (it would take days)
LARGE_SWEEP = 100_000


@dataclass
class ResolvedAxis:
    key: str
    values: list[Any]  #: as the sweep gives them (class names stay names)
    per_image: bool
    short: str
    classes: list[int] | None = None  #: for a target axis, the class index of each value
    origin: str = ""  #: where the values were given, for errors: "sweep.yaml:4 axes.seed" or "--axis seed=[1]"

    def label(self, value: Any = None) -> str:
        if self.origin.startswith("--axis"):
            return self.origin if value is None else f"{self.origin} (value {_text(value)})"
        return f"{self.origin}" if value is None else f"{self.origin}={_text(value)}"


@dataclass
class Job:
    index: int
    id: str
    values: dict[str, Any]
    batch: int = -1  #: index of its batch
    position: int = 0  #: its image's place in the batch
    targets: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Batch:
    index: int
    folder: str  #: relative to the sweep folder
    overrides: list[str]  #: applied to the recipe after --set
    jobs: list[Job]
    size: int  #: images in the run


@dataclass
class SweepPlan:
    spec: SweepSpec
    base: Recipe
    axes: list[ResolvedAxis]
    jobs: list[Job]
    batches: list[Batch]
    batch_size: int | None  #: images per batch of a per-image axis (None: the recipe's own batch)

    @property
    def total(self) -> int:
        return len(self.jobs)


def _target_step(base: Recipe, axis: Axis) -> bool:
    # a step named by label or name (L1-loss.target) is the same step as its position
    parts = step_path(base.source.data, axis.parts, axis.where.file or axis.key)
    if len(parts) != 3 or parts[0] != "steps" or parts[2] != "target" or not isinstance(parts[1], int):
        return False
    return parts[1] < len(base.steps) and issubclass(base.steps[parts[1]].cls, ClassObjective)


def resolve_axes(spec: SweepSpec, base: Recipe) -> list[ResolvedAxis]:
    out = []
    n_classes = len(base.plan.categories)
    same: dict[str, str] = {}  # a step named two ways (adam.lr, steps.4.lr) is one setting, not two axes
    for axis in spec.axes:
        canonical = ".".join(map(str, step_path(base.source.data, axis.parts, axis.where.file or axis.key)))
        if canonical in same:
            raise RecipeError(f"the axes '{same[canonical]}' and '{axis.key}' both set {canonical}; keep one "
                              "(--axis replaces an axis given by the same key)", axis.where)
        same[canonical] = axis.key
        per_image = _target_step(base, axis)
        values = axis.raw
        if isinstance(values, str):  # 'all' or a range: a class objective's target only
            if not per_image:
                raise RecipeError(f"'{values}' as the values of '{axis.key}': all and ranges are for a class "
                                  "objective's target (steps.N.target); give a list", axis.where)
            values = list(range(n_classes)) if values.lower() == "all" else range_values(values)
            assert values is not None
            if values and values[-1] >= n_classes:
                raise RecipeError(f"the axis '{axis.key}' reaches class {values[-1]}, but {base.model_spec.name} "
                                  f"has classes 0..{n_classes - 1}", axis.where)
        classes = None
        if per_image:
            classes = []
            for value in values:
                if isinstance(value, (list, dict)):
                    raise RecipeError(f"the axis '{axis.key}' holds {value!r}: each value is one class, a name "
                                      "or an index", axis.where)
                try:
                    classes.append(base.plan.class_index(value))
                except RecipeError as exc:
                    raise RecipeError(f"the axis '{axis.key}': {exc.message}", axis.where) from None
        given = axis.where.file or ""
        if given.startswith("--axis"):
            origin = given
        else:
            origin = f"{spec.file}:{axis.where.line} axes.{axis.key}" if axis.where.line else f"{spec.file} axes.{axis.key}"
        out.append(ResolvedAxis(axis.key, list(values), per_image, axis.short, classes, origin))
    shorts = [a.short for a in out]
    for a in out:
        if shorts.count(a.short) > 1:
            a.short = a.key
    return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"


def fingerprint(base: Recipe, overrides: Sequence[str]) -> str:
    """A hash of the recipe a batch runs (the device aside: the same batch on another card is the
    same batch) and of the contents of every file it reads (the weights, the photos: one
    overwritten in place makes another batch), so a folder holding a finished run of it can be
    trusted and skipped."""
    resolved = base.resolved()
    resolved.pop("device", None)
    read = {**read_files(resolved), **read_files({"overrides": [_override_value(o) for o in overrides]})}
    text = json.dumps({"recipe": resolved, "overrides": list(overrides), "contents": read}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _override_value(override: str) -> Any:
    """The value of a KEY=VALUE override, with a relative path made absolute as --set reads it."""
    text = str(override).partition("=")[2]
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, str) and value and not os.path.isabs(value) and os.path.isfile(value):
        value = os.path.abspath(value)
    return value


def make_plan(spec: SweepSpec, registry: Registry, sets: Sequence[str] = (), batch_size: int | None = None,
              check: bool = True, max_jobs: int = LARGE_SWEEP,
              announce: Callable[[int], None] | None = None) -> SweepPlan:
    """Every job and batch of the sweep. ``batch_size`` is the images per run of the per-image axes
    (a number from the sweep file, or what ``batch: auto`` settled on); ``check`` loads the first
    and last batch of every setting, so a bad value fails now, not hours into the sweep.

    The number of jobs is known from the axes alone: ``announce`` hears it before anything is
    built, and a sweep of more than ``max_jobs`` (``--max-jobs``) is refused then, before its
    jobs take the memory, since it would not finish in any time a user waits for."""
    base = load_recipe(spec.recipe, registry, list(sets))
    axes = resolve_axes(spec, base)
    scalar = [a for a in axes if not a.per_image]
    per_image = [a for a in axes if a.per_image]
    n = 1
    for a in axes:
        n *= len(a.values)
    if announce is not None:
        announce(n)
    if n > MAX_JOBS:
        raise RecipeError(f"the sweep has {n} jobs, more than {MAX_JOBS}; split it with --axis",
                          Location(file=str(spec.file)))
    if n > max_jobs:
        raise RecipeError(f"the sweep has {n} jobs, more than --max-jobs {max_jobs} (at a few seconds a job on a "
                          f"GPU that is days of work); run a part of it with --axis (such as --axis target=0-99), "
                          f"or pass --max-jobs {n} to run all of it", Location(file=str(spec.file)))
    size = None
    if per_image:
        size = batch_size if isinstance(batch_size, int) else (spec.batch if isinstance(spec.batch, int) else 1)
        size = max(1, min(size, MAX_BATCH))
    jobs: list[Job] = []
    batches: list[Batch] = []
    for setting in itertools.product(*[a.values for a in scalar]):
        fixed = dict(zip([a.key for a in scalar], setting))
        set_overrides = [Override(f"{a.key}={json.dumps(v)}", a.label(v)) for a, v in zip(scalar, setting)]
        if per_image:
            combos = list(itertools.product(*[list(zip(a.values, a.classes or [])) for a in per_image]))
            chunks = [combos[i:i + size] for i in range(0, len(combos), size)]  # type: ignore[misc]
        else:
            chunks = [None]
        for chunk in chunks:
            overrides = list(set_overrides)
            values_per_image: list[dict[str, Any]]
            if chunk is None:
                count = base.plan.batch
                values_per_image = [dict(fixed) for _ in range(count)]
            else:
                count = len(chunk)
                for a_i, a in enumerate(per_image):
                    classes = [item[a_i][1] for item in chunk]
                    overrides.append(Override(f"{a.key}={json.dumps(classes)}", a.label()))
                overrides.append(Override(f"batch={count}", f"{spec.file} batch"))
                values_per_image = [{**fixed, **{a.key: item[a_i][0] for a_i, a in enumerate(per_image)}}
                                    for item in chunk]
            digest = fingerprint(base, overrides)[:8]
            label = "_".join(f"{_slug(a.short)}-{_slug(_text(fixed[a.key]))}" for a in scalar)
            if chunk is not None:
                first, last = chunk[0], chunk[-1]
                span = "_".join(f"{_slug(a.short)}-{_slug(_text(first[i][0]))}"
                                + (f"-{_slug(_text(last[i][0]))}" if first[i] != last[i] else "")
                                for i, a in enumerate(per_image))
                label = f"{label}_{span}" if label else span
            folder = f"runs/{label[:80] or 'run'}_{digest}"
            batch = Batch(len(batches), folder, overrides, [], count)
            for pos, values in enumerate(values_per_image):
                job = Job(len(jobs), _job_id(axes, values, pos if chunk is None and count > 1 else None), values,
                          batch.index, pos)
                if chunk is not None:
                    job.targets = [{"index": chunk[pos][a_i][1], "name": base.plan.class_name(chunk[pos][a_i][1])}
                                   for a_i, a in enumerate(per_image)]
                batch.jobs.append(job)
                jobs.append(job)
            batches.append(batch)
    plan = SweepPlan(spec, base, axes, jobs, batches, size)
    if check:
        check_batches(plan, registry, sets)
    return plan


def _job_id(axes: list[ResolvedAxis], values: dict[str, Any], image: int | None) -> str:
    text = ",".join(f"{a.short}={_text(values[a.key])}" for a in axes)
    if image is not None:
        text = f"{text}#{image}" if text else f"#{image}"
    return text or "#0"


def check_batches(plan: SweepPlan, registry: Registry, sets: Sequence[str]) -> None:
    """Load the first and last batch of each setting (the others differ from them only in which
    classes they hold, already checked), and take the targets of jobs without a target axis."""
    by_setting: dict[tuple, list[Batch]] = {}
    for b in plan.batches:
        key = tuple(o for o in b.overrides if not o.startswith(("batch=",)) and not _is_per_image(plan, o))
        by_setting.setdefault(key, []).append(b)
    for group in by_setting.values():
        for b in {id(group[0]): group[0], id(group[-1]): group[-1]}.values():
            recipe = load_batch(plan, b, registry, sets)
            if not any(a.per_image for a in plan.axes):
                from pipeline_core.run.loop import StepGroups

                targets = StepGroups(recipe).targets(recipe.plan.batch)
                for job in b.jobs:
                    job.targets = [{"index": t["index"], "name": t["name"]} for t in targets[job.position]]
    if not any(a.per_image for a in plan.axes):
        for group in by_setting.values():
            for b in group:
                if b.jobs and not b.jobs[0].targets:
                    ref = group[0]
                    for job, other in zip(b.jobs, ref.jobs):
                        job.targets = list(other.targets)


def _is_per_image(plan: SweepPlan, override: str) -> bool:
    return any(a.per_image and override.startswith(a.key + "=") for a in plan.axes)


def load_batch(plan: SweepPlan, batch: Batch, registry: Registry, sets: Sequence[str]) -> Recipe:
    return load_recipe(plan.spec.recipe, registry, [*sets, *batch.overrides])


def batch_dir(sweep_dir: Path, batch: Batch) -> Path:
    """The batch's run folder inside the sweep folder; OutputError if the way there passes a link."""
    from pipeline_core.run.confine import inside

    return inside(sweep_dir, batch.folder, f"the batch folder {sweep_dir / batch.folder}")
