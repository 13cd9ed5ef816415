"""The plugin API: every hook a plugin may implement.

This module is the reference for plugin authors. A plugin is any importable object (usually
a module) with functions marked ``@hookimpl`` whose names match the specs below. Third-party
packages announce their plugin through the entry-point group :data:`ENTRY_POINT_GROUP`::

    # setup.cfg of your package
    [options.entry_points]
    pipeline_core.plugins =
        my_prior = my_package.plugin

The built-in steps in ``pipeline_plugins`` register through exactly these hooks. The guide
for plugin authors, with a complete package, is ``docs/plugins.md``.

Compatibility promise (:data:`API_VERSION`, ``MAJOR.MINOR``): the API is these hooks and
exactly the names listed in :data:`PUBLIC_API`, imported from the modules it names (each
module's ``__all__`` is that list). Everything else is private: the sub-packages
``pipeline_core.recipe``, ``.run``, ``.output``, ``.host``, ``.scoring``, ``.sweep``, ``.commands`` and
``.kit`` are the host's own rooms and change without notice, and so does any name with a leading underscore. A minor
bump only adds hooks, optional hook arguments, names, methods or optional attributes;
existing plugins keep working. A major bump may remove or change something and is announced
in the changelog one minor release ahead. A plugin that needs a given API declares it with a
module-level ``PIPELINE_API = ">=1.1,<2"`` (a version specifier, checked when the plugin
loads; a mismatch skips the plugin with a one-line report; without it the plugin always
loads).

Changes: 1.1 made public what plugins were already told to use (:mod:`pipeline_core.context`,
:mod:`pipeline_core.parameterization`, :mod:`pipeline_core.registry`), added
``step.MAX_SIDE``, ``context.to_device``, ``ModelOutput.per_image`` (view steps that show the
model several views of each image) and ``testing.installed_registry``. 1.2 opened the inside
of the model to objectives: a step that lists ``model.layer_head(PATH)`` in its ``heads``
reads that module's output with
``ModelOutput.layer(PATH)`` (``model.LAYER_PREFIX``, ``model.layer_paths``; only the layers in
use are hooked), ``objectives.LayerObjective`` and ``LayerParams`` (weight, sign, images, a
channel check before the first iteration; ``Indices`` and ``index_list`` for ``0-15`` ranges),
``ModelAdapter.layer_shapes``, the optional ``ModelDef.skeleton`` (the architecture without
weights, so validation checks layer paths offline), an optional ``head_key`` method on steps
(the recipe key a wrong layer path is reported on) and ``testing.TINY_LAYERS``. 1.3 added
``ModelOutput.per_view`` (every view's outputs, for statistics an average over views would
change) and ``ModelAdapter.add_layers`` (hook layers found in the built model, from ``setup``).
1.4 added ``Step.ramp`` (a parameter given as one number or ``[start, end]``, at an iteration).
1.5 added the Python API (:mod:`pipeline_core.api`, also at the package's face: ``run``,
``visualize``, ``layers``, ``classes``, ``Model``, ``RunOutput``) and ``Registry.add_model_family``
(models by a prefix, such as ``timm:NAME``, made when a recipe names one). 1.6 made public what
steps were already handed: :class:`pipeline_core.plan.Plan` (``bind(plan)``) and
:class:`pipeline_core.schedule.Schedule` (``self.schedule``), which lived in the private
``recipe`` room (still importable from there), :func:`pipeline_core.context.seeded_draw` (a
seeded draw made on the device where one is used) and ``Step.places`` (where a transform can act;
the host refuses any other ``on:`` before ``bind``).

A plugin that fails to import, declares an incompatible API, implements a hook not listed
here, or raises in a hook is skipped with a one-line report and everything it registered is
withdrawn; a name already registered by another plugin is refused (the first one keeps it)
and reported naming both. Nothing a plugin does stops the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pipeline_core.registry import Registry

PROJECT = "pipeline_core"
ENTRY_POINT_GROUP = "pipeline_core.plugins"
API_VERSION = "1.6"

#: What a plugin may import, by module: the promise above, as data (a test imports every name
#: from its module and checks that no module offers more).
PUBLIC_API: dict[str, tuple[str, ...]] = {
    "pipeline_core": ("API_VERSION", "hookimpl", "__version__", "Model", "RunOutput", "run", "visualize", "layers",
                      "classes"),
    "pipeline_core.api": ("Model", "RunOutput", "run", "visualize", "layers", "classes"),
    "pipeline_core.hookspecs": ("PROJECT", "ENTRY_POINT_GROUP", "API_VERSION", "PUBLIC_API", "hookspec", "hookimpl",
                                "register_steps", "register_models", "register_outputs"),
    "pipeline_core.step": ("MAX_SIDE", "KIND_METHOD", "PLACES", "StepKind", "StepParams", "TransformParams", "Step",
                           "ramp_range"),
    "pipeline_core.context": ("RunContext", "seeded_draw", "step_seed", "to_device"),
    "pipeline_core.plan": ("Plan",),
    "pipeline_core.schedule": ("Schedule",),
    "pipeline_core.model": ("LAYER_PREFIX", "HeadDef", "ModelInfo", "ModelSpec", "ModelDef", "ModelOutput",
                            "ModelAdapter", "layer_head", "layer_paths"),
    "pipeline_core.objectives": ("ClassRef", "Targets", "TargetParams", "ClassParams", "ClassObjective", "resolve_classes",
                                 "list_len", "l1_image", "Indices", "index_list", "LayerParams", "LayerObjective"),
    "pipeline_core.parameterization": ("Parameterization", "PixelImage", "FourierImage", "colour_mixing_matrix",
                                       "spectrum_scale", "IMAGENET_RGB_EIGENVALUES", "IMAGENET_RGB_EIGENVECTORS"),
    "pipeline_core.writers": ("FrameInfo", "Writer", "grid", "write_atomically"),
    "pipeline_core.registry": ("Registry", "Entry", "PluginInfo"),
    "pipeline_core.errors": ("PipelineError", "RecipeError", "ModelLoadError", "OutputError", "RunFailed",
                             "PluginError", "Location", "closest", "did_you_mean"),
    "pipeline_core.regular": ("NotRegularFile", "problem", "open_regular", "read_text", "read_bytes", "check"),
    "pipeline_core.testing": ("check_step", "registered", "run_recipe_dict", "tiny_recipe", "make_registry",
                              "plugin_manager", "installed_registry", "isolated_registry", "isolated_plugin_manager",
                              "tiny_model_def", "TinyNet", "TINY_MODEL", "TINY_CLASSES", "TINY_SIZE", "TINY_LAYERS"),
}
__all__ = list(PUBLIC_API["pipeline_core.hookspecs"])

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_steps(registry: "Registry") -> None:
    """Add step classes with ``registry.add_step(StepClass)``.

    Called once when the host starts, before any recipe is read. Return nothing. A step
    class follows :mod:`pipeline_core.step`: a unique ``name``, a ``kind``, a pydantic
    ``Params`` model and the method its kind needs; a malformed class raises
    :class:`~pipeline_core.errors.PluginError` from ``add_step``. A name that another plugin
    already registered is refused and reported with both plugins named; the plugin's other
    registrations stand.
    """


@hookspec
def register_models(registry: "Registry") -> None:
    """Add models by name with ``registry.add_model(ModelDef(...))``.

    Called once when the host starts. Register cheaply: a :class:`~pipeline_core.model.ModelDef`
    carries a ``build`` callable that is only called when a recipe actually uses the model,
    plus the model's preprocessing (mean, std, input size) and class names, which validation
    reads without building anything.
    """


@hookspec
def register_outputs(registry: "Registry") -> None:
    """Add output writers with ``registry.add_output(WriterClass)``.

    Called once when the host starts. A writer (see :mod:`pipeline_core.writers`)
    receives every frame the run emits and the final images, and writes its own file into
    the run folder (a GIF, a metrics file...). A recipe enables it under
    ``output.writers``.
    """
