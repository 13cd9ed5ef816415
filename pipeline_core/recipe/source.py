"""Reading YAML safely while remembering where every value came from.

Validation errors must point at a line, so next to the plain data we keep a map from each
value's path (``("steps", 2, "sigma")``) to its line in the file. ``--set`` overrides are
recorded too, so an error in one names the command line rather than the file.

The lines come from PyYAML's own node marks (compose, then construct), not from a parser of
our own, so ruamel.yaml's line data would only add a second YAML library beside the PyYAML used
everywhere else, and a slower one (its round-trip loader took twice as long per shipped recipe,
plus about 70 ms to import); the same walk over the nodes also refuses alias bombs and runaway
nesting, which ruamel would leave to us anyway.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline_core.errors import Location, RecipeError

PathKey = tuple[Any, ...]


@dataclass
class Source:
    """Parsed recipe data with the line of every value."""

    data: Any
    file: str
    lines: dict[PathKey, int] = field(default_factory=dict)
    overrides: dict[PathKey, str] = field(default_factory=dict)  #: path -> the option, e.g. "--set seed=3"
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

    def overridden_below(self, path: PathKey) -> str | None:
        """The latest override of a value inside ``path`` (a step's key set by ``--set`` makes a
        problem of the whole step, such as a window that never runs)."""
        path = tuple(path)
        if len(path) < 2:  # the whole recipe or all its steps: an override inside proves nothing
            return None
        found = [label for key, label in self.overrides.items() if len(key) > len(path) and key[:len(path)] == path]
        return found[-1] if found else None

    def where(self, path: PathKey, **extra: Any) -> Location:
        cli = self.overridden(path) or self.overridden_below(path)
        if cli is not None:
            return Location(file=cli, **extra)
        return Location(file=self.file, line=self.line(path), **extra)


class RecipeLoader(yaml.SafeLoader):
    """The safe loader with YAML 1.2 booleans.

    YAML 1.1 reads ``on``, ``off``, ``yes`` and ``no`` as booleans, so ``on: view`` (a key every
    transform takes) would arrive as ``True: view``. Only ``true`` and ``false`` are booleans
    here; the other words stay strings, and pydantic still accepts them where a bool is wanted.
    """


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.yaml_implicit_resolvers = {  # dates stay text: recipes hold none, and 2024-13-45 would crash
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in RecipeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

#: an integer of more decimal digits than this is no setting (and Python refuses to print one
#: past 4300, so a message quoting it would fail)
MAX_DIGITS = 4000


class _TooLong(yaml.MarkedYAMLError):
    """A number too long to be a setting, with the place it was written."""


def _construct_int(loader: RecipeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node)).lstrip("+-").lower()
    per_digit = {"0x": 1.21, "0b": 0.31, "0o": 0.91}.get(text[:2], 1.0)  # decimal digits per digit
    if per_digit != 1.0:
        text = text[2:]
    digits = math.ceil(sum(ch.isalnum() for ch in text) * per_digit)
    if digits > MAX_DIGITS:
        raise _TooLong(None, None, f"a number of {digits} digits: no setting takes a number that long (at most "
                                   f"{MAX_DIGITS} digits); write the value you mean", node.start_mark)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


RecipeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)

#: A recipe (or run.json) larger than this is not one.
MAX_RECIPE_BYTES = 16 * 2**20

#: More YAML values than this (aliases can multiply a small file) is refused, not expanded.
MAX_NODES = 200_000
#: Deeper nesting than this is no recipe (and an alias inside itself would never end).
MAX_DEPTH = 64


def _key(loader: RecipeLoader, node: yaml.Node) -> Any:
    """A mapping key as the loader constructs it (so lines are found under the same key)."""
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_object(node, deep=True)
    return None


def _walk(loader: RecipeLoader, root: yaml.Node, file: str) -> dict[PathKey, int]:
    """Map every value's path to its line; refuse duplicate keys and runaway aliases."""
    lines: dict[PathKey, int] = {}
    budget = MAX_NODES
    stack: list[tuple[yaml.Node, PathKey]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        budget -= 1
        if budget < 0:
            raise RecipeError(
                f"the YAML holds more than {MAX_NODES} values (aliases expanding into each other?)",
                Location(file=file, line=node.start_mark.line + 1),
            )
        if len(path) > MAX_DEPTH:
            raise RecipeError(f"the YAML is nested more than {MAX_DEPTH} levels deep (an alias inside itself?)",
                              Location(file=file, line=node.start_mark.line + 1))
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = _key(loader, key_node)
                line = key_node.start_mark.line + 1
                if key is None:
                    stack.append((value_node, path + ("?",)))
                    continue
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key; validation reports it
                    continue
                if first is not None and key != "<<":
                    raise RecipeError(
                        f"the key '{key}' appears twice (lines {first} and {line}); keep one",
                        Location(file=file, line=line),
                    )
                seen[key] = line
                lines[path + (key,)] = line
                stack.append((value_node, path + (key,)))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                stack.append((item, path + (i,)))
    return lines


def _yaml_error(file: str, exc: yaml.YAMLError) -> RecipeError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or (str(exc).splitlines() or ["?"])[0]).split())
    if isinstance(exc, _TooLong):
        pass
    elif "could not determine a constructor" in str(exc):
        tag = str(exc).split("tag '")[-1].split("'")[0] if "tag '" in str(exc) else "?"
        tag = tag.replace("tag:yaml.org,2002:", "!!")
        problem = f"the YAML tag '{tag}' is not allowed: recipes hold plain data only (remove the tag)"
    else:
        problem = f"YAML syntax error: {problem}"
    line = mark.line + 1 if mark is not None else None
    return RecipeError(problem, Location(file=file, line=line))


