"""Human-readable listings of what the plugins provide: ``pipeline steps`` and ``pipeline plugins``."""

from __future__ import annotations

import json
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic_core import PydanticUndefined

from pipeline_core.errors import RecipeError, did_you_mean
from pipeline_core.recipe.loader import entry_model
from pipeline_core.registry import Registry


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return "required"
    return json.dumps(value) if not isinstance(value, str) else value


def type_name(ann: Any) -> str:
    """A short readable type: ``int|str``, ``image|view``, ``list[int]``."""
    origin, args = get_origin(ann), get_args(ann)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return "|".join(type_name(a) for a in args)
    if origin is not None:
        inner = ",".join(type_name(a) for a in args if a is not Ellipsis)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def step_parameters(step_cls) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for each key a recipe may give the step; schedule keys last."""
    model = entry_model(step_cls)
    rows = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        rows.append((key, type_name(field.annotation), _default(field), field.description or ""))
    schedule = [r for r in rows if r[0] in ("from", "until", "every")]
    return [r for r in rows if r not in schedule] + schedule


def describe_steps(registry: Registry, only: str | None = None) -> str:
    names = sorted(registry.steps, key=str.lower)
    if only is not None:
        if only not in registry.steps:
            raise RecipeError(f"unknown step '{only}'{did_you_mean(only, registry.steps)}")
        names = [only]
    lines: list[str] = []
    for name in names:
        entry = registry.steps[name]
        cls = entry.obj
        doc = (cls.__doc__ or "").strip().splitlines()
        lines.append(f"{name}  [{cls.kind.value}]  from {entry.plugin}")
        if doc:
            lines.append(f"    {doc[0]}")
        for key, ann, default, help_text in step_parameters(cls):
            lines.append(f"    {key:<14} {ann:<24} {default:<12} {help_text}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


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
