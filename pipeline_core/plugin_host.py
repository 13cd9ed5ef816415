"""Finding, loading and calling plugins.

Built-in plugins and third-party ones go through the same hooks. A third-party plugin that
fails to import, needs another API version, raises in a hook or registers a taken name is
reported in one line and skipped; the host and every other plugin keep working.

Environment:

``PIPELINE_DISABLE_PLUGIN_AUTOLOAD=1``
    load no entry-point plugins (built-ins only).
``PIPELINE_PLUGINS=name1,name2``
    load only these entry-point plugins (by entry-point name).
"""

from __future__ import annotations

import importlib.metadata as md
import os
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import PluginInfo, Registry

DISABLE_ENV = "PIPELINE_DISABLE_PLUGIN_AUTOLOAD"
SELECT_ENV = "PIPELINE_PLUGINS"
HOOKS = ("register_steps", "register_models", "register_outputs")


def get_plugin_manager(*, autoload: bool | None = None, builtins: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the hookspecs, the built-ins and (unless disabled) installed plugins.

    ``pm.problems`` lists one line per plugin that could not be loaded.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.problems = []  # type: ignore[attr-defined]
    pm.dists = {}  # type: ignore[attr-defined]
    if builtins:
        from pipeline_plugins import BUILTIN_PLUGINS

        for module in BUILTIN_PLUGINS:
            pm.register(module, name=module.__name__)
    if autoload is None:
        autoload = os.environ.get(DISABLE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")
    if autoload:
        _load_entry_points(pm)
    pm.check_pending()
    return pm


def _selected() -> set[str] | None:
    raw = os.environ.get(SELECT_ENV)
    if raw is None or not raw.strip():
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _entry_points() -> Iterable[md.EntryPoint]:
    return md.entry_points(group=hookspecs.ENTRY_POINT_GROUP)


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    wanted = _selected()
    for ep in _entry_points():
        if wanted is not None and ep.name not in wanted:
            continue
        dist = getattr(ep, "dist", None)
        package = dist.metadata["Name"] if dist is not None else "?"
        version = dist.version if dist is not None else ""
        try:
            plugin = ep.load()
            _check_api(plugin)
            if pm.get_plugin(ep.name) is not None:
                raise PluginError(f"the name '{ep.name}' is already used by another plugin")
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - any failure of a third-party plugin is reported
            pm.problems.append(f"plugin '{ep.name}' ({package}) was skipped: {_one_line(exc)}")
            continue
        pm.dists[ep.name] = (package, version)


def _check_api(plugin: Any) -> None:
    wanted = getattr(plugin, "PIPELINE_API", None)
    if wanted is None:
        return
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        spec = SpecifierSet(str(wanted))
    except InvalidSpecifier:
        raise PluginError(f"PIPELINE_API '{wanted}' is not a version specifier such as '>=1.0,<2'") from None
    if hookspecs.API_VERSION not in spec:
        raise PluginError(f"needs plugin API {wanted}, this host provides {hookspecs.API_VERSION}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def build_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """Call every plugin's register hooks, one plugin at a time, into a fresh registry."""
    pm = pm or get_plugin_manager()
    registry = Registry()
    registry.problems.extend(getattr(pm, "problems", []))
    dists = getattr(pm, "dists", {})
    for name, plugin in pm.list_name_plugin():
        info = registry._as(name).plugins[name]
        if name in dists:
            info.package, info.version = dists[name]
        elif not name.startswith("pipeline_plugins"):
            info.package = "(registered in process)"
        for hook_name in HOOKS:
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                try:
                    impl.function(registry=registry)
                except Exception as exc:  # noqa: BLE001
                    line = f"plugin '{name}' failed in {hook_name}: {_one_line(exc)}"
                    if isinstance(exc, PluginError):
                        line = f"plugin '{name}': {exc}"
                    registry.problems.append(line)
                    info.problem = info.problem or line
    for line in getattr(pm, "problems", []):
        name = line.split("'")[1] if "'" in line else line
        registry.plugins.setdefault(name, PluginInfo(name, problem=line))
    return registry
