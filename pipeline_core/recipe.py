"""Loading a recipe: YAML in, a fully checked :class:`Recipe` out, before any model is loaded.

Every error names the file and line (or the ``--set`` that caused it), the step by index and
name, and the key, says what was expected, and suggests the closest valid name for typos.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ValidationError, create_model

from .errors import Location, ModelLoadError, RecipeError, did_you_mean
from .model import ModelDef, ModelInfo, ModelSpec
from .plan import Plan
from .recipe_model import MAX_BATCH, RecipeModel
from .registry import Registry
from .schedule import Schedule, ScheduleFields, resolve
from .step import Step, StepKind
from .yaml_source import PathKey, Source, apply_override, parse, read_text


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

    @property
    def name(self) -> str:
        stem = Path(self.source.file).stem
        return Path(self.source.file).parent.name if stem == "run" else stem

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


# -- pydantic errors -> one line ----------------------------------------------------------


def _fields_of(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _submodel(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel]:
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields:
            break
        match = next((f for n, f in fields.items() if part in (n, f.alias)), None)
        ann = getattr(match, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            current = ann
        else:
            break
    return current


_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "str": "a text", "bool": "true or false", "none": "null",
    "list": "a list", "dict": "a mapping", "tuple": "a list",
}


def _is_tag(part: Any) -> bool:
    """A union member's label in a pydantic error location (``int``, ``tuple[int, int]``), not a key."""
    return isinstance(part, str) and (part in _TYPE_WORDS or "[" in part)


def _readable(tag: str) -> str:
    base, _, inner = tag.partition("[")
    if base == "tuple" and inner:
        depth, parts = 0, 1
        for ch in inner[:-1]:
            depth += ch == "["
            depth -= ch == "]"
            parts += ch == "," and depth == 0
        return f"a list of {parts} values"
    if base == "literal" and inner:
        return "one of " + inner[:-1]
    return _TYPE_WORDS.get(base, tag)


def _clean(loc: Sequence[Any]) -> list[Any]:
    return [p for p in loc if not (isinstance(p, str) and p.startswith(("function-", "union[")))]


def _union_at(loc: list[Any], errors: Sequence[dict[str, Any]]) -> int | None:
    """Where in ``loc`` a union member's label sits: a union fails once per member, so the
    same place carries two or more different labels among the errors."""
    for i, part in enumerate(loc):
        if not _is_tag(part):
            continue
        labels = {_clean(e["loc"])[i] for e in errors
                  if len(_clean(e["loc"])) > i and _clean(e["loc"])[:i] == loc[:i]}
        if len(labels) > 1:
            return i
    return None


def _describe(err: dict[str, Any], model: type[BaseModel],
              errors: Sequence[dict[str, Any]] | None = None) -> tuple[str, str]:
    """(key, message) for the first pydantic error; a union's alternatives are named together."""
    loc = _clean(err["loc"])
    tag_at = _union_at(loc, errors or [err])
    if tag_at is not None:
        prefix = loc[:tag_at]
        members: list[str] = []
        given: Any = err.get("input")
        shortest = len(loc)
        for other in errors or [err]:
            oloc = _clean(other["loc"])
            if oloc[:tag_at] == prefix and len(oloc) > tag_at and _is_tag(oloc[tag_at]):
                if _readable(oloc[tag_at]) not in members:
                    members.append(_readable(oloc[tag_at]))
                if len(oloc) < shortest:
                    shortest, given = len(oloc), other.get("input")
        key = ".".join(str(p) for p in prefix)
        choices = members[0] if len(members) == 1 else ", ".join(members[:-1]) + " or " + members[-1]
        return key, f"expected {choices}, got {given!r}"
    key = ".".join(str(p) for p in loc) if loc else ""
    if err["type"] == "extra_forbidden":
        parent = _submodel(model, loc[:-1])
        hint = did_you_mean(str(loc[-1]), _fields_of(parent))
        valid = ", ".join(_fields_of(parent))
        return key, f"unknown key{hint}" + ("" if hint else f" (valid keys: {valid})")
    if err["type"] == "missing":
        if loc and isinstance(loc[-1], int):  # a fixed-length list one item short
            return ".".join(str(p) for p in loc[:-1]), f"too few values (got {err.get('input')!r})"
        return key, "this key is required"
    if err["type"] in ("model_type", "dict_type", "model_attributes_type"):
        return key, f"expected a mapping of keys, got {err.get('input')!r}"
    if err["type"] == "finite_number":
        return key, f"expected a finite number, got {err.get('input')!r}"
    msg = err["msg"].replace("Value error, ", "")
    given = err.get("input")
    if not isinstance(given, (dict, list)) and given is not None and "got " not in msg and repr(given) not in msg:
        msg += f" (got {given!r})"
    return key, msg


