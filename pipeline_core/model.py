"""Models: what a plugin registers (:class:`ModelDef`) and what steps call (:class:`ModelAdapter`).

The image a run optimises is always RGB in [0, 1]. The adapter is the only place that knows
the model's input size and normalisation, so no step has to. It also exposes *heads* other
than the logits (InceptionV3's auxiliary classifier, any named layer's activations) through
forward hooks, in eval mode, without touching the model's ``forward``.

Any module of the model is a head by its path: ``layer:features.14.conv.0`` (see
:func:`layer_head`). Only the layers some step asks for are hooked, and what the hooks keep is
dropped at the end of each forward pass, so a run never holds a layer's activations longer
than the iteration that made them.
"""

from __future__ import annotations

import difflib
import math
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
import functools
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pipeline_core.errors import ModelLoadError

if TYPE_CHECKING:  # torch is imported where a model is used, so listing and validating start without it
    import torch
    from torch import nn


__all__ = [
    "LAYER_PREFIX",
    "HeadDef",
    "ModelInfo",
    "ModelSpec",
    "ModelDef",
    "ModelOutput",
    "ModelAdapter",
    "layer_head",
    "layer_paths",
]

#: a head named ``layer:PATH`` is the output of the module at ``PATH`` (``model.get_submodule``)
LAYER_PREFIX = "layer:"


def layer_head(path: str) -> str:
    """The head name a step lists in ``heads`` to read the output of the module at ``path``."""
    return LAYER_PREFIX + path


def layer_paths(module: nn.Module) -> list[str]:
    """Every module path of ``module`` that a ``layer:`` head may name, in definition order."""
    return [name for name, _ in module.named_modules() if name]


def _skeleton_layers(model: "ModelDef", spec: "ModelSpec") -> list[str] | None:
    """The model's layer paths from its skeleton built on the meta device (no memory, no weights,
    a few milliseconds), or None when the model has no skeleton or it cannot be built so."""
    if model.skeleton is None:
        return None
    import torch

    try:
        with torch.device("meta"):
            return layer_paths(model.skeleton(spec))
    except Exception:  # noqa: BLE001 - the check then happens when the model is built
        return None


def _unknown_layer(model: str, path: str, names: Sequence[str]) -> str:
    """The message for a layer path the model lacks: the nearest paths, or where to see them all."""
    near = difflib.get_close_matches(path, list(names), n=3, cutoff=0.5)
    if not near:  # a path one level too deep or too shallow: its neighbours by prefix
        stem = path.rsplit(".", 1)[0]
        near = [n for n in names if n.startswith(stem)][:3]
    hint = f"; nearest: {', '.join(near)}" if near else ""
    listing = "pipeline_core.layers(model)" if model.startswith("python:") else f"pipeline layers {model}"
    return f"model '{model}' has no layer '{path}'{hint} (all of them: {listing})"

@dataclass(frozen=True)
class HeadDef:
    """A second output: capture ``layer``'s output, then (optionally) run ``head`` on it."""

    layer: str
    head: str | None = None
    size: int | None = None  #: the only input size the head works at, if it has one
    doc: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """What validation needs to know about a model, read without building it."""

    categories: Sequence[str]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    size: int | None = 224


@dataclass
class ModelSpec:
    """The recipe's ``model:`` section, with paths already resolved."""

    name: str = "inception_v3"
    weights: Path | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    size: int | None = None
    categories: list[str] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelDef:
    """A model a plugin makes available by name.

    ``build(spec)`` returns the ``nn.Module`` with its weights loaded; it is called only when
    a recipe uses the model. ``info`` (or a zero-argument callable returning it) gives the
    default preprocessing and class names; a recipe's ``model:`` keys override them.

    ``skeleton(spec)``, optional (API 1.2), returns the same architecture *without* loading
    weights (random or none). It must be cheap: ``pipeline validate`` calls it under
    ``torch.device("meta")`` to check the layer paths a recipe names, and ``pipeline layers``
    runs it once on a small input to list the layers' shapes, both without a download.
    """

    name: str
    build: Callable[[ModelSpec], nn.Module]
    info: ModelInfo | Callable[[], ModelInfo]
    heads: dict[str, HeadDef] = field(default_factory=dict)
    description: str = ""
    skeleton: Callable[[ModelSpec], nn.Module] | None = None

    def describe(self, spec: ModelSpec) -> ModelInfo:
        base = self.info() if callable(self.info) else self.info
        changes: dict[str, Any] = {}
        if spec.mean is not None:
            changes["mean"] = tuple(spec.mean)
        if spec.std is not None:
            changes["std"] = tuple(spec.std)
        if spec.size is not None:
            changes["size"] = spec.size
        if spec.categories is not None:
            changes["categories"] = list(spec.categories)
        return replace(base, **changes)