def read_text(path: Path) -> str:
    shown = str(path)
    try:
        if not path.exists():
            raise RecipeError(f"no such recipe file: {shown}")
        if path.is_dir():
            raise RecipeError(f"{shown} is a folder, not a recipe file (or a run folder's run.json)")
        if not path.is_file():  # /dev/zero would be read for ever
            raise RecipeError(f"{shown} is not a regular file")
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(f"{shown} holds {path.stat().st_size / 2**20:.1f} MiB; a recipe is a small text file "
                              f"(at most {MAX_RECIPE_BYTES // 2**20} MiB)")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError("the recipe is not UTF-8 text", Location(file=shown)) from None
    except OSError as exc:  # a name too long, a folder on the way that may not be read
        raise RecipeError(f"cannot read the recipe: {exc.strerror or exc}", Location(file=shown)) from None


def load_yaml(text: str) -> Any:
    """Plain data from YAML text with :class:`RecipeLoader` (used for ``--set`` values too)."""
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - RecipeLoader is a SafeLoader


def parse(text: str, file: str, base_dir: Path) -> Source:
    """Parse YAML (or JSON, a subset of it) with the safe loader; RecipeError on any problem."""
    try:
        loader = RecipeLoader(text)
        try:
            node = loader.get_single_node()
            lines = _walk(loader, node, file) if node is not None else {}
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise _yaml_error(file, exc) from None
    except RecursionError:
        raise RecipeError("the YAML is nested too deeply", Location(file=file)) from None
    except (ValueError, OverflowError) as exc:  # e.g. a timestamp such as 2024-13-45
        raise RecipeError(f"a value cannot be read: {exc}", Location(file=file)) from None
    return Source(data=data, file=file, lines=lines, base_dir=base_dir)


def expand_user(text: str, shown: str | None = None) -> Path:
    """``~`` and ``~user`` expanded; RecipeError (not a crash) for a user this machine lacks."""
    if "\x00" in text:
        raise RecipeError(f"{shown or repr(text)}: the path holds a NUL character")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~nosuchuser, or no home directory at all
        user = text.split("/", 1)[0]
        raise RecipeError(f"{shown or text}: '{user}' names no user's home folder on this machine; "
                          "write the path out in full") from None


def _index(part: str) -> Any:
    """A list index in a dotted key: ASCII digits only (int() would take '²' and fail)."""
    return int(part) if part.isascii() and part.isdigit() and len(part) <= 18 else part


