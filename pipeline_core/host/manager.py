"""Finding, loading and calling plugins.

Built-in plugins and third-party ones go through the same hooks. A plugin that fails to
import, needs another API version, defines a hook this host does not know, raises in a hook
or registers a taken name is reported in one line naming it (and, for a clash, the plugin
that has the name); the host and every other plugin keep working, so a recipe that does not
use the broken plugin still runs.

Environment:

``PIPELINE_DISABLE_PLUGIN_AUTOLOAD=1``
    load no entry-point plugins (built-ins only).
``PIPELINE_PLUGINS=name1,name2``
    load only these entry-point plugins (by entry-point name, as ``pipeline plugins`` shows).
"""

from __future__ import annotations

import importlib.metadata as md
import os
from typing import Any, Iterable

import pluggy

from pipeline_core import hookspecs
from pipeline_core.errors import PluginError
from pipeline_core.registry import PluginInfo, Registry

DISABLE_ENV = "PIPELINE_DISABLE_PLUGIN_AUTOLOAD"
SELECT_ENV = "PIPELINE_PLUGINS"
HOOKS = ("register_steps", "register_models", "register_outputs")
_TRUE = ("1", "true", "yes", "on")


def get_plugin_manager(*, autoload: bool | None = None, builtins: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the hookspecs, the built-ins and (unless disabled) installed plugins.

    ``autoload=None`` follows ``PIPELINE_DISABLE_PLUGIN_AUTOLOAD``. Nothing here raises for a
    broken plugin: ``pm.problems`` lists one line per plugin that could not be loaded,
    ``pm.skipped`` has their :class:`PluginInfo` and ``pm.dists`` the package and version of
    each entry-point plugin that loaded.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.problems = []  # type: ignore[attr-defined]
    pm.skipped = {}  # type: ignore[attr-defined]
    pm.dists = {}  # type: ignore[attr-defined]
    if builtins:
        from pipeline_plugins import BUILTIN_PLUGINS

        # one module per step, each a plugin named for its module (pipeline_plugins.transform.blur),
        # checked and registered exactly as an entry point's plugin is
        for module in BUILTIN_PLUGINS:
            register_plugin(pm, module, module.__name__)
    if autoload is None:
        autoload = os.environ.get(DISABLE_ENV, "").strip().lower() not in _TRUE
    if autoload:
        _load_entry_points(pm)
    return pm


def register_plugin(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Register ``plugin`` under ``name`` after checking it; PluginError says what is wrong.

    Checks its ``PIPELINE_API`` and that every ``@hookimpl`` it defines is a hook of this
    host (pluggy would otherwise only notice a misspelt hook when asked, and then for all
    plugins at once). On failure the plugin is left unregistered.
    """
    check_api(plugin)
    if pm.get_plugin(name) is not None:
        raise PluginError(f"the plugin name '{name}' is already taken")
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(_one_line(exc, with_type=False)) from None
    except ValueError as exc:  # the same object registered twice under two names
        raise PluginError(str(exc)) from None
    unknown = sorted(
        caller.name
        for caller in (pm.get_hookcallers(plugin) or [])
        if caller.spec is None and not all(impl.optionalhook for impl in caller.get_hookimpls())
    )
    if unknown:
        pm.unregister(plugin)
        raise PluginError(
            f"it implements {', '.join(repr(u) for u in unknown)}, which this host does not know "
            f"(plugin API {hookspecs.API_VERSION} has {', '.join(HOOKS)})"
        )


def _selected() -> set[str] | None:
    raw = os.environ.get(SELECT_ENV)
    if raw is None or not raw.strip():
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _entry_points() -> Iterable[md.EntryPoint]:
    return md.entry_points(group=hookspecs.ENTRY_POINT_GROUP)


def _dist_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", ""
    return dist.metadata["Name"] or "?", dist.version or ""


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    wanted = _selected()
    seen: set[str] = set()
    for ep in _entry_points():
        seen.add(ep.name)
        if wanted is not None and ep.name not in wanted:
            continue
        package, version = _dist_of(ep)
        info = PluginInfo(ep.name, package=package, version=version)
        try:
            if ep.name in pm.dists:
                other = PluginInfo(ep.name, *pm.dists[ep.name])
                raise PluginError(f"plugin {other.label} already uses the name '{ep.name}'")
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - anything a broken import does
                raise PluginError(f"it failed to import: {_one_line(exc)}") from None
            register_plugin(pm, plugin, ep.name)
        except PluginError as exc:
            _skip(pm, info, f"plugin {info.label} was skipped: {exc}")
            continue
        pm.dists[ep.name] = (package, version)
    for name in sorted((wanted or set()) - seen):
        installed = ", ".join(sorted(seen)) or "none"
        _skip(pm, PluginInfo(name, package="?"),
              f"plugin '{name}' named in {SELECT_ENV} is not installed (installed plugins: {installed})")


def _skip(pm: pluggy.PluginManager, info: PluginInfo, line: str) -> None:
    info.problems.append(line)
    pm.problems.append(line)  # type: ignore[attr-defined]
    pm.skipped.setdefault(info.name, info)  # type: ignore[attr-defined]


def check_api(plugin: Any) -> None:
    """Refuse a plugin whose ``PIPELINE_API`` specifier excludes this host's API_VERSION."""
    wanted = getattr(plugin, "PIPELINE_API", None)
    if wanted is None:
        return
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        spec = SpecifierSet(str(wanted))
    except InvalidSpecifier:
        raise PluginError(f"its PIPELINE_API '{wanted}' is not a version specifier such as '>=1.0,<2'") from None
    if hookspecs.API_VERSION not in spec:
        raise PluginError(f"it needs plugin API {wanted}, this host provides {hookspecs.API_VERSION}")


def _one_line(exc: BaseException, with_type: bool = True) -> str:
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not with_type:
        return text[0].strip() if text else type(exc).__name__
    return f"{type(exc).__name__}: {text[0].strip()}" if text else type(exc).__name__


def build_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """Call every plugin's register hooks, one plugin at a time, into a fresh registry.

    Plugins are called in registration order (built-ins first), so on a name clash the
    built-in keeps the name.
    """
    pm = pm or get_plugin_manager()
    registry = Registry()
    for name, info in getattr(pm, "skipped", {}).items():
        registry.plugins[name] = info
    registry.problems.extend(getattr(pm, "problems", []))
    dists = getattr(pm, "dists", {})
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        info = registry._as(name).plugins[name]
        if name in dists:
            info.package, info.version = dists[name]
        elif not name.startswith("pipeline_plugins."):
            info.package = "(registered in process)"
        call_register_hooks(pm, registry, name, plugin)
    registry._current = "(host)"
    return registry


def call_register_hooks(pm: pluggy.PluginManager, registry: Registry, name: str, plugin: Any) -> str | None:
    """Call ``plugin``'s register hooks into ``registry``; the one-line problem if it failed.

    A plugin whose hook raises is withdrawn entirely (everything it registered is removed)
    and reported; what other plugins registered is untouched.
    """
    info = registry._as(name).plugins[name]
    hook_name = ""
    try:
        check_api(plugin)
        for hook_name in HOOKS:
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                if impl.plugin is plugin:
                    registry._as(name)
                    impl.function(**({"registry": registry} if "registry" in impl.argnames else {}))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin never takes the host down
        if not isinstance(exc, PluginError):
            reason = f"{hook_name} raised {_one_line(exc)}"
        else:
            reason = f"in {hook_name}: {exc}" if hook_name else str(exc)
        line = f"plugin {info.label} was skipped: {reason}"
        registry._drop(name, line)
        registry._problem(name, line)
        return line
    return None
