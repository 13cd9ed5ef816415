"""Loading a recipe: YAML in, a fully checked :class:`Recipe` out, before any model is loaded.

Every error names the file and line (or the ``--set`` that caused it), the step by index and
name, and the key, says what was expected, and suggests the closest valid name for typos.
"""

from __future__ import annotations

import copy
import os
import json
import math
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ValidationError, create_model

from pipeline_core import regular
from pipeline_core.errors import Location, ModelLoadError, RecipeError, _printable, did_you_mean
from pipeline_core.model import ModelDef, ModelInfo, ModelSpec, _skeleton_layers, _unknown_layer
from pipeline_core.plan import Plan
from pipeline_core.recipe.messages import describe, raise_validation
from pipeline_core.recipe.schedule import ScheduleFields, resolve
from pipeline_core.recipe.sections import MAX_BATCH, RecipeModel
from pipeline_core.recipe.source import PathKey, Source, apply_override, expand_user, parse, read_text
from pipeline_core.registry import Registry
from pipeline_core.schedule import Schedule
from pipeline_core.step import Step, StepKind


@dataclass
class StepSpec:
    index: int
    cls: type[Step]
    params: Any
    schedule: Schedule | None
    raw: dict[str, Any]

    def instantiate(self) -> Step:
        return self.cls(self.params, self.index, self.schedule)


@dataclass
class Recipe:
    """A validated recipe: everything a run needs, with paths absolute and classes resolved."""

    source: Source
    model: RecipeModel
    model_def: ModelDef
    model_spec: ModelSpec
    model_info: ModelInfo
    plan: Plan
    steps: list[StepSpec]
    steps_bound: list[Step]
    #: (url, file) of weights the model will download on its first run, when not cached yet
    download: tuple[str, Path] | None = None
    #: for a model lent from Python: where it came from and how to replay the run (run.json's model.in_memory)
    model_note: dict[str, Any] | None = None
    #: model.ensemble: each member's plugin definition, spec and preprocessing, checked
    ensemble: list[tuple[ModelDef, ModelSpec, ModelInfo]] = field(default_factory=list)
    #: per member of model.ensemble, as ``download``: (url, file) of weights its first run downloads
    ensemble_downloads: list[tuple[str, Path] | None] = field(default_factory=list)

    @property
    def name(self) -> str:
        stem = Path(self.source.file).stem
        # shown by the progress display and used for runs/NAME: never a control character; a
        # replay (RUN/run.json, also given as plain run.json from inside RUN) is named for its folder
        folder = Path(os.path.abspath(self.source.file)).parent.name
        return _printable((folder or "run") if stem == "run" else stem)

    def resolved(self) -> dict[str, Any]:
        """The recipe as plain data, paths absolute, overrides applied: replayable as is."""
        data = self.model.model_dump(mode="json", exclude_none=True)
        data["steps"] = [copy.deepcopy(s.raw) for s in self.steps]
        data["batch"] = self.plan.batch
        # files named relative to the recipe (or to the shell, for --set) must not move with run.json
        if self.model_spec.weights is not None:
            data["model"]["weights"] = str(self.model_spec.weights)
        if isinstance(self.model.model.categories, str) and self.model_spec.categories is not None:
            data["model"]["categories"] = list(self.model_spec.categories)
        return data


# -- steps --------------------------------------------------------------------------------


@cache
def entry_model(step_cls: type[Step]) -> type[BaseModel]:
    """The model of one step entry in a recipe: the step's Params plus schedule keys."""
    bases: tuple[type[BaseModel], ...] = (step_cls.Params,)
    if step_cls.kind.per_iteration:
        bases = (step_cls.Params, ScheduleFields)
    name = "Step_" + "".join(ch if ch.isalnum() else "_" for ch in step_cls.name)
    return create_model(name, __base__=bases, __doc__=step_cls.__doc__)


def _resolve_paths(value: Any, base: Path) -> Any:
    if isinstance(value, str):
        p = expand_user(value)
        return str(p if p.is_absolute() else (base / p))
    if isinstance(value, list):
        return [_resolve_paths(v, base) for v in value]
    return value


def _base_for(source: Source, path: PathKey) -> Path:
    return Path.cwd() if source.overridden(path) is not None else source.base_dir


