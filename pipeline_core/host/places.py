"""Where a transform acts: the host's check of a recipe's ``on:`` against the step's ``places``.

A transform declares once, on its class, the places it supports (``Step.places``); the host
refuses a recipe that asks for another one with the usual one-line error (file, line, step,
key ``on``), so no step refuses ``on:`` in its own ``bind``. :class:`pipeline_core.step.Step`
runs :func:`check_place` before every ``bind`` and :func:`check_declaration` when a step class
is defined.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline_core.errors import Location, RecipeError

if TYPE_CHECKING:
    from pipeline_core.step import Step

#: the values a transform's ``on:`` may take, and what each means in an error message
PLACES = ("image", "view")
_MEANING = {"image": "the stored image", "view": "what the model sees"}


def _is_transform(step_cls: type) -> bool:
    from pipeline_core.step import StepKind

    return getattr(step_cls, "kind", None) is StepKind.TRANSFORM


def check_declaration(step_cls: type[Step]) -> None:
    """TypeError unless ``step_cls.places`` is a non-empty tuple of :data:`PLACES` that holds
    its Params' default ``on`` (a default the step refuses would fail every recipe that
    leaves ``on:`` out). Raised when the class is defined, so a plugin with such a step fails
    to import and the host reports it in one line."""
    if not _is_transform(step_cls):
        return
    places: Any = getattr(step_cls, "places", None)
    name = getattr(step_cls, "name", step_cls.__name__)
    if not isinstance(places, tuple) or not places or not set(places) <= set(PLACES):
        raise TypeError(f"step '{name}': places must be a non-empty tuple of {PLACES}, got {places!r}")
    field = getattr(getattr(step_cls, "Params", None), "model_fields", {}).get("on")
    default = getattr(field, "default", None)
    if default is not None and default not in places:
        raise TypeError(f"step '{name}': the default 'on: {default}' of its Params is not among its places "
                        f"{places}; give 'on' a default it supports")


def check_place(step: Step) -> None:
    """RecipeError (key ``on``) when a transform is asked to act where its class says it cannot."""
    if not _is_transform(type(step)):
        return
    asked = getattr(step.params, "on", None)
    places = type(step).places
    if asked is None or asked in places:
        return
    where = " or ".join(f"{_MEANING[p]} (on: {p})" for p in places)
    raise RecipeError(f"{step.name} acts only on {where}, not on {_MEANING.get(asked, asked)}: "
                      f"use on: {places[0]}", Location(key="on"))
