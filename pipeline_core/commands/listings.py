"""Human-readable listings of what the plugins provide: ``pipeline steps`` and ``pipeline plugins``."""

from __future__ import annotations

import io
import json
import shutil
import sys
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic_core import PydanticUndefined
from rich.console import Console, Group
from rich.padding import Padding
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from pipeline_core.errors import RecipeError, did_you_mean
from pipeline_core.recipe.loader import entry_model
from pipeline_core.registry import Registry
from pipeline_core.step import StepKind


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return "required"
    return json.dumps(value) if not isinstance(value, str) else value


_WORDS = {int: "integer", float: "number", str: "text", bool: "true/false", dict: "mapping"}


def type_name(ann: Any) -> str:
    """A type as a recipe's author reads it: ``integer``, ``one of image, view``, ``list of number``."""
    origin, args = get_origin(ann), get_args(ann)
    if origin is Annotated:  # strictness and bounds are validation details, not the type
        return type_name(args[0])
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        parts = list(dict.fromkeys(type_name(a) for a in args if a is not type(None)))
        return " or ".join(parts) + (" (optional)" if type(None) in args else "")
    if origin in (list, tuple, set, frozenset):
        inner = list(dict.fromkeys(type_name(a) for a in args if a is not Ellipsis))
        if origin is tuple and len(args) == 2 and args[1] is not Ellipsis and len(inner) == 1:
            return f"pair of {inner[0]}"
        return "list of " + " or ".join(inner) if inner else "list"
    if origin is dict:
        return "mapping"
    if ann is type(None):
        return "null"
    return _WORDS.get(ann, getattr(ann, "__name__", str(ann)))


SCHEDULE_KEYS = ("from", "until", "every")


def step_parameters(step_cls, schedule: bool = True) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for each key a recipe may give the step; schedule keys last."""
    model = entry_model(step_cls)
    rows = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        rows.append((key, type_name(field.annotation), _default(field), field.description or ""))
    timing = [r for r in rows if r[0] in SCHEDULE_KEYS]
    return [r for r in rows if r not in timing] + (timing if schedule else [])


def _step_table(step_cls, schedule: bool) -> Table:
    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0), pad_edge=False, expand=False)
    table.add_column("key", style="bold", no_wrap=True, min_width=12)
    table.add_column("type", style="cyan", max_width=26)
    table.add_column("default", style="green", max_width=14)
    table.add_column("help", ratio=1)
    for key, ann, default, help_text in step_parameters(step_cls, schedule):
        table.add_row(Text(key), Text(ann), Text(default), Text(help_text))
    return table


def describe_steps(registry: Registry, only: str | None = None, width: int | None = None) -> str:
    """Every step, grouped by kind in the order one iteration calls them (or one step, in full).

    Laid out for the terminal's width (80 columns into a file or pipe), as plain text.
    """
    if only is not None:
        if only not in registry.steps:
            raise RecipeError(f"unknown step '{only}'{did_you_mean(only, registry.steps)}")
        names = [only]
    else:
        names = sorted(registry.steps, key=str.lower)
    parts: list[Any] = []
    if only is None:
        parts.append(Text("Steps by kind, in the order one iteration runs them. Every transform, objective and "
                          "update also takes from, until and every (when it is active); 'pipeline steps NAME' "
                          "shows them.\n"))
    for kind in StepKind:
        group = [n for n in names if registry.steps[n].obj.kind is kind]
        if not group:
            continue
        if only is None:
            parts.append(Rule(Text(f"{kind.value} steps", style="bold"), align="left", style="dim"))
        for name in group:
            entry = registry.steps[name]
            cls = entry.obj
            doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph
            head = Text.assemble((name, "bold magenta"), f"  [{kind.value}]  from {entry.plugin}")
            parts.append(head)
            if doc:
                parts.append(Padding(Text(doc), (0, 0, 0, 4), expand=False))
            parts.append(Padding(_step_table(cls, schedule=only is not None), (0, 0, 1, 4), expand=False))
    if width is None:
        width = shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else 80
    console = Console(width=max(width, 60), file=io.StringIO(), highlight=False, color_system=None)
    with console.capture() as captured:
        console.print(Group(*parts))
    return "\n".join(line.rstrip() for line in captured.get().splitlines()).rstrip() + "\n"


def plugins_data(registry: Registry) -> list[dict[str, Any]]:
    """Every plugin the host tried: name, package, version, what it registers and its problems."""
    return [
        {"name": p.name, "package": p.package, "version": p.version, "registers": list(p.registers),
         "problem": p.problem, "problems": list(p.problems)}
        for p in registry.plugins.values()
    ]


def describe_plugins(registry: Registry, as_json: bool = False) -> str:
    data = plugins_data(registry)
    if as_json:
        return json.dumps(data, indent=2)
    lines = []
    for p in data:
        version = f" {p['version']}" if p["version"] else ""
        package = p["package"] if p["package"].startswith("(") else f"({p['package']}{version})"
        lines.append(f"{p['name']}  {package}")
        for problem in p["problems"]:
            lines.append(f"    problem: {problem}")
        regs = p["registers"]
        if len(regs) > 12:
            kinds: dict[str, int] = {}
            for r in regs:
                kinds[r.split()[0]] = kinds.get(r.split()[0], 0) + 1
            lines.append("    " + ", ".join(f"{n} {k}s" for k, n in kinds.items()))
        elif regs:
            lines.append("    " + ", ".join(regs))
    return "\n".join(lines) + "\n"
