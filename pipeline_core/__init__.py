"""Run image classifiers in reverse: gradient descent on the input, driven by YAML recipes.

The public API for plugin authors lives in :mod:`pipeline_core.hookspecs` (the hooks),
:mod:`pipeline_core.step` (the step contract), :mod:`pipeline_core.model` (models) and
:mod:`pipeline_core.writers` (output writers); :mod:`pipeline_core.testing` helps test them.
"""

__version__ = "0.1.0"

from .hookspecs import API_VERSION, hookimpl  # noqa: E402

__all__ = ["API_VERSION", "hookimpl", "__version__"]
