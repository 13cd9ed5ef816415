"""The registry handed to plugins: the one place steps, models and writers are looked up.

Each ``add_*`` call records which plugin made it, so ``pipeline plugins`` can say who provides
what and a name clash can name both plugins. A clash never replaces the first registration:
the second one is refused and reported in one line, and the plugin keeps everything else it
registered. A registration that is malformed (a step without a name, a writer that is not a
:class:`~pipeline_core.writers.Writer`) raises :class:`~pipeline_core.errors.PluginError`
at once, so the author sees the mistake where it was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel

from pipeline_core.errors import PluginError, did_you_mean
from pipeline_core.step import KIND_METHOD, Step, StepKind, StepParams, TransformParams

if TYPE_CHECKING:
    from pipeline_core.model import ModelDef
    from pipeline_core.writers import Writer

#: the registry tables, by the word ``pipeline plugins`` uses for their entries
_TABLES = {"step": "steps", "model": "models", "writer": "writers"}


__all__ = [
    "Registry",
    "Entry",
    "PluginInfo",
]

@dataclass
class Entry:
    """One registered name: the object behind it and the plugin that registered it."""

    name: str
    obj: Any
    plugin: str


@dataclass
class PluginInfo:
    """One loaded (or refused) plugin, as ``pipeline plugins`` shows it."""

    name: str
    package: str = "(built in)"
    version: str = ""
    registers: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def problem(self) -> str | None:
        """Every problem of this plugin on one line, or None."""
        return "; ".join(self.problems) if self.problems else None

    @property
    def label(self) -> str:
        """``'name' (package version)``: how one-line reports name a plugin."""
        if self.package.startswith("("):
            return f"'{self.name}'"
        version = f" {self.version}" if self.version else ""
        return f"'{self.name}' ({self.package}{version})"


class Registry:
    """Steps, models and output writers by name, each with the plugin that provided it."""

    def __init__(self) -> None:
        self.steps: dict[str, Entry] = {}
        self.models: dict[str, Entry] = {}
        self.writers: dict[str, Entry] = {}
        #: prefix -> Entry whose obj makes the ModelDef of "prefix:NAME" (API 1.5)
        self.families: dict[str, Entry] = {}
        self.plugins: dict[str, PluginInfo] = {}
        #: one line per problem, in the order found; the CLI prints them as warnings
        self.problems: list[str] = []
        #: (kind, name) -> why: names a plugin registered and then lost because it failed
        self.withdrawn: dict[tuple[str, str], str] = {}
        self._current = "(host)"

    # -- used by the host while it calls one plugin's hooks -----------------------------
    def _as(self, plugin: str) -> "Registry":
        """Attribute the following ``add_*`` calls to ``plugin``."""
        self._current = plugin
        self.plugins.setdefault(plugin, PluginInfo(plugin))
        return self

    def _info(self, plugin: str) -> PluginInfo:
        return self.plugins.setdefault(plugin, PluginInfo(plugin))

    def _problem(self, plugin: str, line: str) -> None:
        self.problems.append(line)
        self._info(plugin).problems.append(line)

    def _drop(self, plugin: str, why: str) -> list[str]:
        """Remove everything ``plugin`` registered (it failed half-way); returns what was removed.

        Half a plugin is worse than none: its steps may rely on the model or writer it did not
        get to register. The names are remembered with ``why``, so a recipe that uses one is
        told that its plugin failed rather than that the name does not exist.
        """
        removed = []
        for what, table_name in _TABLES.items():
            table: dict[str, Entry] = getattr(self, table_name)
            for name in [n for n, e in table.items() if e.plugin == plugin]:
                del table[name]
                self.withdrawn[(what, name)] = why
                removed.append(f"{what} {name}")
        self._info(plugin).registers.clear()
        return removed

    def _add(self, what: str, name: str, obj: Any) -> None:
        table: dict[str, Entry] = getattr(self, _TABLES[what])
        current = self._info(self._current)
        if name in table:
            first = self._info(table[name].plugin)
            self._problem(
                current.name,
                f"plugin {current.label}: {what} '{name}' was not registered because plugin {first.label} "
                f"already registers it; uninstall one of them or ask its author to rename it",
            )
            return
        table[name] = Entry(name, obj, current.name)
        current.registers.append(f"{what} {name}")

    # -- the plugin-facing API -----------------------------------------------------------
    def add_step(self, step_cls: type[Step]) -> None:
        """Register a step class (see :mod:`pipeline_core.step`).

        The class is checked here, not when a recipe first uses it, so a mistake shows up
        in ``pipeline plugins`` and in the author's tests.
        """
        if not isinstance(step_cls, type) or not issubclass(step_cls, Step):
            raise PluginError(f"add_step() needs a subclass of pipeline_core.step.Step, got {step_cls!r}")
        name = getattr(step_cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"step class {step_cls.__name__} has no 'name'")
        kind = getattr(step_cls, "kind", None)
        if not isinstance(kind, StepKind):
            raise PluginError(f"step '{name}' has no valid 'kind' (one of {[k.value for k in StepKind]})")
        params = getattr(step_cls, "Params", None)
        if not (isinstance(params, type) and issubclass(params, StepParams)):
            raise PluginError(f"step '{name}': Params must subclass pipeline_core.step.StepParams")
        if kind is StepKind.TRANSFORM and not issubclass(params, TransformParams):
            # the loop reads params.on to place a transform; without it the step would register,
            # list and validate, and then fail in the middle of the first iteration
            raise PluginError(f"step '{name}' is a transform: its Params must subclass "
                              "pipeline_core.step.TransformParams (which adds 'on: image | view')")
        if kind.per_iteration:
            clash = {"from", "from_", "until", "every"} & set(params.model_fields)
            if clash:
                raise PluginError(f"step '{name}': Params may not define {sorted(clash)}; "
                                  "every per-iteration step gets these schedule keys from the host")
        method = KIND_METHOD[kind]
        if getattr(step_cls, method) is getattr(Step, method):
            raise PluginError(f"step '{name}' of kind '{kind.value}' must define {method}()")
        self._add("step", name, step_cls)

    def add_model(self, model: "ModelDef") -> None:
        """Register a model by name (see :class:`pipeline_core.model.ModelDef`)."""
        from pipeline_core.model import ModelDef

        if not isinstance(model, ModelDef):
            raise PluginError(f"add_model() needs a pipeline_core.model.ModelDef, got {model!r}")
        if not isinstance(model.name, str) or not model.name:
            raise PluginError("a ModelDef needs a non-empty 'name'")
        if not callable(model.build):
            raise PluginError(f"model '{model.name}': 'build' must be callable (it builds the nn.Module on demand)")
        self._add("model", model.name, model)

    def add_model_family(self, prefix: str, make: Callable[[str], "ModelDef"]) -> None:
        """Register every model named ``prefix:NAME`` at once (API 1.5): ``make(NAME)`` returns its
        :class:`~pipeline_core.model.ModelDef` when a recipe first names it (``timm:convnext_tiny``).
        ``make`` raises KeyError with a one-line message for a name the family does not have."""
        if not isinstance(prefix, str) or not prefix.isidentifier():
            raise PluginError(f"a model family's prefix must be a plain word, got {prefix!r}")
        if not callable(make):
            raise PluginError(f"model family '{prefix}': 'make' must be callable (it makes a ModelDef by name)")
        current = self._info(self._current)
        if prefix in self.families:
            first = self._info(self.families[prefix].plugin)
            self._problem(current.name, f"plugin {current.label}: model family '{prefix}:' was not registered "
                                        f"because plugin {first.label} already registers it")
            return
        self.families[prefix] = Entry(prefix, make, current.name)
        current.registers.append(f"model {prefix}:NAME")

    def add_output(self, writer_cls: "type[Writer]") -> None:
        """Register an output writer (see :mod:`pipeline_core.writers`)."""
        from pipeline_core.writers import Writer

        if not isinstance(writer_cls, type) or not issubclass(writer_cls, Writer):
            raise PluginError(f"add_output() needs a subclass of pipeline_core.writers.Writer, got {writer_cls!r}")
        name = getattr(writer_cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"writer class {writer_cls.__name__} has no 'name'")
        params = getattr(writer_cls, "Params", None)
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise PluginError(f"writer '{name}': Params must subclass pipeline_core.step.StepParams")
        self._add("writer", name, writer_cls)

    # -- lookups used by the host --------------------------------------------------------
    def _lookup(self, what: str, label: str, name: str) -> Any:
        table: dict[str, Entry] = getattr(self, _TABLES[what])
        try:
            return table[name].obj
        except KeyError:
            why = self.withdrawn.get((what, name))
            if why is not None:
                raise KeyError(f"{label} '{name}' is not available: {why}") from None
            hint = did_you_mean(name, table)
            skipped = [info.label for info in self.plugins.values() if any(" was skipped" in p for p in info.problems)]
            if not hint and skipped:  # the name may be one a plugin that could not load would have added
                hint = (f"; plugin {', '.join(skipped)} could not be loaded (see the warning above) and may be "
                        "the one that provides it")
            raise KeyError(f"unknown {label} '{name}'{hint}") from None

    def step(self, name: str) -> type[Step]:
        """The step class registered as ``name``; KeyError with a spelling hint otherwise."""
        return self._lookup("step", "step", name)

    def model(self, name: str) -> "ModelDef":
        """The model registered as ``name`` (or made by its family, ``prefix:NAME``); KeyError with
        a spelling hint otherwise."""
        prefix, sep, rest = name.partition(":")
        family = self.families.get(prefix) if sep and name not in self.models else None
        if family is not None:
            made = family.obj(rest)  # KeyError carries the family's own one-line message
            self.models[name] = Entry(name, made, family.plugin)
        return self._lookup("model", "model", name)

    def writer(self, name: str) -> "type[Writer]":
        """The output writer registered as ``name``; KeyError with a spelling hint otherwise."""
        return self._lookup("writer", "output writer", name)

    def provider(self, what: str, name: str) -> str | None:
        """Which plugin registered ``name`` as a step, model or writer (None if none did)."""
        entry = getattr(self, _TABLES[what]).get(name)
        return entry.plugin if entry is not None else None

