"""The modules of the old flat layout, kept as deprecated aliases of where their steps went.

The built-ins were once one flat folder (``pipeline_plugins.view_transforms`` held jitter and
random-scale, ``pipeline_plugins.crops`` the crops and the seeded-draw helper); each step now
has its own module in the package of its kind. Code that still imports an old path gets a
module holding the same names, read from their new homes, and a DeprecationWarning naming
them. The aliases hold no hooks, so registering one as a plugin registers nothing twice.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Sequence

PACKAGE = __name__.rpartition(".")[0]

#: old module (under the package) -> the modules, relative to the package, its names now live in
MOVED: dict[str, tuple[str, ...]] = {
    "init_noise": ("init.init_noise",),
    "init_image": ("init.init_image", "photo_files"),
    "fourier_image": ("param.fourier_image",),
    "phase_image": ("param.phase_image",),
    "blur": ("transform.blur",),
    "interpolate": ("transform.interpolate",),
    "color_jitter": ("transform.color_jitter",),
    "rotate": ("transform.rotate",),
    "view_transforms": ("transform.jitter", "transform.random_scale"),
    "crops": ("transform.crops",),
    "view_noise": ("transform.noise",),
    "spectrum_jitter": ("transform.spectrum_jitter",),
    "octave": ("transform.octave",),
    "skip_gradient": ("transform.skip_gradient",),
    "l1_loss": ("objective.l1_loss",),
    "cross_entropy": ("objective.cross_entropy",),
    "target_blend": ("objective.target_blend",),
    "layer_objectives": ("objective.channel", "objective.neuron", "objective.direction", "objective.layer",
                         "objective.channel_interpolate"),
    "diversity": ("objective.diversity",),
    "keep_photo": ("objective.keep_photo",),
    "bn_statistics": ("objective.bn_statistics",),
    "tone": ("objective.tone",),
    "updates": ("update.gradient_step", "update.sign_step", "update.adam"),
    "nadam": ("update.nadam",),
}

#: public names an old module had that now live under another name: old -> {name: (module, name)}
RENAMED: dict[str, dict[str, tuple[str, str]]] = {
    "crops": {"draw": ("pipeline_core.context", "seeded_draw")},
    "layer_objectives": {"InterpolateParams": (f"{PACKAGE}.objective.channel_interpolate",
                                               "ChannelInterpolateParams")},
}

#: hook functions are left out of an alias: the step modules themselves are the plugins
_HOOKS = frozenset({"register_steps", "register_models", "register_outputs"})


def new_homes(old: str) -> list[str]:
    """The full names of the modules that hold what ``PACKAGE.old`` held."""
    return [f"{PACKAGE}.{target}" for target in MOVED[old]]


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``PACKAGE.<old>`` for the old modules only, after every ordinary finder failed."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        package, _, old = fullname.rpartition(".")
        if package != PACKAGE or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        old = module.__name__.rpartition(".")[2]
        homes = new_homes(old)
        # stacklevel 2: warnings skips the import machinery's frames, so this names the importing line
        warnings.warn(f"{module.__name__} is deprecated: import from "
                      f"{' or '.join(homes)}", DeprecationWarning, stacklevel=2)
        for home in homes:
            for key, value in vars(importlib.import_module(home)).items():
                if not key.startswith("__") and key not in _HOOKS and not hasattr(module, key):
                    setattr(module, key, value)
        for key, (home, name) in RENAMED.get(old, {}).items():
            setattr(module, key, getattr(importlib.import_module(home), name))


def install() -> None:
    """Let the old module paths import (once per interpreter); ordinary modules are found first."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
