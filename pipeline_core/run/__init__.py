"""Running a recipe, private to the host.

The engine is split by job so each can change alone: the loop (one iteration), the run folder
(what is left behind however a run ends), and faults (what a failure is called and advised).
"""

import sys as _sys
import types as _types


class _CallableRoom(_types.ModuleType):
    """``pipeline_core.run`` is both this sub-package and, at the package's face, the API's
    :func:`pipeline_core.api.run`: calling the module calls it."""

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        from pipeline_core.api import run

        return run(*args, **kwargs)

    @property
    def __signature__(self):  # type: ignore[no-untyped-def]
        """api.run's signature, for help() and editors (``from pipeline_core.api import run`` is the plain function)."""
        import inspect

        from pipeline_core.api import run

        return inspect.signature(run)


_sys.modules[__name__].__class__ = _CallableRoom
