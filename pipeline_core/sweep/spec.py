"""The sweep file: a recipe, axes and a batch size, read with the line of every value.

::

    name: atlas                      # optional (a plain name: runs/NAME); the file's stem otherwise
    recipe: atlas_recipe.yaml        # relative to this file
    axes:
      steps.3.target: all            # every class of the model; or 0-99, or [goldfish, 7]
      seed: [0, 1]
    batch: 50                        # images per run, or auto (fitted to the device's memory)

Axis keys are dotted paths as ``--set`` takes them. A class objective's ``target`` takes, beside
a list, ``all`` or ranges of class indices (``0-99``, ``0-9,500-509``); that text is resolved
against the model's classes by :mod:`.plan`, which knows the model. ``--axis KEY=VALUES`` on
the command line replaces an axis's values (KEY may be the last part of the dotted key when
that names one axis: ``--axis target=0-9``), so a big sweep can be run in pieces without
editing the file. Errors name the file and line, or the option.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline_core.errors import Location, RecipeError
from pipeline_core.recipe.source import Source, load_yaml, parse, read_text
from pipeline_core.run.confine import check_name

KEYS = ("name", "recipe", "axes", "batch", "description")
#: a sweep of more jobs than this is a typo (a range of a billion classes), not a plan
MAX_JOBS = 1_000_000
RANGE = re.compile(r"\s*\d+\s*(-\s*\d+\s*)?(,\s*\d+\s*(-\s*\d+\s*)?)*")


@dataclass
class Axis:
    key: str  #: dotted, as --set takes it
    raw: Any  #: a list of values, or the text 'all' / '0-99' (resolved by the plan)
    where: Location  #: the line of the file, or the --axis option that set it

    @property
    def parts(self) -> list[Any]:
        return [int(p) if p.isascii() and p.isdigit() else p for p in self.key.split(".")]

    @property
    def short(self) -> str:
        return self.key.rsplit(".", 1)[-1]


@dataclass
class SweepSpec:
    file: Path
    name: str
    recipe: Path
    axes: list[Axis]
    batch: int | str  #: a number of images, or "auto"
    source: Source
    description: str = ""
    batch_where: Location = field(default_factory=Location)


def range_problem(text: str) -> str | None:
    """What is wrong with a list of ranges such as ``5-2`` (None when nothing is, or when the text
    is not written as ranges at all): a range that runs backwards, or one of more classes than a
    sweep can hold (a typo such as ``0-99999999999``)."""
    if not isinstance(text, str) or not RANGE.fullmatch(text):
        return None
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        lo, hi = lo.strip(), (hi or lo).strip()
        if len(lo) > 12 or len(hi) > 12:
            return (f"the range {part.strip()} has a bound of more than 12 digits; a range names class "
                    "indices, such as 0-99")
        a, b = int(lo), int(hi)
        if b < a:
            return f"the range {part.strip()} runs backwards (from {a} down to {b}); write it {b}-{a}"
        if b - a + 1 > MAX_JOBS:
            return (f"the range {part.strip()} holds {b - a + 1} classes, more than a sweep's {MAX_JOBS} jobs; "
                    "give the classes the model has (such as 0-999) or all")
    return None


def range_values(text: str) -> list[int] | None:
    """``0-9,20`` -> [0..9, 20]; None if the text is not such a list of ranges."""
    if not isinstance(text, str) or not RANGE.fullmatch(text) or range_problem(text):
        return None
    values: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        values.extend(range(a, b + 1))
    return values


def _check_values(key: str, raw: Any, where: Location) -> Any:
    if isinstance(raw, list):
        if not raw:
            raise RecipeError(f"the axis '{key}' has no values; give a list like [0, 1]", where)
        if len(raw) > MAX_JOBS:
            raise RecipeError(f"the axis '{key}' has {len(raw)} values, more than {MAX_JOBS}", where)
        seen: list[Any] = []
        for value in raw:
            if value in seen:
                raise RecipeError(f"the axis '{key}' lists {value!r} twice; keep one", where)
            seen.append(value)
        return raw
    problem = range_problem(raw) if isinstance(raw, str) else None
    if problem:
        raise RecipeError(f"the axis '{key}': {problem}", where)
    if isinstance(raw, str) and (raw.strip().lower() == "all" or range_values(raw) is not None):
        return raw.strip()
    if isinstance(raw, (dict, type(None))):
        raise RecipeError(f"the axis '{key}' must be a list of values (or, for a target, all or a range "
                          f"like 0-99), got {'nothing' if raw is None else 'a mapping'}", where)
    return [raw]  # one value: a setting the sweep fixes


def _check_key(key: Any, where: Location) -> str:
    if not isinstance(key, str) or not key.strip() or any(not p for p in key.strip().split(".")):
        raise RecipeError(f"an axis key must be a dotted path as --set takes it (steps.3.target, seed), "
                          f"got {key!r}", where)
    return key.strip()


def load_sweep(path: str | Path, axis_options: Sequence[str] = (), batch_option: str | None = None) -> SweepSpec:
    """Read and check the sweep file; apply ``--axis`` and ``--batch``."""
    path = Path(path)
    shown = str(path)
    text = read_text(path)
    source = parse(text, shown, path.resolve().parent)
    data = source.data

    def at(*keys: Any) -> Location:
        return Location(file=shown, line=source.line(keys))

    if not isinstance(data, dict):
        raise RecipeError("a sweep file is a mapping with recipe:, axes: and batch: (see recipes/atlas.yaml)", at())
    for key in data:
        if key not in KEYS:
            hint = " (a recipe's keys belong in the recipe file it names)" if key in ("steps", "model",
                                                                                      "iterations") else ""
            raise RecipeError(f"unknown key '{key}' in a sweep file: it takes {', '.join(KEYS)}{hint}", at(key))
    recipe = data.get("recipe")
    if not isinstance(recipe, str) or not recipe.strip():
        raise RecipeError("the sweep names no recipe: add 'recipe: FILE.yaml' (relative to the sweep file)", at())
    recipe_path = Path(recipe).expanduser()
    if not recipe_path.is_absolute():
        recipe_path = source.base_dir / recipe_path
    if not recipe_path.is_file():
        raise RecipeError(f"the recipe {recipe} does not exist (looked for {recipe_path})", at("recipe"))
    axes_raw = data.get("axes")
    if axes_raw is None:
        axes_raw = {}
    if not isinstance(axes_raw, dict):
        raise RecipeError("axes: must be a mapping of dotted keys to lists of values", at("axes"))
    axes = [Axis(_check_key(k, at("axes", k)), None, at("axes", k)) for k in axes_raw]
    for axis, raw in zip(axes, axes_raw.values()):
        axis.raw = _check_values(axis.key, raw, axis.where)
    for option in axis_options:
        _apply_axis_option(axes, option)
    batch: Any = data.get("batch", "auto")
    batch_where = at("batch")
    if batch_option is not None:
        batch_where = Location(file=f"--batch {batch_option}")
        batch = batch_option.strip()
        if batch.isascii() and batch.isdigit():
            batch = int(batch)
    if isinstance(batch, str) and batch.strip().lower() == "auto":
        batch = "auto"
    elif isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise RecipeError(f"batch must be a whole number of images of at least 1, or auto; got {batch!r}",
                          batch_where)
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise RecipeError("name must be a text", at("name"))
    # the sweep's folder is runs/NAME: a path here would write the sweep outside runs/
    name = check_name(name, "name:", at("name") if "name" in data else Location(file=shown),
                      fix="; write a plain name like 'atlas', or choose the folder with --out")
    description = data.get("description", "")
    return SweepSpec(file=path, name=name.strip(), recipe=recipe_path, axes=axes, batch=batch, source=source,
                     description=str(description or ""), batch_where=batch_where)


def _apply_axis_option(axes: list[Axis], option: str) -> None:
    where = Location(file=f"--axis {option}")
    key, sep, raw = option.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError("expected KEY=VALUES, e.g. --axis target=0-9 or --axis seed=[0,1,2]", where)
    matches = [a for a in axes if a.key == key] or [a for a in axes if a.short == key]
    if len(matches) > 1:
        raise RecipeError(f"'{key}' names several axes ({', '.join(a.key for a in matches)}); give the whole "
                          "dotted key", where)
    try:
        value = load_yaml(raw) if raw.strip() else None
    except Exception:  # noqa: BLE001 - any YAML problem is the same one line
        raise RecipeError("the values are not valid YAML; write a list like [0,1] or a range like 0-9",
                          where) from None
    if not matches:
        axis = Axis(_check_key(key, where), None, where)
        axes.append(axis)
    else:
        axis = matches[0]
        axis.where = where
    axis.raw = _check_values(axis.key, value, where)