def parse_override(text: str) -> tuple[list[Any], Any]:
    """``a.b.2.c=value`` -> (["a", "b", 2, "c"], value read as YAML)."""
    if "=" not in text:
        raise RecipeError(f"--set {text}: expected KEY=VALUE, e.g. --set model.name=mobilenet_v2")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise RecipeError(f"--set {text}: the key is empty")
    parts: list[Any] = [_index(p) for p in key.strip().split(".")]
    if any(p == "" for p in parts):
        raise RecipeError(f"--set {text}: the key '{key.strip()}' has an empty part; write it like steps.2.sigma")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        why = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise RecipeError(f"--set {text}: the value is not valid YAML ({why})") from None
    except (ValueError, OverflowError, RecursionError) as exc:
        raise RecipeError(f"--set {text}: the value cannot be read ({exc})") from None
    return parts, value


class Override(str):
    """A ``KEY=VALUE`` override that came from an option other than ``--set`` (``--seed 3``):
    errors name the option as the user typed it."""

    shown: str

    def __new__(cls, text: str, shown: str) -> "Override":
        obj = super().__new__(cls, text)
        obj.shown = shown
        return obj


def _label(text: str) -> str:
    return getattr(text, "shown", None) or f"--set {text}"


class AddStep(Override):
    """An ``--add-step [before:REF=|after:REF=]MAPPING`` option: a step put into the recipe's list."""


def apply_override(source: Source, text: str) -> None:
    if isinstance(text, AddStep):
        add_step(source, text)
        return
    label = _label(text)
    try:
        parts, value = parse_override(text)
    except RecipeError as exc:
        if label.startswith("--set "):
            raise
        raise RecipeError(exc.message.replace(f"--set {text}", label, 1)) from None
    if not isinstance(source.data, dict):
        return
    parts = step_path(source.data, parts, label)
    target: Any = source.data
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(map(str, parts[: depth + 1]))
        if isinstance(target, dict):
            if part in target and not isinstance(target[part], (dict, list)) and target[part] is not None:
                raise RecipeError(f"{label}: cannot set '{parts[depth + 1]}': '{where}' is {_kind(target[part])}, "
                                  "which has no keys")
            if target.get(part) is None:
                target[part] = {}
            target = target[part]
        elif isinstance(target, list):
            target = target[_list_index(label, where, part, target)]
        else:
            raise RecipeError(f"{label}: '{where}' does not exist in the recipe")
    last = parts[-1]
    where = ".".join(map(str, parts))
    if isinstance(target, dict):
        target[last] = value
    elif isinstance(target, list):
        target[_list_index(label, where, last, target)] = value
    else:
        raise RecipeError(f"{label}: cannot set '{last}' there")
    source.overrides[tuple(parts)] = label


def _kind(value: Any) -> str:
    return {bool: "true or false", int: "a number", float: "a number", str: "a text"}.get(type(value), "a value")


def _list_index(label: str, where: str, part: Any, items: list) -> int:
    """The position ``part`` names in a list, or the one line saying why it names none."""
    parent = where.rsplit(".", 1)[0] if "." in where else where
    if not isinstance(part, int):
        raise RecipeError(f"{label}: '{where}' does not exist in the recipe: '{parent}' is a list, so give a "
                          f"position 0..{len(items) - 1} instead of '{part}'" if items else
                          f"{label}: '{where}' does not exist in the recipe: '{parent}' is an empty list")
    if part >= len(items):
        span = f"positions 0..{len(items) - 1}" if items else "no positions (it is empty)"
        raise RecipeError(f"{label}: '{where}' does not exist in the recipe: '{parent}' has {span}")
    return part


# -- steps by name ---------------------------------------------------------------------------


def _steps(data: Any) -> list[Any]:
    steps = data.get("steps") if isinstance(data, dict) else None
    return steps if isinstance(steps, list) else []


def step_refs(steps: list[Any]) -> list[str]:
    """How each step can be addressed, for messages: 'steps.3 (label: warm)' or 'steps.5 (adam)'."""
    out = []
    for i, raw in enumerate(steps):
        if not isinstance(raw, dict):
            continue
        name = raw.get("label") if isinstance(raw.get("label"), str) else raw.get("step")
        out.append(f"steps.{i} ({'label: ' if 'label' in raw else ''}{name})")
    return out