def _paths_at(source: Source, path: PathKey, value: Any, **where: Any) -> Any:
    """``value``'s paths made absolute from the recipe's folder (the shell's, for an override);
    a path that cannot be expanded names where it was written."""
    try:
        return _resolve_paths(value, _base_for(source, path))
    except RecipeError as exc:
        raise RecipeError(exc.message, source.where(path, **where)) from None


def _check_step(source: Source, registry: Registry, index: int, raw: Any) -> tuple[type[Step], dict, Any]:
    path: PathKey = ("steps", index)
    if not isinstance(raw, dict):
        raise RecipeError(
            f"a step must be a mapping such as '- step: blur', got {type(raw).__name__}",
            source.where(path, step_index=index),
        )
    if "step" not in raw:
        hint = ""
        if len(raw) == 1:
            only = next(iter(raw))
            if str(only) in registry.steps:
                hint = f"; write '- step: {only}' and put its keys beside it"
        raise RecipeError(f"a step needs a 'step' key naming the step{hint}", source.where(path, step_index=index))
    name = raw["step"]
    if not isinstance(name, str):
        raise RecipeError(f"'step' must be a step name, got {name!r}", source.where(path + ("step",), step_index=index))
    try:
        cls = registry.step(name)
    except KeyError as exc:
        raise RecipeError(
            f"{exc.args[0]} (see 'pipeline steps')", source.where(path + ("step",), step_index=index, key="step")
        ) from None
    data = {k: v for k, v in raw.items() if k not in ("step", "label")}
    if "label" in raw:
        _check_label(source, index, name, raw["label"])
    for field_name in getattr(cls, "paths", ()):
        if field_name in data:
            data[field_name] = _paths_at(source, path + (field_name,), data[field_name], step_index=index,
                                         step_name=name, key=field_name)
    model = entry_model(cls)
    try:
        params = model.model_validate(data)
    except ValidationError as exc:
        raise_validation(exc, model, source, path, step=(index, name))
    _check_magnitudes(source, path, params.model_dump(by_alias=True), (index, cls.name))
    return cls, data, params


#: a step's label: a name --set can use in place of the position (no dots, not a number)
LABEL_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def _check_label(source: Source, index: int, name: str, label: Any) -> None:
    if not isinstance(label, str) or not LABEL_PATTERN.fullmatch(label):
        raise RecipeError(f"a step's label must be a short name of letters, digits, '-' and '_' that starts with "
                          f"a letter (--set LABEL.KEY=VALUE uses it), got {label!r}",
                          source.where(("steps", index, "label"), step_index=index, step_name=name, key="label"))
    for other, raw in enumerate(source.data["steps"][:index]):
        if isinstance(raw, dict) and raw.get("label") == label:
            raise RecipeError(f"the label '{label}' is already step {other}'s; labels name one step each",
                              source.where(("steps", index, "label"), step_index=index, step_name=name, key="label"))


#: the largest float32: a parameter beyond it becomes Inf on the device
FLOAT32_MAX = 3.4028234663852886e38
INT64_MAX = 2**63 - 1


