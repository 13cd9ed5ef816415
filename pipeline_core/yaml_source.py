"""Reading YAML safely while remembering where every value came from.

Validation errors must point at a line, so next to the plain data we keep a map from each
value's path (``("steps", 2, "sigma")``) to its line in the file. ``--set`` overrides are
recorded too, so an error in one names the command line rather than the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import Location, RecipeError

PathKey = tuple[Any, ...]


@dataclass
class Source:
    """Parsed recipe data with the line of every value."""

    data: Any
    file: str
    lines: dict[PathKey, int] = field(default_factory=dict)
    overrides: dict[PathKey, str] = field(default_factory=dict)  #: path -> the --set text
    base_dir: Path = field(default_factory=Path.cwd)

    def line(self, path: PathKey) -> int | None:
        path = tuple(path)
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def overridden(self, path: PathKey) -> str | None:
        path = tuple(path)
        for i in range(len(path), 0, -1):
            if path[:i] in self.overrides:
                return self.overrides[path[:i]]
        return None

    def where(self, path: PathKey, **extra: Any) -> Location:
        cli = self.overridden(path)
        if cli is not None:
            return Location(file=f"--set {cli}", **extra)
        return Location(file=self.file, line=self.line(path), **extra)


def _walk(node: yaml.Node, path: PathKey, lines: dict[PathKey, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key: Any = yaml.safe_load(key_node.value) if key_node.tag.endswith(":int") else key_node.value
                lines[path + (key,)] = key_node.start_mark.line + 1
                _walk(value_node, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines)


def _yaml_error(file: str, exc: yaml.YAMLError) -> RecipeError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if "could not determine a constructor" in str(exc):
        tag = str(exc).split("tag '")[-1].split("'")[0] if "tag '" in str(exc) else "?"
        problem = f"the YAML tag '{tag}' is not allowed: recipes hold plain data only (remove the tag)"
    else:
        problem = f"YAML syntax error: {problem}"
    line = mark.line + 1 if mark is not None else None
    return RecipeError(problem, Location(file=file, line=line))


def read_text(path: Path) -> str:
    shown = str(path)
    if not path.exists():
        raise RecipeError(f"no such recipe file: {shown}")
    if path.is_dir():
        raise RecipeError(f"{shown} is a folder, not a recipe file (or a run folder's run.json)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError("the recipe is not UTF-8 text", Location(file=shown)) from None
    except OSError as exc:
        raise RecipeError(f"cannot read the recipe: {exc.strerror}", Location(file=shown)) from None


def parse(text: str, file: str, base_dir: Path) -> Source:
    """Parse YAML (or JSON, a subset of it) with the safe loader; RecipeError on any problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(file, exc) from None
    except RecursionError:
        raise RecipeError("the YAML is nested too deeply", Location(file=file)) from None
    lines: dict[PathKey, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return Source(data=data, file=file, lines=lines, base_dir=base_dir)


def parse_override(text: str) -> tuple[list[Any], Any]:
    """``a.b.2.c=value`` -> (["a", "b", 2, "c"], value read as YAML)."""
    if "=" not in text:
        raise RecipeError(f"--set {text}: expected KEY=VALUE, e.g. --set model.name=mobilenet_v2")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise RecipeError(f"--set {text}: the key is empty")
    parts: list[Any] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {text}: the value is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return parts, value


def apply_override(source: Source, text: str) -> None:
    parts, value = parse_override(text)
    if not isinstance(source.data, dict):
        return
    target: Any = source.data
    for depth, part in enumerate(parts[:-1]):
        if isinstance(target, dict):
            target = target.setdefault(part, {})
        elif isinstance(target, list) and isinstance(part, int) and part < len(target):
            target = target[part]
        else:
            where = ".".join(map(str, parts[: depth + 1]))
            raise RecipeError(f"--set {text}: '{where}' does not exist in the recipe")
    last = parts[-1]
    if isinstance(target, dict):
        target[last] = value
    elif isinstance(target, list) and isinstance(last, int) and last < len(target):
        target[last] = value
    else:
        raise RecipeError(f"--set {text}: cannot set '{last}' there")
    source.overrides[tuple(parts)] = text
