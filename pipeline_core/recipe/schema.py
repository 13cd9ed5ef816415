"""``pipeline schema``: a JSON Schema of recipes, with every installed plugin's steps and writers.

Editors use it to validate and complete recipes as they are typed. With VS Code's YAML
extension (redhat.vscode-yaml), either put a comment on the first line of a recipe::

    # yaml-language-server: $schema=../recipe.schema.json

or map the schema to files in ``.vscode/settings.json``::

    "yaml.schemas": {"./recipe.schema.json": ["recipes/*.yaml"]}

The schema is generated from the same pydantic models validation uses, so it cannot drift
from them; regenerate it (``pipeline schema --out recipe.schema.json``) after installing or
upgrading a plugin. It checks shape and types only: class names, file paths and anything a
step's ``bind`` checks are left to ``pipeline validate``.
"""

from __future__ import annotations

from typing import Any

from pipeline_core.recipe.loader import LABEL_PATTERN, entry_model
from pipeline_core.recipe.sections import RecipeModel
from pipeline_core.registry import Registry

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _ref_name(prefix: str, name: str) -> str:
    return prefix + "".join(ch if ch.isalnum() else "_" for ch in name)


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def _entry_schema(model: Any, key: str, name: str, doc: str | None) -> dict[str, Any]:
    """One ``{key: name, ...options}`` mapping: the options' schema plus the naming key."""
    try:
        schema = model.model_json_schema(by_alias=True)
        closed = True
    except Exception:  # noqa: BLE001 - one plugin's exotic type must not break the whole schema
        schema, closed = {"type": "object"}, False
    schema.setdefault("properties", {})
    schema["properties"] = {key: {"const": name, "description": f"The {key}'s name."}, **schema["properties"]}
    schema["required"] = [key, *schema.get("required", [])]
    schema["title"] = name
    if closed:  # unknown keys are errors in recipes, so in the editor too
        schema["additionalProperties"] = False
    description = _first_line(doc)
    if description:
        schema["description"] = description
    return schema


def step_schema(name: str, step_cls: Any) -> dict[str, Any]:
    """The schema of one step entry in a recipe: ``step: NAME`` plus its keys and schedule keys."""
    model = entry_model(step_cls)
    model.model_json_schema(by_alias=True)  # raise here for callers that check one step (check_step)
    schema = _entry_schema(model, "step", name, step_cls.__doc__)
    schema["properties"]["label"] = {
        "type": "string", "pattern": f"^{LABEL_PATTERN.pattern}$",
        "description": "A name for this step that --set LABEL.KEY=VALUE and --add-step before:LABEL= use "
                       "in place of its position (unique in the recipe).",
    }
    return schema


def writer_schema(name: str, writer_cls: Any) -> dict[str, Any]:
    """The schema of one ``output.writers`` entry: ``writer: NAME`` plus the writer's options."""
    return _entry_schema(writer_cls.Params, "writer", name, writer_cls.__doc__)


def _dispatch(key: str, table: dict[str, Any], make: Any, prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """Items that name one of ``table`` by ``key`` and then follow that entry's own schema."""
    branches = []
    for name in sorted(table):
        try:
            sub = make(name, table[name].obj)
        except Exception:  # noqa: BLE001 - see _entry_schema
            sub = {"type": "object", "properties": {key: {"const": name}}}
        for def_name, value in sub.pop("$defs", {}).items():
            defs.setdefault(def_name, value)
        ref = _ref_name(prefix, name)
        defs[ref] = sub
        branches.append({"if": {"properties": {key: {"const": name}}, "required": [key]},
                         "then": {"$ref": f"#/$defs/{ref}"}})
    item: dict[str, Any] = {
        "type": "object",
        "required": [key],
        "properties": {key: {"enum": sorted(table)} if table else {"type": "string"}},
    }
    if branches:
        item["allOf"] = branches
    return item


def recipe_schema(registry: Registry) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a recipe with the steps and writers of ``registry``."""
    schema = RecipeModel.model_json_schema(by_alias=True)
    defs = schema.setdefault("$defs", {})
    schema["properties"]["steps"] = {
        "type": "array",
        "minItems": 1,
        "description": "The steps, each a mapping with a 'step' key.",
        "items": _dispatch("step", registry.steps, step_schema, "step_", defs),
    }
    output = defs.get("OutputSection")
    if output is not None and "writers" in output.get("properties", {}):
        writers = output["properties"]["writers"]
        writers["items"] = _dispatch("writer", registry.writers, writer_schema, "writer_", defs)
    schema["$schema"] = SCHEMA_DIALECT
    schema["title"] = "pipeline recipe"
    return schema
