"""A testing kit for plugin authors (also loaded as a pytest plugin: the fixtures below).

    def test_my_step(isolated_registry, tmp_path):
        with registered(my_plugin, isolated_registry):
            result = run_recipe_dict({...}, tmp_path, registry=isolated_registry)

- :func:`isolated_registry` (fixture) / :func:`make_registry`: built-ins only, no installed plugins;
- :func:`registered`: add a plugin to a registry for one block;
- :func:`run_recipe_dict`: run a recipe given as a dict on the CPU with a tiny random model;
- :func:`check_step`: the contract checks every step should pass (parameters, schedules,
  device and dtype preservation).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import nn

from .hookspecs import hookimpl
from .model import ModelDef, ModelInfo
from .registry import Registry

TINY_CLASSES = tuple(f"class {i}" for i in range(10))


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
    info=ModelInfo(categories=TINY_CLASSES, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=32),
    description="a tiny random 10-class model for tests",
)


class _TinyModelPlugin:
    @hookimpl
    def register_models(self, registry: Registry) -> None:
        registry.add_model(TINY_MODEL)


def make_registry(*plugins: Any, builtins: bool = True) -> Registry:
    """A registry with the built-ins (and the tiny test model) plus ``plugins``; nothing installed."""
    from .plugin_host import build_registry, get_plugin_manager

    pm = get_plugin_manager(autoload=False, builtins=builtins)
    pm.register(_TinyModelPlugin(), name="pipeline_core.testing")
    for i, plugin in enumerate(plugins):
        pm.register(plugin, name=getattr(plugin, "__name__", f"plugin-{i}"))
    return build_registry(pm)


@contextlib.contextmanager
def registered(plugin: Any, registry: Registry) -> Iterator[Registry]:
    """Register ``plugin``'s hooks into ``registry`` for the duration of the block."""
    from .plugin_host import HOOKS

    before = {name: dict(getattr(registry, name)) for name in ("steps", "models", "writers")}
    name = getattr(plugin, "__name__", type(plugin).__name__)
    registry._as(name)
    for hook in HOOKS:
        fn = getattr(plugin, hook, None)
        if fn is not None:
            fn(registry=registry)
    try:
        yield registry
    finally:
        for table, saved in before.items():
            getattr(registry, table).clear()
            getattr(registry, table).update(saved)
        registry.plugins.pop(name, None)


def tiny_recipe(**changes: Any) -> dict[str, Any]:
    """A small valid recipe dict on the tiny model: change any top-level key."""
    recipe: dict[str, Any] = {
        "iterations": 4,
        "seed": 0,
        "device": "cpu",
        "model": {"name": TINY_MODEL.name},
        "steps": [
            {"step": "init-noise", "scale": 0.04, "offset": 0.5, "size": 32},
            {"step": "L1-loss", "target": 3},
            {"step": "gradient-step", "lr": 0.01},
        ],
        "output": {"video": False},
    }
    recipe.update(changes)
    return recipe


def run_recipe_dict(recipe: dict[str, Any], run_dir: Path, registry: Registry | None = None,
                    overrides: tuple[str, ...] = ()):
    """Validate and run ``recipe`` on the CPU into ``run_dir``; returns the RunResult."""
    import yaml

    from .engine import Run
    from .progress import Progress
    from .recipe import load_recipe

    registry = registry or make_registry()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f"{run_dir.name}.recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    loaded = load_recipe(path, registry, overrides)
    return Run(loaded, registry, run_dir, Progress(), device="cpu").execute()


def check_step(step_cls: type, params: dict[str, Any] | None = None, registry: Registry | None = None) -> None:
    """Contract checks for a step class; raises AssertionError naming what broke.

    - its Params reject unknown keys and accept ``params``;
    - per-iteration steps accept from/until/every and the loop honours them;
    - transforms keep the device, dtype and batch size of what they get.
    """
    from pydantic import ValidationError

    from .context import RunContext
    from .model import ModelAdapter
    from .plan import Plan
    from .recipe import entry_model
    from .step import StepKind

    params = dict(params or {})
    model = entry_model(step_cls)
    try:
        model.model_validate({**params, "no_such_key_xyz": 1})
    except ValidationError:
        pass
    else:
        raise AssertionError(f"{step_cls.name}: Params accepted an unknown key; subclass StepParams")
    entry = model.model_validate(params)
    if step_cls.kind.per_iteration:
        model.model_validate({**params, "from": 0.25, "until": 0.75, "every": 2})
    own = step_cls.Params.model_validate({k: getattr(entry, k) for k in step_cls.Params.model_fields})
    from .schedule import Schedule

    step = step_cls(own, 0, Schedule.always(4) if step_cls.kind.per_iteration else None)
    plan = Plan(iterations=4, batch=2, categories=list(TINY_CLASSES), model_name=TINY_MODEL.name,
                model_size=32, seed=0)
    step.bind(plan)
    adapter = ModelAdapter(TinyNet(), TINY_MODEL.info, device="cpu")
    ctx = RunContext(plan=plan, device=torch.device("cpu"), model=adapter)
    step.setup(ctx)
    x = torch.rand(2, 3, 32, 32)
    if step_cls.kind is StepKind.TRANSFORM:
        for it in range(2):
            ctx.iteration = it
            y = step.apply(ctx, x)
            assert isinstance(y, torch.Tensor), f"{step_cls.name}: apply() must return a tensor"
            assert y.device == x.device and y.dtype == x.dtype, f"{step_cls.name}: apply() changed device or dtype"
            assert y.shape[:2] == x.shape[:2], f"{step_cls.name}: apply() changed the batch or channels"
        if getattr(own, "on", "image") == "view":
            x.requires_grad_(True)
            step.apply(ctx, x).sum().backward()
            assert x.grad is not None, f"{step_cls.name}: a view transform must be differentiable"
    elif step_cls.kind is StepKind.OBJECTIVE:
        x.requires_grad_(True)
        loss = step.loss(ctx, adapter(x), x)
        assert loss.shape == (2,), f"{step_cls.name}: loss() must return one value per image, got {tuple(loss.shape)}"
        loss.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all(), f"{step_cls.name}: no finite gradient"
    elif step_cls.kind is StepKind.INIT:
        image = step.init(ctx, None)
        assert image.dim() == 4 and image.shape[:2] == (2, 3), f"{step_cls.name}: init() must return (B, 3, H, W)"


# -- pytest fixtures ----------------------------------------------------------------------------


@pytest.fixture
def isolated_registry() -> Registry:
    """Built-in plugins and the tiny test model only: installed plugins are not loaded."""
    return make_registry()


@pytest.fixture
def tiny_model_def() -> ModelDef:
    return TINY_MODEL