def find_step(steps: list[Any], ref: Any, label: str) -> int | None:
    """The position of the step ``ref`` names: a position, a ``label:`` (labels come first), or
    the ``step:`` name of exactly one step. None when it names no step; an ambiguous name is an
    error listing every candidate's position and label."""
    if isinstance(ref, int):
        return ref
    labelled = [i for i, raw in enumerate(steps) if isinstance(raw, dict) and raw.get("label") == ref]
    if len(labelled) == 1:
        return labelled[0]
    named = labelled or [i for i, raw in enumerate(steps) if isinstance(raw, dict) and raw.get("step") == ref]
    if len(named) > 1:
        places = ", ".join(f"steps.{i}" + (f" (label: {steps[i]['label']})" if "label" in steps[i] else "")
                           for i in named)
        raise RecipeError(f"{label}: '{ref}' names {len(named)} steps ({places}); give one of them a 'label:' "
                          f"and use it, or give the position (steps.{named[0]})")
    return named[0] if named else None


def step_path(data: Any, parts: list[Any], label: str) -> list[Any]:
    """A dotted key with its step named as a position: ``adam.lr`` and ``steps.adam.lr`` become
    ``steps.5.lr`` when the recipe's only adam step (or its step labelled adam) is at position 5.
    A first part that is one of the recipe's own keys keeps its meaning."""
    steps = _steps(data)
    if len(parts) >= 2 and parts[0] == "steps" and isinstance(parts[1], str) and steps:
        index = find_step(steps, parts[1], label)
        if index is None:
            raise RecipeError(f"{label}: no step is labelled or named '{parts[1]}'; the steps are "
                              f"{', '.join(step_refs(steps))}")
        return ["steps", index, *parts[2:]]
    if len(parts) >= 2 and isinstance(parts[0], str) and parts[0] not in data and steps:
        index = find_step(steps, parts[0], label)
        if index is not None:
            return ["steps", index, *parts[1:]]
    return parts


def _shift_steps(source: Source, at: int) -> None:
    """Lines and overrides recorded for steps at ``at`` and after move one place down."""
    def moved(key: PathKey) -> PathKey:
        if len(key) >= 2 and key[0] == "steps" and isinstance(key[1], int) and key[1] >= at:
            return ("steps", key[1] + 1, *key[2:])
        return key

    source.lines = {moved(k): v for k, v in source.lines.items()}
    source.overrides = {moved(k): v for k, v in source.overrides.items()}


def add_step(source: Source, text: AddStep) -> None:
    """Put the step ``text`` describes into the recipe: at the end, or ``before:REF=`` /
    ``after:REF=`` a step named as ``--set`` names one (a label, a unique step name, a position)."""
    label = text.shown
    body, where, ref = str(text), None, None
    head = re.match(r"\s*(before|after):([^=]*)=", body)
    if head:
        where, ref, body = head.group(1), head.group(2).strip(), body[head.end():]
        if not ref:
            raise RecipeError(f"{label}: name the step after '{where}:' (a label, a step name or a position), "
                              f"e.g. --add-step '{where}:adam={{step: blur}}'")
    try:
        value = load_yaml(body) if body.strip() else None
    except yaml.YAMLError as exc:
        why = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise RecipeError(f"{label}: the step is not valid YAML ({why})") from None
    except (ValueError, OverflowError, RecursionError) as exc:
        raise RecipeError(f"{label}: the step cannot be read ({exc})") from None
    if not isinstance(value, dict) or "step" not in value:
        squeezed = isinstance(value, dict) and any(isinstance(k, str) and ":" in k for k in value)
        raise RecipeError(f"{label}: expected a step as a YAML mapping with a 'step' key, e.g. "
                          "--add-step '{step: blur, sigma: 1}' (before:REF= or after:REF= in front to place it)"
                          + ("; YAML needs a space after each ':'" if squeezed else ""))
    if not isinstance(source.data, dict):
        return
    if source.data.get("steps") is None:
        source.data["steps"] = []
    steps = source.data["steps"]
    if not isinstance(steps, list):
        raise RecipeError(f"{label}: the recipe's 'steps' is not a list")
    at = len(steps)
    if where is not None:
        index = find_step(steps, _index(ref), label)
        if index is None or index >= len(steps):
            raise RecipeError(f"{label}: no step is labelled or named '{ref}'"
                              + (f"; the steps are {', '.join(step_refs(steps))}" if steps else
                                 "; the recipe has no steps"))
        at = index if where == "before" else index + 1
    _shift_steps(source, at)
    steps.insert(at, value)
    source.overrides[("steps", at)] = label
