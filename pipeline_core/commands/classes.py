"""``pipeline classes MODEL``: the class names and indices a recipe's ``target`` can name.

A target is given by name or index, and ImageNet's names are not what one guesses ("tabby" and
"tiger cat" are both cats, "tusker" is an elephant). ``--match`` searches every name a class
answers to (for ImageNet-1k, all of WordNet's: "lighthouse" finds "beacon"). This lists them from the model's own
metadata, built as a run would build it (the same ``NAME[,KEY=VALUE...]`` as ``pipeline run
--model``), from its skeleton where it has one, so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline_core.recipe.classnames import ClassNames, class_key
from pipeline_core.recipe.model_arg import module_from_arg
from pipeline_core.registry import Registry


def list_classes(text: str, registry: Registry, base: Path | None = None) -> tuple[str, list[str]]:
    """(model name, its class names in index order)."""
    _module, info, name = module_from_arg(text, registry, base)
    return name, list(info.categories)


def _matches(names: ClassNames, match: str | None) -> list[tuple[int, str]]:
    rows = list(enumerate(names.categories))
    if not match:
        return rows
    if match.strip().isdigit():
        return [(i, c) for i, c in rows if i == int(match)]
    return [rows[i] for i in names.matching(match)]


def _also(names: ClassNames, index: int) -> str:
    others = [n for n in names.synonyms[index] if class_key(n) != class_key(names.categories[index])]
    return f"  (also: {', '.join(dict.fromkeys(others))})" if others else ""


def render(name: str, categories: list[str], match: str | None = None) -> str:
    names = ClassNames(categories, name)
    shown = _matches(names, match)
    lines = [f"{name}: {len(categories)} classes (a recipe's target names one by its name or its index"
             + (", or by any of its other names" if names.imagenet else "") + ")"]
    width = len(str(max(len(categories) - 1, 0)))
    lines += [f"{i:>{width}}  {c}{_also(names, i)}" for i, c in shown]
    if match and not shown:
        lines.append(f"(no class name contains '{match}')")
    duplicates = sorted({c for i, c in shown if categories.count(c) > 1})
    if duplicates:
        lines.append("names given to more than one class (name these by index): " + ", ".join(duplicates))
    return "\n".join(lines)


def as_json(name: str, categories: list[str], match: str | None = None) -> str:
    names = ClassNames(categories, name)
    return json.dumps({"model": name, "classes": [
        {"index": i, "name": c, **({"names": list(names.synonyms[i])} if names.imagenet else {})}
        for i, c in _matches(names, match)]}, indent=2)
