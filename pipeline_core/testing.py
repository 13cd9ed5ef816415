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
  device, dtype and batch preservation, determinism).
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pluggy
import pytest
import torch
from torch import nn

from .errors import PluginError
from .hookspecs import hookimpl
from .model import ModelDef, ModelInfo
from .registry import Entry, Registry

if TYPE_CHECKING:
    from .engine import RunResult

TINY_CLASSES = tuple(f"class {i}" for i in range(10))
TINY_SIZE = 32


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
    from .plugin_host import get_plugin_manager, register_plugin

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
    from .plugin_host import build_registry

    registry = build_registry(plugin_manager(*plugins, builtins=builtins))
    if registry.problems:
        raise PluginError(registry.problems[0])
    return registry


@contextlib.contextmanager
def registered(plugin: Any, registry: Registry | None = None, name: str | None = None) -> Iterator[Registry]:
    """Register ``plugin``'s hooks into ``registry`` (default: a fresh isolated one) for one block.

    The plugin goes through the host's own checks, so what passes here loads the same way
    from an entry point. Afterwards the registry is exactly as before, so one test's plugin
    never leaks into the next. A problem (unknown hook, API mismatch, a hook that raises, a
    name another plugin already has) raises :class:`PluginError` with the host's message.
    """
    from . import hookspecs
    from .plugin_host import call_register_hooks, register_plugin

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

    from .engine import Run
    from .progress import Progress
    from .recipe import load_recipe

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


