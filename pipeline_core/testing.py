"""A testing kit for plugin authors (also loaded as a pytest plugin: the fixtures below).

Installing ``pipeline-transfigure`` makes the fixtures available to every pytest run, so a
plugin's tests need no conftest.py::

    from pipeline_core.testing import check_step, registered, run_recipe_dict, tiny_recipe
    import my_package.plugin as plugin

    def test_contract():
        check_step(MyPrior, {"weight": 0.5})

    def test_in_a_run(isolated_registry, tmp_path):
        with registered(plugin, isolated_registry):
            recipe = tiny_recipe()
            recipe["steps"].insert(2, {"step": "my-prior", "weight": 0.5})
            result = run_recipe_dict(recipe, tmp_path / "run", registry=isolated_registry)
        assert result.status == "completed"

What is here, and why:

- :func:`plugin_manager` / :func:`make_registry` and the ``isolated_registry`` fixture: the
  built-ins plus a tiny test model, *without* the plugins installed in the environment, so a
  test sees the same registry on every machine;
- :func:`registered`: add a plugin to a registry for one block, through the same checks the
  host applies to an installed plugin (``@hookimpl`` markers, hook names, ``PIPELINE_API``,
  name clashes); it raises on any problem instead of warning;
- :func:`run_recipe_dict` and :func:`tiny_recipe`: run a recipe given as a dict on the CPU
  with a 10-class random model at 32 px, in about a second;
- :func:`check_step`: the contract every step should meet (parameters, schedule handling,
  device, dtype and batch preservation, determinism); an objective that reads a layer
  (``heads`` with ``model.layer_head(PATH)``) gets that layer hooked on the tiny model, whose
  layers and shapes are :data:`TINY_LAYERS`.
"""

from __future__ import annotations

from typing import Any, Sequence

import pluggy
import pytest
import torch

from pipeline_core.kit.tiny import (TINY_CLASSES, TINY_LAYERS, TINY_MODEL, TINY_SIZE, TinyNet, installed_registry,
                                    make_registry, plugin_manager, registered, run_recipe_dict, tiny_recipe)
from pipeline_core.model import ModelDef
from pipeline_core.registry import Registry

__all__ = [
    "check_step",
    "registered",
    "run_recipe_dict",
    "tiny_recipe",
    "make_registry",
    "plugin_manager",
    "installed_registry",
    "isolated_registry",
    "isolated_plugin_manager",
    "tiny_model_def",
    "TinyNet",
    "TINY_MODEL",
    "TINY_CLASSES",
    "TINY_SIZE",
    "TINY_LAYERS",
]

# the kit's names are offered here: help(), the docs and a run.json that records an in-memory
# TinyNet name them by this module, as before they moved to the kit's private room
for _offered in (TinyNet, installed_registry, make_registry, plugin_manager, registered, run_recipe_dict, tiny_recipe):
    _offered.__module__ = __name__
del _offered


# -- check_step ---------------------------------------------------------------------------------


def check_step(step_cls: type, params: dict[str, Any] | None = None, registry: Registry | None = None, *,
               devices: Sequence[str | torch.device] | None = None,
               dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
               run: bool = True) -> None:
    """Contract checks for a step class; raises AssertionError naming what broke.

    ``params`` are the step's keys as a recipe would give them (without ``step``); they must
    be valid for a batch of 2 on the tiny 10-class model at 32 px. What is checked:

    - the class registers (name, kind, Params, its kind's method), its name is not taken by
      another step in ``registry`` (default: the built-ins), it has a docstring and every
      parameter a description (``pipeline steps`` and ``pipeline schema`` show them), and its
      recipe entry has a JSON Schema;
    - Params accept ``params``, refuse an unknown key, and per-iteration steps also accept the
      schedule keys ``from``, ``until`` and ``every``;
    - on each of ``devices`` (default: the CPU, and CUDA when there is one) and ``dtypes``:
      transforms keep device, dtype, batch and channels (``on: view`` ones may return several
      views of each image, a multiple of the batch, and must be differentiable), objectives
      return one finite loss per image on the image's device with a finite gradient, updates
      change the parameters in place keeping device, dtype and shape, init steps return a
      (B or 1, 3, H, W) floating image on the run's device;
    - with the same seed, the step gives the same result twice (draw random numbers from
      ``ctx.generator(self)``, never from the global generator);
    - with ``run``: inside a real 6-iteration run of the tiny model, a per-iteration step
      scheduled ``from: 1, until: 5, every: 2`` is called on iterations 1 and 3 only and the
      run completes (init and param steps: the run completes).
    """
    from pipeline_core.kit.contract import check_step_contract

    check_step_contract(step_cls, params, registry, devices=devices, dtypes=dtypes, run=run)


# -- pytest fixtures ----------------------------------------------------------------------------


@pytest.fixture
def isolated_registry() -> Registry:
    """Built-in plugins and the tiny test model only: installed plugins are not loaded."""
    return make_registry()


@pytest.fixture
def isolated_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager with the built-ins and the tiny test model, no installed plugins."""
    return plugin_manager()


@pytest.fixture
def tiny_model_def() -> ModelDef:
    """The tiny 10-class test model's definition (name ``tiny-test-model``)."""
    return TINY_MODEL
