"""Run image classifiers in reverse: gradient descent on the input, driven by YAML recipes.

The package's face is the plugin API: the top-level modules listed in
:data:`pipeline_core.hookspecs.PUBLIC_API` (hooks, the step contract, the run context, the
run's plan and a step's schedule, models, objectives, image parameterisations, writers, the
registry, errors and the testing kit). The sub-packages are the host's own rooms, private to
it, each importing only the face and the rooms below it: ``output`` (frames, video, metrics,
the report), ``recipe`` (reading and validating recipes), ``host`` (loading plugins), ``run``
(the engine), ``scoring`` (images scored by other classifiers), ``sweep`` (one recipe over many
settings, shared among torchrun's processes), ``commands`` (the command line) and, on top
with the Python API, ``kit`` (the testing kit's machinery, without pytest).

For notebooks and scripts, the Python API (:mod:`pipeline_core.api`) is here too: ``run``,
``visualize``, ``layers``, ``classes``, ``Model`` and ``RunOutput`` (docs/python.md).
"""

__version__ = "0.1.0"

__all__ = ["API_VERSION", "hookimpl", "__version__", "Model", "RunOutput", "run", "visualize", "layers", "classes"]

#: the Python API (:mod:`pipeline_core.api`), at the package's face
_API = ("Model", "RunOutput", "visualize", "layers", "classes")


def __getattr__(name: str) -> object:
    # imported on first use: starting the command imports this package before it can catch a
    # Ctrl-C, so the package itself imports nothing (pluggy and the hooks come with the CLI)
    if name in ("API_VERSION", "hookimpl"):
        from pipeline_core import hookspecs

        return getattr(hookspecs, name)
    if name in _API:
        from pipeline_core import api

        return getattr(api, name)
    if name == "run":
        # pipeline_core.run is also the engine's sub-package; that module is callable and calls
        # api.run, so pipeline_core.run(recipe, model=...) works whichever was imported first
        import importlib

        return importlib.import_module("pipeline_core.run")
    raise AttributeError(f"module 'pipeline_core' has no attribute {name!r}")