def _check_magnitudes(source: Source, path: PathKey, value: Any, step: tuple[int, str] | None,
                      key: tuple[Any, ...] = ()) -> None:
    """No number in a step's parameters that the device cannot hold: a float past float32's
    range (an 'lr: 1e39', octave splits whose sum overflows) or an integer past 64 bits."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_magnitudes(source, path, v, step, key + (k,))
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_magnitudes(source, path, v, step, key + (i,))
        return
    problem = None
    if isinstance(value, float) and math.isfinite(value) and abs(value) > FLOAT32_MAX:
        problem = f"{value:g} is beyond the range of 32-bit floats (at most {FLOAT32_MAX:.4g})"
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
        problem = f"{value} does not fit a 64-bit integer"
    if problem is None:
        return
    dotted = ".".join(str(k) for k in key) or None
    extra = {"step_index": step[0], "step_name": step[1]} if step else {}
    raise RecipeError(problem, source.where(path + key, key=dotted, **extra))


def _step_params(cls: type[Step], params: BaseModel) -> Any:
    own = {n: getattr(params, n) for n in cls.Params.model_fields}
    return cls.Params.model_validate(own)


# -- the model section ----------------------------------------------------------------------


def _model_spec(source: Source, rm: RecipeModel) -> ModelSpec:
    m = rm.model
    weights = None
    if m.weights:
        weights = Path(_paths_at(source, ("model", "weights"), m.weights, key="model.weights"))
        kind = regular.problem(weights)
        if kind:  # a FIFO would make the weights' reader wait for ever
            raise RecipeError(f"the weights {weights} are {kind}, not a regular file; name the weights file itself",
                              source.where(("model", "weights"), key="model.weights"))
        if not weights.is_file():
            raise RecipeError(
                f"no weights file at {weights}", source.where(("model", "weights"), key="model.weights")
            )
    categories = m.categories
    if isinstance(categories, str):
        path = Path(_paths_at(source, ("model", "categories"), categories, key="model.categories"))
        try:
            if not path.is_file() or path.stat().st_size > 16 * 2**20:  # not /dev/zero, not a photo by mistake
                raise OSError
            categories = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError):
            raise RecipeError(
                f"cannot read the class-name file {path}", source.where(("model", "categories"), key="model.categories")
            ) from None
    if categories is not None and not categories:
        raise RecipeError("the list of class names is empty", source.where(("model", "categories"), key="model.categories"))
    _check_magnitudes(source, ("model", "kwargs"), dict(m.kwargs), None, ())
    return ModelSpec(name=m.name, weights=weights, mean=m.mean, std=m.std, size=m.size,
                     categories=categories, kwargs=dict(m.kwargs))


def _model_info(source: Source, registry: Registry, spec: ModelSpec,
                where: Location | None = None, prefix: str = "") -> tuple[ModelDef, ModelInfo]:
    """The model's plugin definition and preprocessing; a problem is one line at ``where`` (the
    model's name by default), each message after ``prefix`` (a member's: ``model.ensemble: ``)."""
    where = where or source.where(("model", "name"), key="model.name")
    try:
        model_def = registry.model(spec.name)
    except KeyError as exc:
        if spec.name.startswith("python:"):  # a run.json of a run made with a model lent from Python
            raise RecipeError(f"model '{spec.name}' was an nn.Module passed from Python: replay the run from "
                              "Python with pipeline_core.run(RUN_JSON, model=module), or give --model", where) from None
        raise RecipeError(f"{prefix}{exc.args[0]} (see 'pipeline models')", where) from None
    try:
        info = model_def.describe(spec)
    except ModelLoadError as exc:
        raise RecipeError(prefix + exc.message, where) from None
    except Exception as exc:  # noqa: BLE001 - a plugin's metadata failed
        raise RecipeError(f"{prefix}model '{spec.name}' could not describe itself: {exc}", where) from None
    if spec.weights is not None and spec.categories is None and len(info.categories) == 0:
        raise RecipeError(f"{prefix}give {'categories=' if prefix else 'model.categories'} for a local model", where)
    return model_def, info


def _ensemble(source: Source, registry: Registry, rm: RecipeModel,
              info: ModelInfo) -> list[tuple[ModelDef, ModelSpec, ModelInfo]]:
    """``model.ensemble``: each member read as ``--model`` reads its argument (paths relative to
    the recipe, or to the shell for an override), found in the registry and checked to have the
    main model's number of classes. Each member is written back in full (absolute weights, its
    preprocessing, its class names as a list), so run.json replays it from any folder."""
    from pipeline_core.recipe.model_arg import RUN_KEYS, parse_model_arg

    members = []
    for i, text in enumerate(rm.model.ensemble):
        path: PathKey = ("model", "ensemble", i)
        where = source.where(path, key="model.ensemble")
        try:
            member = parse_model_arg(text, _base_for(source, ("model", "ensemble")), RUN_KEYS)
        except RecipeError as exc:
            raise RecipeError(exc.message.replace("--model ", "model.ensemble: ", 1), where) from None
        model_def, member_info = _model_info(source, registry, member.spec(), where, prefix="model.ensemble: ")
        if len(member_info.categories) != len(info.categories):
            raise RecipeError(f"model.ensemble: '{text}' has {len(member_info.categories)} classes and the model "
                              f"{len(info.categories)}; an ensemble averages logits of the same classes", where)
        members.append((model_def, member.spec(), member_info))
        rm.model.ensemble[i] = _member_text(member)
    return members


def _member_text(member: Any) -> str:
    """A member as ``--model`` reads it, every path absolute and every list in YAML's flow style."""
    from pipeline_core.recipe.model_arg import quoted_path

    parts = [member.name]
    if member.weights is not None:
        parts.append(f"weights={quoted_path(member.weights)}")
    for key in ("mean", "std"):
        value = getattr(member, key)
        if value is not None:
            parts.append(f"{key}={json.dumps(list(value))}")
    if member.size is not None:
        parts.append(f"size={member.size}")
    if member.categories is not None:
        parts.append(f"categories={json.dumps(list(member.categories))}")
    return ",".join(parts)


