"""Pydantic's validation errors turned into one line a person can act on.

Pydantic reports where an error is as a path of field names, union tags and list indices,
and what is wrong in its own words. A recipe's author needs the file and line, the key as
they wrote it, and the nearest valid name for a typo; this is where that translation lives.
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import BaseModel, ValidationError

from pipeline_core.errors import RecipeError, did_you_mean
from pipeline_core.recipe.source import PathKey, Source

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


def _not_finite(value: Any, inner: Sequence[Any]) -> str:
    """The message for a NaN or an infinity where numbers are expected."""
    word = "NaN" if isinstance(value, float) and value != value else "infinity"
    where = f" (item {inner[0]} of the list)" if inner and isinstance(inner[0], int) else ""
    return f"expected a finite number{where}, got {value!r}: {word} is not allowed"


def describe(err: dict[str, Any], model: type[BaseModel],
              errors: Sequence[dict[str, Any]] | None = None) -> tuple[str, str]:
    """(key, message) for the first pydantic error; a union's alternatives are named together."""
    loc = _clean(err["loc"])
    tag_at = _union_at(loc, errors or [err])
    if tag_at is not None:
        prefix = loc[:tag_at]
        for other in errors or [err]:  # a NaN in a list that is otherwise right: say that, not "expected ..."
            oloc = _clean(other["loc"])
            if other["type"] == "finite_number" and oloc[:tag_at] == prefix:
                return ".".join(str(p) for p in prefix), _not_finite(other.get("input"), oloc[tag_at + 1:])
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
        return key, _not_finite(err.get("input"), [])
    msg = err["msg"].replace("Value error, ", "")
    given = err.get("input")
    if not isinstance(given, (dict, list)) and given is not None and "got " not in msg and repr(given) not in msg:
        msg += f" (got {given!r})"
    return key, msg


def raise_validation(exc: ValidationError, model: type[BaseModel], source: Source, prefix: PathKey,
                      step: tuple[int, str] | None = None) -> None:
    errors = exc.errors()
    err = errors[0]
    key, msg = describe(err, model, errors)
    loc = _clean(err["loc"])
    at = _union_at(loc, errors)
    path = prefix + tuple(loc[:at] if at is not None else loc)
    extra = {"step_index": step[0], "step_name": step[1]} if step else {}
    raise RecipeError(msg, source.where(path, key=key or None, **extra)) from None
