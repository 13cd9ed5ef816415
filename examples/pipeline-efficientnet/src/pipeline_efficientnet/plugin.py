"""The plugin object the entry point names: one hook per thing this package adds.

The host imports this module once at start-up and calls each hook with its registry. The
hooks only *register*: building the model, reading weights or opening files happens later,
when a recipe asks for them, so an installed plugin costs the host almost nothing.
"""

from __future__ import annotations

from pipeline_core.hookspecs import hookimpl
from pipeline_core.registry import Registry

from .gif import GifWriter
from .model import MODELS
from .total_variation import TotalVariation

#: The plugin API this package was written against (checked by the host at load time).
PIPELINE_API = ">=1.0,<2"


@hookimpl
def register_steps(registry: Registry) -> None:
    registry.add_step(TotalVariation)


@hookimpl
def register_models(registry: Registry) -> None:
    for model in MODELS:  # Lite1 and Lite2 fail on use, naming the package, when their wheels are missing
        registry.add_model(model)


@hookimpl
def register_outputs(registry: Registry) -> None:
    registry.add_output(GifWriter)