#: the plugin whose models take torchvision's ImageNet weights through its download cache
_TORCHVISION_PLUGIN = "pipeline_plugins.torchvision_models"


def pending_download(registry: Registry, model_def: ModelDef, spec: ModelSpec) -> tuple[str, Path] | None:
    """(url, file) when building this model will download its weights: a torchvision model
    without ``model.weights`` whose ImageNet weights are not in torch's cache yet."""
    entry = registry.models.get(model_def.name)
    if spec.weights is not None or entry is None or entry.plugin != _TORCHVISION_PLUGIN:
        return None
    try:
        # the plugin's own table of torchvision's weights: no import of torch to ask
        from pipeline_plugins.torchvision_models import pending_download as torchvision_download

        return torchvision_download(model_def.name)
    except Exception:  # noqa: BLE001 - not a torchvision name after all, or no weights: nothing to say
        return None


# -- the whole recipe -----------------------------------------------------------------------


def load_source(path: str | Path, overrides: Sequence[str] = ()) -> Source:
    path = Path(path)
    text = read_text(path)
    shown = str(path)
    if not text.strip():
        raise RecipeError("the recipe is empty; see recipes/ for examples", Location(file=shown))
    source = parse(text, shown, path.resolve().parent)
    if path.suffix == ".json" and isinstance(source.data, dict) and "recipe" in source.data:
        # a run record: replay the recipe it holds (paths in it are absolute already)
        source.data = source.data["recipe"]
        source.lines = {k[1:]: v for k, v in source.lines.items() if k[:1] == ("recipe",)}
    if not isinstance(source.data, dict):
        kind = "nothing" if source.data is None else f"a {type(source.data).__name__}"
        raise RecipeError(
            f"a recipe must be a mapping of keys (iterations, model, steps, ...), this file holds {kind}",
            Location(file=shown, line=1),
        )
    for text_override in overrides:
        apply_override(source, text_override)
    return source


def load_recipe(path: str | Path, registry: Registry, overrides: Sequence[str] = ()) -> Recipe:
    return validate(load_source(path, overrides), registry)


def validate(source: Source, registry: Registry) -> Recipe:
    data = source.data
    for key in data:
        if not isinstance(key, str):
            raise RecipeError(f"keys must be names, got {key!r}", source.where((key,)))
    try:
        rm = RecipeModel.model_validate(data)
    except ValidationError as exc:
        raise_validation(exc, RecipeModel, source, ())

    checked = [_check_step(source, registry, i, raw) for i, raw in enumerate(rm.steps)]
    spec = _model_spec(source, rm)
    model_def, info = _model_info(source, registry, spec)

    batch = rm.batch or _batch_hint(checked) or 1
    if batch > MAX_BATCH:
        raise RecipeError(f"a batch of {batch} images is more than {MAX_BATCH}", source.where(("batch",), key="batch"))
    plan = Plan(iterations=rm.iterations, batch=batch, categories=list(info.categories), model_name=spec.name,
                model_size=info.size, seed=rm.seed, base_dir=source.base_dir)

    specs: list[StepSpec] = []
    bound: list[Step] = []
    skeleton: list[str] | None = None  # the model's layer paths, found once if a step names a layer
    kinds_seen: dict[StepKind, int] = {}
    for index, (cls, data_i, entry) in enumerate(checked):
        where = {"step_index": index, "step_name": cls.name}
        schedule = None
        if cls.kind.per_iteration:
            try:
                schedule = resolve(entry, rm.iterations)
            except ValueError as exc:
                loc = source.where(("steps", index), **where)
                raise RecipeError(_given(source, str(exc), loc, ("iterations",)), loc) from None
        params = _step_params(cls, entry)
        step = cls(params, index, schedule)
        try:
            step.bind(plan)
            for head in sorted(step.heads):
                _check_head(model_def, info, head)
                member_layer = bool(rm.model.ensemble) and head.startswith("layer:ensemble.")  # checked once built
                if head.startswith("layer:") and head not in model_def.heads and not member_layer:  # found offline
                    if skeleton is None:
                        skeleton = _skeleton_layers(model_def, spec) or []
                    if skeleton and head[len("layer:"):] not in skeleton:
                        key = step.head_key(head) if hasattr(step, "head_key") else "head"
                        raise RecipeError(_unknown_layer(spec.name, head[len("layer:"):], skeleton), Location(key=key))
                if head.startswith("layer:") and cls.kind is StepKind.OBJECTIVE and step.targets():
                    raise RecipeError(
                        f"'{head}' is a layer's activations, but {cls.name} aims at classes and reads class "
                        f"scores: use head: logits" + (f" or one of the model's classifier heads "
                                                      f"({', '.join(model_def.heads)})" if model_def.heads else ""),
                        Location(key="head"))
        except RecipeError as exc:
            key = exc.location.key
            path = ("steps", index) + ((key,) if key else ())
            loc = source.where(path, key=key, **where)
            raise RecipeError(_given(source, exc.message, loc, ("iterations",), ("batch",), ("model",)), loc) from None
        kinds_seen[cls.kind] = kinds_seen.get(cls.kind, 0) + 1
        raw = {"step": cls.name, **data_i}
        if "label" in rm.steps[index]:  # kept in run.json, so a replay's --set can name it too
            raw["label"] = rm.steps[index]["label"]
        specs.append(StepSpec(index, cls, params, schedule, raw))
        bound.append(step)

    _check_kinds(source, kinds_seen, specs)
    _check_coverage(source, specs, rm.iterations)
    _check_frames(source, rm, batch)
    _check_writers(source, registry, rm)
    download = pending_download(registry, model_def, spec)
    ensemble = _ensemble(source, registry, rm, info)
    return Recipe(source, rm, model_def, spec, info, plan, specs, bound, download, ensemble=ensemble,
                  ensemble_downloads=[pending_download(registry, d, s) for d, s, _ in ensemble])


