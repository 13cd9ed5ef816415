"""The testing kit's tiny world, without pytest: a 10-class model, registries and quick runs.

:mod:`pipeline_core.testing` offers these names to plugin authors (with its pytest fixtures);
they live here so that the kit's own contract checks (:mod:`.contract`) can use them without
importing the public module, which imports pytest.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pluggy
import torch
from torch import nn

from pipeline_core.errors import PluginError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.model import ModelDef, ModelInfo
from pipeline_core.registry import Registry

if TYPE_CHECKING:
    from pipeline_core.run.engine import RunResult

TINY_CLASSES = tuple(f"class {i}" for i in range(10))
TINY_SIZE = 32
#: the tiny model's layers a layer objective can read, with one image's output shape at 32 px;
#: ``check_step(MyObjective, {"layer": "features.2", ...})`` exercises a layer plugin on it
TINY_LAYERS = {"features.0": (8, 32, 32), "features.1": (8, 32, 32), "features.2": (8, 32, 32),
               "features.3": (16, 16, 16), "features.4": (16, 16, 16), "features.5": (16, 1, 1), "fc": (10,)}


class TinyNet(nn.Module):
    """A 10-class convolutional classifier with fixed random weights: fast, any input size."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(16, len(TINY_CLASSES))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


TINY_MODEL = ModelDef(
    name="tiny-test-model",
    build=lambda spec: TinyNet(),
    skeleton=lambda spec: TinyNet(),
    info=ModelInfo(categories=TINY_CLASSES, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=TINY_SIZE),
    description="a tiny random 10-class model for tests",
)


class _TinyModelPlugin:
    @hookimpl
    def register_models(self, registry: Registry) -> None:
        registry.add_model(TINY_MODEL)


def _plugin_name(plugin: Any, index: int = 0) -> str:
    return getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{index}"


def plugin_manager(*plugins: Any, builtins: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the built-ins, the tiny test model and ``plugins``; nothing installed.

    Entry-point plugins installed in the environment are never loaded, whatever the
    environment variables say. A plugin the host would refuse raises :class:`PluginError`.
    """
    from pipeline_core.host.manager import get_plugin_manager, register_plugin

    pm = get_plugin_manager(autoload=False, builtins=builtins)
    pm.register(_TinyModelPlugin(), name="pipeline_core.testing")
    for i, plugin in enumerate(plugins):
        register_plugin(pm, plugin, _plugin_name(plugin, i))
    return pm


def make_registry(*plugins: Any, builtins: bool = True) -> Registry:
    """A registry with the built-ins (and the tiny test model) plus ``plugins``; nothing installed.

    Unlike the host, which skips a broken plugin with a warning, this raises
    :class:`PluginError` with the host's one-line report, so a test fails where it should.
    """
    from pipeline_core.host.manager import build_registry

    registry = build_registry(plugin_manager(*plugins, builtins=builtins))
    if registry.problems:
        raise PluginError(registry.problems[0])
    return registry


def installed_registry() -> Registry:
    """The registry exactly as the ``pipeline`` command builds it: the built-ins and every
    installed plugin, loaded through its entry point. For the one test a plugin package needs
    that the others cannot give: that its entry point is declared and loads (look in
    ``registry.plugins`` and ``registry.problems``). It honours the same environment
    variables as the command (``PIPELINE_DISABLE_PLUGIN_AUTOLOAD``, ``PIPELINE_PLUGINS``)."""
    from pipeline_core.host.manager import build_registry

    return build_registry()


@contextlib.contextmanager
def registered(plugin: Any, registry: Registry | None = None, name: str | None = None) -> Iterator[Registry]:
    """Register ``plugin``'s hooks into ``registry`` (default: a fresh isolated one) for one block.

    The plugin goes through the host's own checks, so what passes here loads the same way
    from an entry point. Afterwards the registry is exactly as before, so one test's plugin
    never leaks into the next. A problem (unknown hook, API mismatch, a hook that raises, a
    name another plugin already has) raises :class:`PluginError` with the host's message.
    """
    from pipeline_core import hookspecs
    from pipeline_core.host.manager import call_register_hooks, register_plugin

    registry = registry if registry is not None else make_registry()
    name = name or _plugin_name(plugin)
    saved = {table: dict(getattr(registry, table)) for table in ("steps", "models", "writers")}
    saved_plugins = copy.deepcopy(registry.plugins)
    saved_problems, saved_withdrawn, saved_current = list(registry.problems), dict(registry.withdrawn), registry._current
    try:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        register_plugin(pm, plugin, name)
        registry._as(name).plugins[name].package = "(registered in process)"
        problem = call_register_hooks(pm, registry, name, plugin)
        new = registry.problems[len(saved_problems):]
        if problem or new:
            raise PluginError(problem or new[0])
        yield registry
    finally:
        for table, entries in saved.items():
            getattr(registry, table).clear()
            getattr(registry, table).update(entries)
        registry.plugins.clear()
        registry.plugins.update(saved_plugins)
        registry.problems[:] = saved_problems
        registry.withdrawn.clear()
        registry.withdrawn.update(saved_withdrawn)
        registry._current = saved_current


def tiny_recipe(**changes: Any) -> dict[str, Any]:
    """A small valid recipe dict on the tiny model: 4 iterations, 32 px noise, no video.

    Change any top-level key with keyword arguments; the ``steps`` list is a fresh copy each
    call, so inserting into it is safe.
    """
    recipe: dict[str, Any] = {
        "iterations": 4,
        "seed": 0,
        "device": "cpu",
        "model": {"name": TINY_MODEL.name},
        "steps": [
            {"step": "init-noise", "scale": 0.04, "offset": 0.5, "size": TINY_SIZE},
            {"step": "L1-loss", "target": 3},
            {"step": "gradient-step", "lr": 0.01},
        ],
        "output": {"video": False},
    }
    recipe.update(copy.deepcopy(changes))
    return recipe


def run_recipe_dict(recipe: dict[str, Any], run_dir: Path | str, registry: Registry | None = None,
                    overrides: Sequence[str] = (), *, check: bool = True,
                    base_dir: Path | str | None = None) -> "RunResult":
    """Validate and run ``recipe`` on the CPU into ``run_dir``; returns the RunResult.

    A recipe without a ``model`` section runs on the tiny test model (never a download).
    Relative paths in the recipe are read from ``base_dir`` (default: ``run_dir``'s parent).
    With ``check`` (the default) a run that does not complete raises AssertionError with the
    run's own message, so a test failure says why. An invalid recipe raises RecipeError.
    """
    import yaml

    from pipeline_core.run.engine import Run
    from pipeline_core.run.progress import Progress
    from pipeline_core.recipe.loader import load_recipe

    recipe = copy.deepcopy(recipe)
    recipe.setdefault("model", {"name": TINY_MODEL.name})
    registry = registry if registry is not None else make_registry()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(base_dir) if base_dir is not None else run_dir.parent
    path = folder / f"{run_dir.name}.recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    loaded = load_recipe(path, registry, tuple(overrides))
    result = Run(loaded, registry, run_dir, Progress(), device="cpu").execute()
    if check and result.status != "completed":
        raise AssertionError(f"the run {result.status} after {result.iterations_done} iterations: {result.message}")
    return result
