"""The registry handed to plugins: the one place steps, models and writers are looked up.

Each ``add_*`` call records which plugin made it, so ``pipeline plugins`` can say who provides
what and a name clash can name both plugins. A clash never replaces the first registration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import PluginError, did_you_mean
from .step import KIND_METHOD, Step, StepKind, StepParams

if TYPE_CHECKING:
    from .model import ModelDef
    from .writers import Writer


@dataclass
class Entry:
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
    problem: str | None = None


class Registry:
    def __init__(self) -> None:
        self.steps: dict[str, Entry] = {}
        self.models: dict[str, Entry] = {}
        self.writers: dict[str, Entry] = {}
        self.plugins: dict[str, PluginInfo] = {}
        self.problems: list[str] = []
        self._current = "(host)"

    # -- used by the host while it calls one plugin's hooks -----------------------------
    def _as(self, plugin: str) -> "Registry":
        self._current = plugin
        self.plugins.setdefault(plugin, PluginInfo(plugin))
        return self

    def _add(self, table: dict[str, Entry], what: str, name: str, obj: Any) -> None:
        if name in table:
            other = table[name].plugin
            raise PluginError(f"{what} '{name}' is already registered by plugin '{other}'; "
                              f"plugin '{self._current}' cannot register it again")
        table[name] = Entry(name, obj, self._current)
        self.plugins[self._current].registers.append(f"{what} {name}")

    # -- the plugin-facing API -----------------------------------------------------------
    def add_step(self, step_cls: type[Step]) -> None:
        """Register a step class (see :mod:`pipeline_core.step`)."""
        name = getattr(step_cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"step class {step_cls!r} has no 'name'")
        kind = getattr(step_cls, "kind", None)
        if not isinstance(kind, StepKind):
            raise PluginError(f"step '{name}' has no valid 'kind' (one of {[k.value for k in StepKind]})")
        params = getattr(step_cls, "Params", None)
        if not (isinstance(params, type) and issubclass(params, StepParams)):
            raise PluginError(f"step '{name}': Params must subclass pipeline_core.step.StepParams")
        method = KIND_METHOD[kind]
        if getattr(step_cls, method) is getattr(Step, method):
            raise PluginError(f"step '{name}' of kind '{kind.value}' must define {method}()")
        self._add(self.steps, "step", name, step_cls)

    def add_model(self, model: "ModelDef") -> None:
        """Register a model by name (see :class:`pipeline_core.model.ModelDef`)."""
        self._add(self.models, "model", model.name, model)

    def add_output(self, writer_cls: "type[Writer]") -> None:
        """Register an output writer (see :mod:`pipeline_core.writers`)."""
        self._add(self.writers, "writer", writer_cls.name, writer_cls)

    # -- lookups used by the host --------------------------------------------------------
    def step(self, name: str) -> type[Step]:
        try:
            return self.steps[name].obj
        except KeyError:
            raise KeyError(f"unknown step '{name}'{did_you_mean(name, self.steps)}") from None

    def model(self, name: str) -> "ModelDef":
        try:
            return self.models[name].obj
        except KeyError:
            raise KeyError(f"unknown model '{name}'{did_you_mean(name, self.models)}") from None

    def writer(self, name: str) -> "type[Writer]":
        try:
            return self.writers[name].obj
        except KeyError:
            raise KeyError(f"unknown output writer '{name}'{did_you_mean(name, self.writers)}") from None