def _given(source: Source, message: str, loc: Location, *causes: PathKey) -> str:
    """``message``, plus the overrides of run-wide values (``--set iterations=2``) it depends on,
    when the location names the recipe's line: the problem may be the override's, not the line's."""
    if loc.file != source.file:
        return message
    labels = []
    for key, label in source.overrides.items():
        if any(key[:len(c)] == c for c in causes) and label not in labels:
            labels.append(label)
    return f"{message} (with {', '.join(labels)})" if labels else message


def _check_coverage(source: Source, specs: list[StepSpec], iterations: int) -> None:
    """Every iteration has an objective: the loop needs a loss to descend on."""
    objectives = [s for s in specs if s.cls.kind is StepKind.OBJECTIVE and s.schedule is not None]
    covered = bytearray(iterations)
    for s in objectives:
        window = range(s.schedule.start, min(s.schedule.stop, iterations), s.schedule.every)
        covered[window.start:window.stop:window.step] = b"\x01" * len(window)
    first = covered.find(0)
    if first < 0:
        return
    if len(objectives) == 1:
        only = objectives[0]
        loc = source.where(("steps", only.index), step_index=only.index, step_name=only.cls.name)
        whose = "its from/until/every leave"
    else:
        loc = source.where(("steps",), key="steps")
        whose = "the from/until/every of all the objectives together leave"
    raise RecipeError(_given(source, f"no objective is active at iteration {first}: {whose} it uncovered, and "
                                     "every iteration needs a loss; widen a window or add an objective", loc,
                             ("iterations",)), loc)


#: the longest side of a video frame or grid.png the encoders and viewers take
MAX_COMPOSED_SIDE = 16384


