"""A model handed over from Python, lent to the engine as if a plugin had registered it.

The engine finds models by name in the registry, and a recipe names its model; so an
``nn.Module`` from a notebook is registered for the length of one call under a name of its own
(``python:ClassName``), with a ``build`` that returns the module itself and the module as its
skeleton, so validation checks the recipe's layer paths against it before anything runs. The
recipe's ``model:`` section is pointed at that name, exactly as ``--model`` points it at
another. run.json says the model came from memory, and how to replay the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline_core.errors import RecipeError
from pipeline_core.model import ModelDef, ModelInfo
from pipeline_core.recipe.source import Override

#: where a lent model's state dict goes in the run folder when asked to keep it
STATE_FILE = "model_state.pt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Borrowed:
    name: str
    module: nn.Module
    info: ModelInfo
    label: str
    saved: bool = False

    def overrides(self) -> list[str]:
        """The recipe's model section pointed at the lent model (its own keys set to null, as
        ``--model`` does, so nothing of the recipe's model mixes with this one)."""
        keys = {"name": self.name, "weights": None, "mean": None, "std": None, "size": None, "categories": None,
                "ensemble": []}
        import json

        return [Override(f"model.{k}={json.dumps(v)}", f"model={self.label}") for k, v in keys.items()]

    def save(self, run_dir: Path) -> None:
        torch.save(self.module.state_dict(), run_dir / STATE_FILE)
        self.saved = True

    @property
    def note(self) -> dict[str, Any]:
        cls = type(self.module)
        how = (f"from Python, with the same module: pipeline_core.run('RUN_DIR/run.json', model=module)"
               + (f"; its weights are in {STATE_FILE} (module.load_state_dict(torch.load('RUN_DIR/{STATE_FILE}')))"
                  if self.saved else "; pass save_model=True to keep its weights with the run"))
        return {"source": "in-memory nn.Module passed from Python", "class": f"{cls.__module__}.{cls.__qualname__}",
                "state_dict": STATE_FILE if self.saved else None, "replay": how}


def _imagenet_names() -> tuple[str, ...]:
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _timm_config(module: nn.Module) -> dict[str, Any] | None:
    """timm's own preprocessing for a timm model (its pretrained config), else None."""
    if getattr(module, "pretrained_cfg", None) is None:
        return None
    try:
        from timm.data import resolve_model_data_config
    except ImportError:
        return None
    config = dict(resolve_model_data_config(module))
    fixed = getattr(getattr(module, "patch_embed", None), "img_size", None)  # a ViT made for another side
    if fixed:
        config["input_size"] = (3, *tuple(fixed))
    return config


def _count_outputs(module: nn.Module, size: int) -> int:
    was = module.training
    module.eval()
    try:
        device = next(iter(module.parameters()), torch.empty(0)).device
        with torch.no_grad():
            out = module(torch.zeros(1, 3, size, size, device=device))
    finally:
        module.train(was)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise RecipeError(f"model: the module returns {tuple(getattr(out, 'shape', ())) or type(out).__name__}, "
                          "not (batch, classes) logits; wrap it so that forward returns the logits")
    return int(out.shape[1])


def describe(model: Any) -> tuple[nn.Module, ModelInfo, str | None]:
    """(module, its preprocessing and classes, its given name) for an ``nn.Module`` or a
    :class:`pipeline_core.api.Model`; RecipeError for anything else."""
    from pipeline_core.api import Model

    given = model if isinstance(model, Model) else None
    module = given.module if given is not None else model
    if not isinstance(module, nn.Module):
        raise RecipeError(f"model: expected a torch nn.Module, a pipeline_core.Model or a model name such as "
                          f"'mobilenet_v2' (see 'pipeline models'), got {type(module).__name__}")
    timm = _timm_config(module) or {}
    mean = tuple(given.mean) if given and given.mean is not None else tuple(timm.get("mean", IMAGENET_MEAN))
    std = tuple(given.std) if given and given.std is not None else tuple(timm.get("std", IMAGENET_STD))
    size = given.size if given and given.size is not None else int(timm.get("input_size", (3, 224, 224))[-1])
    for key, value in (("mean", mean), ("std", std)):
        if len(value) != 3:
            raise RecipeError(f"model: {key} needs three numbers (R, G, B), got {list(value)}")
    if given is not None and given.classes is not None:
        categories = tuple(str(c) for c in given.classes)
        if not categories:
            raise RecipeError("model: the list of classes is empty")
    else:
        n = getattr(module, "num_classes", None)
        n = n if isinstance(n, int) and n > 0 else _count_outputs(module, size)
        categories = _imagenet_names() if n == 1000 else tuple(str(i) for i in range(n))
    info = ModelInfo(categories=categories, mean=mean, std=std, size=size)  # type: ignore[arg-type]
    return module, info, given.name if given is not None else None


def lend(model: Any, registry: Any) -> Borrowed:
    """Register ``model`` in ``registry`` under a free ``python:NAME``; the caller removes it."""
    module, info, name = describe(model)
    base = f"python:{name or type(module).__name__}"
    name, n = base, 2
    while name in registry.models:
        name, n = f"{base}-{n}", n + 1

    def same(_spec: Any) -> nn.Module:
        return module

    registry._as("(python)").add_model(ModelDef(
        name=name, build=same, info=info, skeleton=same,
        description=f"an in-memory {type(module).__name__} passed from Python"))
    registry._as("(host)")
    return Borrowed(name, module, info, f"<{type(module).__name__}>")

