"""``pipeline schema``: a JSON Schema of recipes, with every installed plugin's steps.

Editors use it to validate and complete recipes (VS Code's YAML extension: a
``# yaml-language-server: $schema=recipe.schema.json`` comment at the top of a recipe).
"""

from __future__ import annotations

from typing import Any

from .recipe import entry_model
from .recipe_model import RecipeModel
from .registry import Registry


def step_schema(name: str, step_cls) -> dict[str, Any]:
    schema = entry_model(step_cls).model_json_schema(by_alias=True)
    schema.setdefault("properties", {})
    schema["properties"] = {"step": {"const": name, "description": "The step's name."}, **schema["properties"]}
    schema["required"] = ["step", *schema.get("required", [])]
    schema["title"] = name
    schema["additionalProperties"] = False
    doc = (step_cls.__doc__ or "").strip()
    if doc:
        schema["description"] = doc.splitlines()[0]
    return schema


def recipe_schema(registry: Registry) -> dict[str, Any]:
    schema = RecipeModel.model_json_schema(by_alias=True)
    defs = schema.setdefault("$defs", {})
    branches = []
    for name in sorted(registry.steps):
        sub = step_schema(name, registry.steps[name].obj)
        for key, value in sub.pop("$defs", {}).items():
            defs.setdefault(key, value)
        ref = "step_" + "".join(ch if ch.isalnum() else "_" for ch in name)
        defs[ref] = sub
        branches.append({"if": {"properties": {"step": {"const": name}}, "required": ["step"]},
                         "then": {"$ref": f"#/$defs/{ref}"}})
    schema["properties"]["steps"] = {
        "type": "array",
        "minItems": 1,
        "description": "The steps, each a mapping with a 'step' key.",
        "items": {
            "type": "object",
            "required": ["step"],
            "properties": {"step": {"enum": sorted(registry.steps)}},
            "allOf": branches,
        },
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "pipeline recipe"
    return schema