def _check_frames(source: Source, rm: RecipeModel, batch: int) -> None:
    """The video frame and grid.png a run composes stay within :data:`MAX_COMPOSED_SIDE`, however
    large the image grows: a grid of too many columns or rows would kill the encoder mid-run."""
    from pipeline_core.output.frames import MAX_FRAME_SIDE, MAX_GRID_SIDE, auto_tile, columns_for

    out = rm.output
    checks = [(False, None, MAX_GRID_SIDE, "grid.png")]
    if out.video:
        checks.insert(0, (out.logits_panel, out.tile, MAX_FRAME_SIDE, "each video frame"))
    pad = 2
    for panel, tile, budget, what in checks:
        cols = out.columns or columns_for(batch, panel)
        rows = math.ceil(batch / cols)
        side = tile or auto_tile(batch, 1 << 30, panel, out.columns, budget=budget) or budget
        cell = side * (2 if panel else 1) + (pad if panel else 0)
        width, height = cols * cell + (cols + 1) * pad, rows * side + (rows + 1) * pad
        if max(width, height) <= MAX_COMPOSED_SIDE:
            continue
        if out.columns:
            key, path = "output.columns", ("output", "columns")
            fix = "give fewer output.columns" if width > height else "give more output.columns"
        elif tile:
            key, path, fix = "output.tile", ("output", "tile"), "give a smaller output.tile"
        else:
            key, path, fix = "batch", ("batch",), "give a smaller batch"
        raise RecipeError(f"{what} would be {width}x{height} px (batch {batch}, {cols} columns of {side} px "
                          f"tiles), more than the {MAX_COMPOSED_SIDE} px the video encoder and image viewers take; "
                          f"{fix}", source.where(path, key=key))


def _check_writers(source: Source, registry: Registry, rm: RecipeModel) -> None:
    """Each ``output.writers`` entry names a registered writer and gives it valid options."""
    for index, options in enumerate(rm.output.writers):
        path: PathKey = ("output", "writers", index)
        name = options.get("writer")
        if not isinstance(name, str):
            raise RecipeError("an output writer entry needs a 'writer' key naming it, such as '- writer: gif'",
                              source.where(path, key=f"output.writers.{index}"))
        try:
            cls = registry.writer(name)
        except KeyError as exc:
            raise RecipeError(f"{exc.args[0]} (see 'pipeline plugins')",
                              source.where(path + ("writer",), key=f"output.writers.{index}.writer")) from None
        params_model = getattr(cls, "Params", None)
        if params_model is None:
            continue
        try:
            params_model.model_validate({k: v for k, v in options.items() if k != "writer"})
        except ValidationError as exc:
            err = exc.errors()[0]
            key, msg = describe(err, params_model)
            full = f"output.writers.{index}" + (f".{key}" if key else "")
            raise RecipeError(f"writer '{name}': {msg}", source.where(path + tuple(err["loc"]), key=full)) from None


def _batch_hint(checked: list[tuple[type[Step], dict, Any]]) -> int | None:
    hints = []
    for cls, _data, entry in checked:
        n = cls.batch_hint(_step_params(cls, entry))
        if n:
            hints.append(n)
    return max(hints) if hints else None


def _check_head(model_def: ModelDef, info: ModelInfo, head: str) -> None:
    if head == "logits" or head.startswith("layer:"):
        return
    if head not in model_def.heads:
        available = ", ".join(["logits", *model_def.heads]) or "logits"
        raise RecipeError(
            f"model '{model_def.name}' has no head '{head}' (available: {available}){did_you_mean(head, model_def.heads)}",
            Location(key="head"),
        )
    need = model_def.heads[head].size
    if need and info.size != need:
        raise RecipeError(
            f"the '{head}' head of {model_def.name} works only at {need} px but the model sees {info.size} px; "
            f"set model.size: {need}",
            Location(key="head"),
        )


def _check_kinds(source: Source, seen: dict[StepKind, int], specs: list[StepSpec]) -> None:
    if not seen.get(StepKind.INIT):
        raise RecipeError("the recipe has no init step: start with 'init-noise' or 'init-image'",
                          source.where(("steps",), key="steps"))
    if not seen.get(StepKind.OBJECTIVE):
        raise RecipeError("the recipe has no objective step (e.g. 'L1-loss' or 'cross-entropy')",
                          source.where(("steps",), key="steps"))
    if not seen.get(StepKind.UPDATE):
        raise RecipeError("the recipe has no update step (e.g. 'gradient-step', 'sign-step' or 'adam')",
                          source.where(("steps",), key="steps"))
    if seen.get(StepKind.PARAM, 0) > 1:
        raise RecipeError("a recipe can have only one image parameterisation step", source.where(("steps",), key="steps"))
    order = [s.cls.kind for s in specs]
    first_loop = next((i for i, k in enumerate(order) if k.per_iteration), len(order))
    for s in specs[first_loop:]:
        if s.cls.kind in (StepKind.INIT, StepKind.PARAM):
            raise RecipeError(
                f"'{s.cls.name}' runs once before the loop; move it above the per-iteration steps",
                source.where(("steps", s.index), step_index=s.index, step_name=s.cls.name),
            )


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)