@dataclass
class ModelOutput:
    logits: torch.Tensor
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    #: the outputs before :meth:`per_image` averaged them over the views (None: one view each)
    all_views: "ModelOutput | None" = field(default=None, repr=False)

    def per_view(self) -> "ModelOutput":
        """The outputs of every row the model saw, views not averaged (view ``k`` of image ``b``
        at row ``k * B + b``): for statistics that an average over views would change, such as
        a layer's variance."""
        return self.all_views if self.all_views is not None else self

    def head(self, name: str) -> torch.Tensor:
        return self.logits if name == "logits" else self.heads[name]

    def layer(self, path: str) -> torch.Tensor:
        """The output of the module at ``path`` (float32, per image), for a step whose ``heads``
        include ``layer_head(path)``; a KeyError names the fix for one that forgot to."""
        try:
            return self.heads[layer_head(path)]
        except KeyError:
            raise KeyError(f"layer '{path}' was not captured: list layer_head('{path}') in the step's "
                           "'heads'") from None

    def per_image(self, batch: int) -> "ModelOutput":
        """Each image's outputs averaged over its views.

        A view step may show the model several views of every image (``K * B`` rows, view
        ``k`` of image ``b`` at row ``k * B + b``). Objectives are written per image, so they
        receive the mean over the views: for a logit or a channel mean that is exactly the mean
        of the per-view objective, and every objective, a plugin's too, works unchanged.
        """
        rows = self.logits.shape[0]
        if rows == batch:
            return self
        if rows % batch:
            raise ValueError(f"the model saw {rows} views, not a multiple of the batch of {batch}")
        views = rows // batch

        def mean(t: torch.Tensor) -> torch.Tensor:
            return t.view(views, batch, *t.shape[1:]).mean(0)

        return ModelOutput(mean(self.logits), {k: mean(v) for k, v in self.heads.items()}, all_views=self)


def _submodule(module: nn.Module, dotted: str) -> nn.Module:
    try:
        return module.get_submodule(dotted)
    except AttributeError:
        raise ModelLoadError(f"the model has no layer '{dotted}'") from None


@functools.cache
def _channels_last() -> Any:
    """The autograd function below, defined on first use (its base class is torch's)."""
    import torch

    class _ChannelsLast(torch.autograd.Function):
        """NHWC for the model; the gradient goes back to the image in the image's own (NCHW) layout.

        A plain ``contiguous(memory_format=channels_last)`` would hand the update steps an NHWC
        gradient for an NCHW image, and every elementwise update would then read it strided.
        """

        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            return x.contiguous(memory_format=torch.channels_last)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            return grad.contiguous()

    return _ChannelsLast


