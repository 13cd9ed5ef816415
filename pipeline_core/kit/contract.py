"""What the host expects of a step class, checked for plugin authors by ``testing.check_step``.

The checks are the host's knowledge of the step contract (:mod:`pipeline_core.step`) turned
into assertions, each failure naming what to change. They live here rather than in the
public testing module so that the kit's face stays small, and beside the tiny world they run
in (:mod:`.tiny`) rather than in the host, which never imports the kit (nor pytest).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import ValidationError

from pipeline_core.context import RunContext
from pipeline_core.errors import PluginError, RecipeError
from pipeline_core.kit.tiny import TINY_CLASSES, TINY_MODEL, TINY_SIZE, TinyNet, make_registry, run_recipe_dict, tiny_recipe
from pipeline_core.model import ModelAdapter
from pipeline_core.plan import Plan
from pipeline_core.recipe.loader import entry_model
from pipeline_core.recipe.schema import step_schema
from pipeline_core.registry import Entry, Registry
from pipeline_core.schedule import Schedule
from pipeline_core.step import KIND_METHOD, StepKind


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _fail(step_cls: type, what: str) -> AssertionError:
    return AssertionError(f"step '{getattr(step_cls, 'name', step_cls)}': {what}")


def check_step_contract(step_cls: type, params: dict[str, Any] | None = None, registry: Registry | None = None, *,
                        devices: Sequence[str | torch.device] | None = None,
                        dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
                        run: bool = True) -> None:
    """See :func:`pipeline_core.testing.check_step`."""
    params = dict(params or {})
    registry = registry if registry is not None else make_registry()
    _check_declaration(step_cls, registry)
    entry, model = _check_params(step_cls, params)
    for own, given in _variants(step_cls, entry, model, params):
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


def _check_declaration(step_cls: type, registry: Registry) -> None:
    """What the host checks when it loads the plugin, and what the listings need."""
    probe = Registry()
    try:
        probe._as("check_step").add_step(step_cls)
    except PluginError as exc:
        raise _fail(step_cls, f"would be refused by the host: {exc}") from None
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


def _check_params(step_cls: type, params: dict[str, Any]) -> tuple[Any, Any]:
    """The recipe entry for ``params`` (and its model): unknown keys refused, schedule keys taken."""
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
    return entry, model


def _variants(step_cls: type, entry: Any, model: Any, params: dict[str, Any]) -> list[tuple[Any, bool]]:
    """The step's own Params as given, and for a transform with ``on`` also the other place."""
    variants = [(entry, True)]
    if "on" in step_cls.Params.model_fields and step_cls.kind is StepKind.TRANSFORM:
        other = "view" if getattr(entry, "on", "image") == "image" else "image"
        variants.append((model.model_validate({**params, "on": other}), False))
    return [(step_cls.Params.model_validate({k: getattr(v, k) for k in step_cls.Params.model_fields}), given)
            for v, given in variants]


def _context(step_cls: type, own: Any, device: torch.device, batch: int = 2):
    step = step_cls(own, 0, Schedule.always(4) if step_cls.kind.per_iteration else None)
    plan = Plan(iterations=4, batch=batch, categories=list(TINY_CLASSES), model_name=TINY_MODEL.name,
                model_size=TINY_SIZE, seed=0)
    step.bind(plan)
    heads = sorted(h for h in step.heads if h != "logits")  # a layer objective's layers get hooked
    adapter = ModelAdapter(TinyNet(), TINY_MODEL.info, TINY_MODEL.heads, heads, device=device)
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
    step, ctx = _context(step_cls, own, device)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, TINY_SIZE, TINY_SIZE, generator=g).to(device, dtype)
    kind = step_cls.kind
    try:
        return _EXERCISE[kind](step_cls, step, ctx, x, g)
    except AssertionError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as a contract failure with the cause
        raise _fail(step_cls, f"{kind.value} on {device} with {dtype} raised {type(exc).__name__}: {exc}") from exc


def _transform(step_cls: type, step: Any, ctx: Any, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    out = None
    view = getattr(step.params, "on", "image") == "view"
    for it in range(2):
        ctx.iteration = it
        y = step.apply(ctx, x)
        if not isinstance(y, torch.Tensor):
            raise _fail(step_cls, f"apply() must return a tensor, got {type(y).__name__}")
        _same_place(step_cls, "apply()", y, x)
        rows_ok = y.shape[0] % x.shape[0] == 0 if view else y.shape[0] == x.shape[0]
        if y.dim() != 4 or y.shape[1] != x.shape[1] or not rows_ok:
            want = "(B or a multiple of B views, 3, ...)" if view else "(B, 3, ...)"
            raise _fail(step_cls, f"apply() must keep {want}, got {tuple(y.shape)} from {tuple(x.shape)}")
        out = y
    if view:
        leaf = x.clone().requires_grad_(True)
        step.apply(ctx, leaf).sum().backward()
        if leaf.grad is None or not torch.isfinite(leaf.grad).all():
            raise _fail(step_cls, "with on: view, apply() must be differentiable (a finite gradient)")
    assert out is not None
    return out.detach()


def _objective(step_cls: type, step: Any, ctx: Any, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    image = x.clone().requires_grad_(True)
    loss = step.loss(ctx, ctx.model(image.float()), image)
    if not isinstance(loss, torch.Tensor) or loss.shape != (2,):
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise _fail(step_cls, f"loss() must return one value per image, shape (2,), got {shape}")
    if loss.device.type != x.device.type or not loss.dtype.is_floating_point:
        raise _fail(step_cls, f"loss() must be a floating tensor on {x.device}, got {loss.dtype} on {loss.device}")
    if not torch.isfinite(loss).all():
        raise _fail(step_cls, "loss() is not finite")
    loss.sum().backward()
    if image.grad is None or not torch.isfinite(image.grad).all():
        raise _fail(step_cls, "loss() gives no finite gradient with respect to the image")
    return loss.detach()


def _update(step_cls: type, step: Any, ctx: Any, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    param = x.clone()
    grad = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
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


def _init(step_cls: type, step: Any, ctx: Any, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    image = step.init(ctx, None)
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3 or image.shape[0] not in (1, 2):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise _fail(step_cls, f"init() must return (B or 1, 3, H, W), got {shape}")
    if image.device.type != x.device.type or not image.dtype.is_floating_point:
        raise _fail(step_cls, f"init() must return a floating image on {x.device}, got {image.dtype} on {image.device}")
    return image.detach().float()


def _param(step_cls: type, step: Any, ctx: Any, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    param = step.build(ctx, x.float())
    image = param.image()
    if image.shape != x.shape or image.device.type != x.device.type:
        raise _fail(step_cls, f"build() must give an image of shape {tuple(x.shape)} on {x.device}")
    leaves = param.parameters()
    if not leaves or not all(t.requires_grad for t in leaves):
        raise _fail(step_cls, "build()'s parameters() must be tensors that require grad")
    return image.detach()


#: per kind, how one call of its method is exercised and checked
_EXERCISE = {StepKind.TRANSFORM: _transform, StepKind.OBJECTIVE: _objective, StepKind.UPDATE: _update,
             StepKind.INIT: _init, StepKind.PARAM: _param}


def _check_in_run(step_cls: type, params: dict[str, Any], registry: Registry) -> None:
    """Run the step in a real tiny run, counting the iterations it is called on."""
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