# -- check_step ---------------------------------------------------------------------------------


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _fail(step_cls: type, what: str) -> AssertionError:
    return AssertionError(f"step '{getattr(step_cls, 'name', step_cls)}': {what}")


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
      transforms keep device, dtype, batch and channels (and ``on: view`` is differentiable),
      objectives return one finite loss per image on the image's device with a finite
      gradient, updates change the parameters in place keeping device, dtype and shape, init
      steps return a (B or 1, 3, H, W) floating image on the run's device;
    - with the same seed, the step gives the same result twice (draw random numbers from
      ``ctx.generator(self)``, never from the global generator);
    - with ``run``: inside a real 6-iteration run of the tiny model, a per-iteration step
      scheduled ``from: 1, until: 5, every: 2`` is called on iterations 1 and 3 only and the
      run completes (init and param steps: the run completes).
    """
    from pydantic import ValidationError

    from .errors import RecipeError
    from .recipe import entry_model
    from .schema import step_schema
    from .step import StepKind

    params = dict(params or {})
    probe = Registry()
    try:
        probe._as("check_step").add_step(step_cls)
    except PluginError as exc:
        raise _fail(step_cls, f"would be refused by the host: {exc}") from None
    registry = registry if registry is not None else make_registry()
    taken = registry.steps.get(step_cls.name)
    if taken is not None and taken.obj is not step_cls:
        raise _fail(step_cls, f"the name is already taken by plugin '{taken.plugin}'; choose another name")
    if not (step_cls.__doc__ or "").strip():
        raise _fail(step_cls, "has no docstring; its first line is the help 'pipeline steps' shows")
    for field_name, info in step_cls.Params.model_fields.items():
        if not info.description:
            raise _fail(step_cls, f"parameter '{info.alias or field_name}' has no description "
                                  "(Field(..., description=...)); 'pipeline steps' shows it as help")
    try:
        step_schema(step_cls.name, step_cls)
    except Exception as exc:  # noqa: BLE001 - any failure means editors get no schema
        raise _fail(step_cls, f"its parameters have no JSON Schema ({exc}); use JSON-like types") from None

    model = entry_model(step_cls)
    try:
        model.model_validate({**params, "no_such_key_xyz": 1})
    except ValidationError:
        pass
    else:
        raise _fail(step_cls, "Params accepted an unknown key; subclass pipeline_core.step.StepParams")
    try:
        entry = model.model_validate(params)
    except ValidationError as exc:
        raise _fail(step_cls, f"Params refused {params}: {exc.errors()[0]['msg']}") from None
    if step_cls.kind.per_iteration:
        try:
            model.model_validate({**params, "from": 0.25, "until": 0.75, "every": 2})
        except ValidationError as exc:
            raise _fail(step_cls, f"refused the schedule keys from/until/every: {exc.errors()[0]['msg']}") from None

    variants = [(entry, True)]
    if "on" in step_cls.Params.model_fields and step_cls.kind is StepKind.TRANSFORM:
        other = "view" if getattr(entry, "on", "image") == "image" else "image"
        variants.append((model.model_validate({**params, "on": other}), False))
    for variant, given in variants:
        own = step_cls.Params.model_validate({k: getattr(variant, k) for k in step_cls.Params.model_fields})
        try:
            _context(step_cls, own, torch.device("cpu"))
        except RecipeError as exc:
            if not given:  # the step refuses the other 'on' in bind(), as it may
                continue
            raise _fail(step_cls, f"bind() refused {params} for a batch of 2 on the tiny model: {exc}") from None
        for device in devices if devices is not None else _devices():
            for dtype in dtypes:
                first = _exercise(step_cls, own, torch.device(device), dtype)
                again = _exercise(step_cls, own, torch.device(device), dtype)
                if first is not None and again is not None and not torch.equal(first, again):
                    raise _fail(step_cls, "gave different results with the same seed; draw random numbers from "
                                          "ctx.generator(self), not from torch's global generator")
    if run:
        _check_in_run(step_cls, params, registry)


def _context(step_cls: type, own: Any, device: torch.device, batch: int = 2):
    from .context import RunContext
    from .model import ModelAdapter
    from .plan import Plan
    from .schedule import Schedule

    step = step_cls(own, 0, Schedule.always(4) if step_cls.kind.per_iteration else None)
    plan = Plan(iterations=4, batch=batch, categories=list(TINY_CLASSES), model_name=TINY_MODEL.name,
                model_size=TINY_SIZE, seed=0)
    step.bind(plan)
    adapter = ModelAdapter(TinyNet(), TINY_MODEL.info, device=device)
    ctx = RunContext(plan=plan, device=device, model=adapter)
    step.setup(ctx)
    return step, ctx


def _same_place(step_cls: type, what: str, got: torch.Tensor, want: torch.Tensor) -> None:
    if got.device.type != want.device.type:
        raise _fail(step_cls, f"{what} moved the tensor from {want.device} to {got.device}")
    if got.dtype != want.dtype:
        raise _fail(step_cls, f"{what} changed the dtype from {want.dtype} to {got.dtype}")


def _exercise(step_cls: type, own: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """Run the step's kind method once on ``device``/``dtype``; its (detached) output."""
    from .step import StepKind

    step, ctx = _context(step_cls, own, device)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, TINY_SIZE, TINY_SIZE, generator=g).to(device, dtype)
    kind = step_cls.kind
    try:
        if kind is StepKind.TRANSFORM:
            out = None
            for it in range(2):
                ctx.iteration = it
                y = step.apply(ctx, x)
                if not isinstance(y, torch.Tensor):
                    raise _fail(step_cls, f"apply() must return a tensor, got {type(y).__name__}")
                _same_place(step_cls, "apply()", y, x)
                if y.dim() != 4 or y.shape[:2] != x.shape[:2]:
                    raise _fail(step_cls, f"apply() must keep (B, 3, ...), got {tuple(y.shape)} from {tuple(x.shape)}")
                out = y
            if getattr(own, "on", "image") == "view":
                leaf = x.clone().requires_grad_(True)
                step.apply(ctx, leaf).sum().backward()
                if leaf.grad is None or not torch.isfinite(leaf.grad).all():
                    raise _fail(step_cls, "with on: view, apply() must be differentiable (a finite gradient)")
            return out.detach()
        if kind is StepKind.OBJECTIVE:
            image = x.clone().requires_grad_(True)
            model_out = ctx.model(image.float())
            loss = step.loss(ctx, model_out, image)
            if not isinstance(loss, torch.Tensor) or loss.shape != (2,):
                shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise _fail(step_cls, f"loss() must return one value per image, shape (2,), got {shape}")
            if loss.device.type != device.type or not loss.dtype.is_floating_point:
                raise _fail(step_cls, f"loss() must be a floating tensor on {device}, got {loss.dtype} on {loss.device}")
            if not torch.isfinite(loss).all():
                raise _fail(step_cls, "loss() is not finite")
            loss.sum().backward()
            if image.grad is None or not torch.isfinite(image.grad).all():
                raise _fail(step_cls, "loss() gives no finite gradient with respect to the image")
            return loss.detach()
        if kind is StepKind.UPDATE:
            param = x.clone()
            grad = torch.randn(x.shape, generator=g).to(device, dtype)
            before = param.clone()
            for it in range(2):
                ctx.iteration = it
                step.update(ctx, [param], [grad])
            _same_place(step_cls, "update()", param, before)
            if param.shape != before.shape or not torch.isfinite(param).all():
                raise _fail(step_cls, "update() must keep the parameters' shape and leave them finite")
            if torch.equal(param, before):
                raise _fail(step_cls, "update() did not change the parameters in place (it must not return new ones)")
            return param
        if kind is StepKind.INIT:
            image = step.init(ctx, None)
            if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3 \
                    or image.shape[0] not in (1, 2):
                shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise _fail(step_cls, f"init() must return (B or 1, 3, H, W), got {shape}")
            if image.device.type != device.type or not image.dtype.is_floating_point:
                raise _fail(step_cls, f"init() must return a floating image on {device}, got {image.dtype} on {image.device}")
            return image.detach().float()
        if kind is StepKind.PARAM:
            param = step.build(ctx, x.float())
            image = param.image()
            if image.shape != x.shape or image.device.type != device.type:
                raise _fail(step_cls, f"build() must give an image of shape {tuple(x.shape)} on {device}")
            leaves = param.parameters()
            if not leaves or not all(t.requires_grad for t in leaves):
                raise _fail(step_cls, "build()'s parameters() must be tensors that require grad")
            return image.detach()
    except AssertionError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as a contract failure with the cause
        raise _fail(step_cls, f"{kind.value} on {device} with {dtype} raised {type(exc).__name__}: {exc}") from exc
    return None