class ModelAdapter:
    """A frozen classifier seen as a function of a [0, 1] RGB batch.

    Frozen means eval mode and no parameter gradients: batch-norm statistics never move.

    The speed options (the recipe's ``performance:`` section) change how the model runs and
    nothing else: the image, the losses and the gradients stay float32.

    - ``precision``: ``bf16`` or ``fp16`` runs the model under autocast (convolutions and
      matrix products in half precision, reductions in float32); the logits and heads are
      returned as float32, so objectives and updates see the same dtype either way. fp16
      has no loss scaling here: gradients to the input can underflow; prefer bf16.
    - ``channels_last``: the model's weights and its input in NHWC, the layout tensor cores
      and oneDNN prefer; the gradient still reaches the image in NCHW.
    - ``compile``: ``torch.compile`` of the module (the first iterations pay for compiling).
    """

    def __init__(
        self,
        module: nn.Module,
        info: ModelInfo,
        heads: dict[str, HeadDef] | None = None,
        requested: Sequence[str] = (),
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        max_rows: int | None = None,
    ):
        import torch

        self.info = info
        #: the most rows (images x views) one model pass takes; more are split (see __call__)
        self.max_rows = max_rows
        self.device = torch.device(device)
        self.categories = list(info.categories)
        module = module.to(self.device).eval()
        module.requires_grad_(False)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.channels_last = channels_last
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.mean = torch.tensor(info.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(info.std, device=self.device).view(1, 3, 1, 1)
        self.size = info.size
        self._captured: dict[str, Any] = {}
        self._hooked: set[str] = set()
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._heads: dict[str, tuple[str, nn.Module | None]] = {}
        for name in requested:
            self._add_head(name, (heads or {}).get(name))
        self._forward = torch.compile(module) if compile else module

    def _add_head(self, name: str, spec: HeadDef | None) -> None:
        if spec is None and name.startswith(LAYER_PREFIX):
            spec = HeadDef(layer=name[len(LAYER_PREFIX):])
        if spec is None:
            raise ModelLoadError(f"the model has no head '{name}'")
        layer = _submodule(self.module, spec.layer)
        head = _submodule(self.module, spec.head) if spec.head else None
        key = spec.layer
        if key not in self._hooked:  # one hook per layer, however many heads read it

            def keep(_mod: nn.Module, _inp: Any, output: Any) -> None:
                self._captured[key] = output

            layer.register_forward_hook(keep)
            self._hooked.add(key)
        self._heads[name] = (key, head)

    def add_layers(self, paths: Sequence[str]) -> None:
        """Capture more layers from now on (``out.layer(path)``), for a step that finds the layers
        it reads in the built model, e.g. every batch-norm layer; call it from ``setup``."""
        for path in paths:
            if layer_head(path) not in self._heads:
                self._add_head(layer_head(path), None)
        self._shapes = None

    def _feature(self, key: str) -> torch.Tensor:
        import torch

        try:
            feats = self._captured[key]
        except KeyError:
            raise ModelLoadError(f"layer '{key}' did not run in the model's forward pass (in eval mode); "
                                 "choose a layer that does (see 'pipeline layers')") from None
        if not isinstance(feats, torch.Tensor):
            raise ModelLoadError(f"layer '{key}' returns a {type(feats).__name__}, not a tensor; "
                                 "name one of its sub-modules instead (see 'pipeline layers')")
        return feats

    def _token_grid(self, feats: torch.Tensor) -> torch.Tensor:
        """A transformer layer's tokens ``(B, N, D)`` as a feature map ``(B, D, H, W)``.

        The embedding dimensions are the channels and the patch grid the positions, so channel,
        neuron and layer objectives read a vision transformer as they read a CNN. The class and
        other prefix tokens (``num_prefix_tokens`` of timm's models; otherwise what is left over
        from a square grid) are dropped: they have no place in the image. A 3-D output that is
        not a grid of tokens is returned unchanged."""
        if feats.dim() != 3:
            return feats
        b, n, d = feats.shape
        prefix = getattr(self.module, "num_prefix_tokens", None)
        grid = getattr(getattr(self.module, "patch_embed", None), "grid_size", None)
        if isinstance(prefix, int) and grid is not None and prefix + grid[0] * grid[1] == n:
            h, w = int(grid[0]), int(grid[1])
        else:
            prefix = next((p for p in range(0, 9) if n - p > 0 and math.isqrt(n - p) ** 2 == n - p), None)
            if prefix is None:
                return feats
            h = w = math.isqrt(n - prefix)
        return feats[:, prefix:, :].transpose(1, 2).reshape(b, d, h, w)

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per hooked layer, the shape of one image's activations (C, H, W) at the model's input size.

        Found once, by one forward pass without gradients on a grey image, and cached: steps
        check a channel or a position against it in ``setup``, before the first iteration.
        """
        if self._shapes is None:
            import torch

            side = self.size or 224
            with torch.no_grad():
                out = self(torch.full((1, 3, side, side), 0.5, device=self.device))
            self._shapes = {name[len(LAYER_PREFIX):]: tuple(t.shape[1:]) for name, t in out.heads.items()
                            if name.startswith(LAYER_PREFIX)}
        return self._shapes

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Resize to the model's input size and normalise; differentiable."""
        import torch.nn.functional as F

        if self.size and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = _channels_last().apply(x)
        return x

    def __call__(self, x: torch.Tensor) -> ModelOutput:
        """The model's outputs for a batch of [0, 1] images (or views).

        With ``max_rows`` set and more rows than that, the batch goes through the model in
        chunks. Under autograd each chunk is a gradient checkpoint: only its input is kept,
        and its activations are recomputed, one chunk at a time, during the backward pass, so
        memory holds one chunk's activations instead of the whole batch's, for the price of a
        second forward pass. The outputs (and gradients) are those of one pass, up to
        floating-point rounding.
        """
        if self.max_rows is None or x.shape[0] <= self.max_rows:
            return self._pass(x)
        import torch
        from torch.utils.checkpoint import checkpoint

        names = list(self._heads)

        def run(chunk: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self._pass(chunk)
            return (out.logits, *(out.heads[n] for n in names))

        chunks = x.split(self.max_rows)
        if torch.is_grad_enabled() and x.requires_grad:
            parts = [checkpoint(run, c, use_reentrant=False) for c in chunks]
        else:
            parts = [run(c) for c in chunks]
        return ModelOutput(torch.cat([p[0] for p in parts]),
                           {n: torch.cat([p[i + 1] for p in parts]) for i, n in enumerate(names)})

    def _pass(self, x: torch.Tensor) -> ModelOutput:
        import torch

        x = self.prepare(x)
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()
        )
        try:
            with autocast:
                logits = self._forward(x)
                heads = {}
                for name, (key, head) in self._heads.items():
                    feats = self._feature(key)
                    heads[name] = head(feats) if head is not None else self._token_grid(feats)
        finally:
            self._captured.clear()  # nothing a hook kept outlives the forward pass
        if isinstance(logits, tuple):  # a model in an unexpected mode returning (logits, aux)
            logits = logits[0]
        return ModelOutput(logits.float(), {k: v.float() for k, v in heads.items()})
