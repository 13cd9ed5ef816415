"""``pipeline layers MODEL``: every module path a layer objective can name, with its output.

Finding the layer names of one's own model is the first obstacle to looking inside it. This
builds the model as a run would (the same ``NAME[,KEY=VALUE...]`` as ``pipeline run --model``),
hooks every module, runs one forward pass on a grey image at the model's input size and lists,
in the order the modules are defined: the path, the module's type, one image's output shape and
its channel count. Where the model offers a skeleton (every torchvision model does) it is used
instead of the weights: shapes do not depend on weights, and nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline_core.errors import RecipeError
from pipeline_core.model import ModelAdapter, layer_paths
from pipeline_core.recipe.model_arg import RUN_KEYS, module_from_arg, parse_model_arg
from pipeline_core.registry import Registry

#: the largest input side ``--size`` takes: one CPU forward pass of a big model must stay quick
MAX_LIST_SIDE = 1024


@dataclass
class LayerRow:
    path: str
    type: str
    shape: list[int] | None  #: one image's output shape; None when the module did not run (or gave no tensor)
    channels: int | None
    calls: int  #: how often the module ran in one forward pass (a shared ReLU runs several times; the last counts)
    folded: bool = False  #: a batch norm whose statistics in the weights are the identity (folded away)

    def shape_text(self) -> str:
        if self.calls == 0:
            return "(not run in eval mode)"
        if self.shape is None:
            return "(not a tensor)"
        return "x".join(str(d) for d in self.shape) + (f"  (runs {self.calls}x; the last counts)" if self.calls > 1 else "")


def folded_batchnorms(weights: Path | None, paths: list[str]) -> list[str]:
    """The batch-norm layers (of ``paths``) whose statistics in the weights file are the identity
    (mean 0, variance 1, scale 1): folded into the convolution before them when the weights were
    exported, so the layer passes its input through and ``bn-statistics`` has nothing to match.
    Empty when no weights file is given or it cannot be read (the listing is of the skeleton)."""
    if weights is None or not paths:
        return []
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a file that is no state dict: nothing to say about it here
        return []
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    out = []
    for path in paths:
        mean, var, scale = (state.get(f"{path}.{k}") for k in ("running_mean", "running_var", "weight"))
        if not all(isinstance(t, torch.Tensor) for t in (mean, var)):
            continue
        if bool((mean == 0).all()) and bool(((var.float() - 1).abs() < 1e-3).all()) and \
                (not isinstance(scale, torch.Tensor) or bool((scale == 1).all())):
            out.append(path)
    return out


def list_layers(text: str, registry: Registry, size: int | None = None, base: Path | None = None) -> tuple[str, int, list[LayerRow]]:
    """(model name, input side, one row per module) from one forward pass on the CPU."""
    if size is not None and not 8 <= size <= MAX_LIST_SIDE:
        raise RecipeError(f"--size {size}: give a side from 8 to {MAX_LIST_SIDE} px (the shapes scale with it; "
                          "a larger side only costs time)")
    module, info, name = module_from_arg(text, registry, base)
    weights = parse_model_arg(text, base, RUN_KEYS).weights
    adapter = ModelAdapter(module, info)
    side = size or info.size or 224
    seen: dict[str, Any] = {}
    calls: dict[str, int] = {}
    handles = []
    modules = dict(adapter.module.named_modules())
    for path in layer_paths(adapter.module):

        def keep(_mod: nn.Module, _inp: Any, output: Any, path: str = path) -> None:
            seen[path] = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None
            calls[path] = calls.get(path, 0) + 1

        handles.append(modules[path].register_forward_hook(keep))
    if size:
        adapter.size = size
    try:
        with torch.no_grad():
            adapter(torch.full((1, 3, side, side), 0.5))
    except RuntimeError as exc:  # e.g. an input too small for the model's kernels
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise RecipeError(f"{name} cannot run on a {side}x{side} px input ({first}); give a larger --size") from None
    finally:
        for h in handles:
            h.remove()
    rows = []
    norms = [p for p in layer_paths(adapter.module) if isinstance(modules[p], nn.BatchNorm2d)]
    folded = set(folded_batchnorms(weights, norms))
    for path in layer_paths(adapter.module):
        shape = seen.get(path)
        # tokens (N, D) of a transformer: the embedding dimensions are the channels objectives name
        channels = (int(shape[-1]) if len(shape) == 2 else int(shape[0])) if shape else None
        rows.append(LayerRow(path, type(modules[path]).__name__, list(shape) if shape else None,
                             channels, calls.get(path, 0), path in folded))
    return name, side, rows


def render(name: str, side: int, rows: list[LayerRow], match: str | None = None) -> str:
    shown = [r for r in rows if not match or match.lower() in r.path.lower() or match.lower() in r.type.lower()]
    width = max([len(r.path) for r in shown] + [4])
    twidth = max([len(r.type) for r in shown] + [4])
    lines = [f"{name}: {len(rows)} layers, shapes of one image at {side}x{side} px (a recipe names a layer by its path)",
             f"{'path':<{width}}  {'type':<{twidth}}  {'channels':>8}  output"]
    for r in shown:
        ch = str(r.channels) if r.channels is not None else "-"
        lines.append(f"{r.path:<{width}}  {r.type:<{twidth}}  {ch:>8}  {r.shape_text()}"
                     + ("  (folded)" if r.folded else ""))
    if match and not shown:
        lines.append(f"(no layer path or type contains '{match}')")
    folded = sum(r.folded for r in rows)
    if folded:
        norms = sum(r.type == "BatchNorm2d" for r in rows)
        every = "all" if folded == norms else f"{folded} of"
        lines.append(f"note: {every} {norms} BatchNorm2d layers are folded: their statistics in the weights are the "
                     "identity (mean 0, variance 1, scale 1), merged into the convolutions before them, so each "
                     "only adds its bias and bn-statistics has no statistics to match")
    return "\n".join(lines)


def as_json(name: str, side: int, rows: list[LayerRow]) -> str:
    return json.dumps({"model": name, "input_size": side, "layers": [asdict(r) for r in rows]}, indent=2)