def _check_in_run(step_cls: type, params: dict[str, Any], registry: Registry) -> None:
    """Run the step in a real tiny run, counting the iterations it is called on."""
    import tempfile

    from .step import KIND_METHOD, StepKind

    calls: list[int] = []
    method = KIND_METHOD[step_cls.kind]

    def counted(self, ctx, *args):  # type: ignore[no-untyped-def]
        if self.index == position:  # the recipe may hold other instances of the same step
            calls.append(ctx.iteration)
        return getattr(super(probe, self), method)(ctx, *args)

    probe = type(step_cls.__name__, (step_cls,), {method: counted, "__doc__": step_cls.__doc__})
    local = Registry()
    for table in ("steps", "models", "writers"):
        getattr(local, table).update(getattr(registry, table))
    local.models.setdefault(TINY_MODEL.name, Entry(TINY_MODEL.name, TINY_MODEL, "pipeline_core.testing"))
    local.steps[step_cls.name] = Entry(step_cls.name, probe, "check_step")

    entry = {"step": step_cls.name, **params}
    recipe = tiny_recipe(iterations=6)
    steps = recipe["steps"]
    kind = step_cls.kind
    if kind is StepKind.INIT:
        position = 0
        steps[0] = entry
    elif kind is StepKind.PARAM:
        position = 1
        steps.insert(1, entry)
    else:
        entry.update({"from": 1, "until": 5, "every": 2})
        position = {StepKind.TRANSFORM: 1, StepKind.OBJECTIVE: 2, StepKind.UPDATE: 3}[kind]
        steps.insert(position, entry)
    with tempfile.TemporaryDirectory(prefix="check_step-") as tmp:
        try:
            run_recipe_dict(recipe, Path(tmp) / "run", registry=local)
        except AssertionError as exc:
            raise _fail(step_cls, f"a tiny run with it failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - e.g. a RecipeError from bind()
            raise _fail(step_cls, f"a tiny run with it failed: {type(exc).__name__}: {exc}") from None
    if kind.per_iteration and calls != [1, 3]:
        raise _fail(step_cls, f"scheduled from: 1, until: 5, every: 2 in a 6-iteration run it was called on "
                              f"iterations {calls}, expected [1, 3]")
    if not kind.per_iteration and len(calls) != 1:
        raise _fail(step_cls, f"a {kind.value} step must be called once per run, was called {len(calls)} times")


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