def _raise_validation(exc: ValidationError, model: type[BaseModel], source: Source, prefix: PathKey,
                      step: tuple[int, str] | None = None) -> None:
    errors = exc.errors()
    err = errors[0]
    key, msg = _describe(err, model, errors)
    loc = _clean(err["loc"])
    at = _union_at(loc, errors)
    path = prefix + tuple(loc[:at] if at is not None else loc)
    extra = {"step_index": step[0], "step_name": step[1]} if step else {}
    raise RecipeError(msg, source.where(path, key=key or None, **extra)) from None


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
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (base / p))
    if isinstance(value, list):
        return [_resolve_paths(v, base) for v in value]
    return value


def _base_for(source: Source, path: PathKey) -> Path:
    return Path.cwd() if source.overridden(path) is not None else source.base_dir


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
    data = {k: v for k, v in raw.items() if k != "step"}
    for field_name in getattr(cls, "paths", ()):
        if field_name in data:
            data[field_name] = _resolve_paths(data[field_name], _base_for(source, path + (field_name,)))
    model = entry_model(cls)
    try:
        params = model.model_validate(data)
    except ValidationError as exc:
        _raise_validation(exc, model, source, path, step=(index, name))
    return cls, data, params


def _step_params(cls: type[Step], params: BaseModel) -> Any:
    own = {n: getattr(params, n) for n in cls.Params.model_fields}
    return cls.Params.model_validate(own)


# -- the model section ----------------------------------------------------------------------


def _model_spec(source: Source, rm: RecipeModel) -> ModelSpec:
    m = rm.model
    weights = None
    if m.weights:
        weights = Path(_resolve_paths(m.weights, _base_for(source, ("model", "weights"))))
        if not weights.is_file():
            raise RecipeError(
                f"no weights file at {weights}", source.where(("model", "weights"), key="model.weights")
            )
    categories = m.categories
    if isinstance(categories, str):
        path = Path(_resolve_paths(categories, _base_for(source, ("model", "categories"))))
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
    return ModelSpec(name=m.name, weights=weights, mean=m.mean, std=m.std, size=m.size,
                     categories=categories, kwargs=dict(m.kwargs))


def _model_info(source: Source, registry: Registry, spec: ModelSpec) -> tuple[ModelDef, ModelInfo]:
    where = source.where(("model", "name"), key="model.name")
    try:
        model_def = registry.model(spec.name)
    except KeyError as exc:
        raise RecipeError(f"{exc.args[0]} (see 'pipeline models')", where) from None
    try:
        info = model_def.describe(spec)
    except ModelLoadError as exc:
        raise RecipeError(exc.message, where) from None
    except Exception as exc:  # noqa: BLE001 - a plugin's metadata failed
        raise RecipeError(f"model '{spec.name}' could not describe itself: {exc}", where) from None
    if spec.weights is not None and spec.categories is None and len(info.categories) == 0:
        raise RecipeError("give model.categories for a local model", where)
    return model_def, info


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
        _raise_validation(exc, RecipeModel, source, ())

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
    kinds_seen: dict[StepKind, int] = {}
    for index, (cls, data_i, entry) in enumerate(checked):
        where = {"step_index": index, "step_name": cls.name}
        schedule = None
        if cls.kind.per_iteration:
            try:
                schedule = resolve(entry, rm.iterations)
            except ValueError as exc:
                raise RecipeError(str(exc), source.where(("steps", index), **where)) from None
        params = _step_params(cls, entry)
        step = cls(params, index, schedule)
        try:
            step.bind(plan)
            for head in step.heads:
                _check_head(model_def, info, head)
        except RecipeError as exc:
            key = exc.location.key
            path = ("steps", index) + ((key,) if key else ())
            raise RecipeError(exc.message, source.where(path, key=key, **where)) from None
        kinds_seen[cls.kind] = kinds_seen.get(cls.kind, 0) + 1
        raw = {"step": cls.name, **data_i}
        specs.append(StepSpec(index, cls, params, schedule, raw))
        bound.append(step)

    _check_kinds(source, kinds_seen, specs)
    _check_writers(source, registry, rm)
    return Recipe(source, rm, model_def, spec, info, plan, specs, bound)


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
            key, msg = _describe(err, params_model)
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
