"""Every torchvision classification model, by its torchvision name.

Without ``model.weights`` the ImageNet weights come through torchvision's weights API (and its
download cache); preprocessing and class names come from the weights' metadata. With
``model.weights`` a local state dict is loaded into the same architecture, for offline use and
for fine-tuned classifiers (give ``categories`` and the model's ``mean``/``std``/``size``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from pipeline_core.errors import ModelLoadError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.model import HeadDef, ModelDef, ModelInfo, ModelSpec

HEADS = {
    "inception_v3": {
        "aux": HeadDef(layer="Mixed_6e", head="AuxLogits", size=299,
                       doc="InceptionV3's auxiliary classifier on Mixed_6e (1000 logits)"),
    },
    "googlenet": {
        "aux1": HeadDef(layer="inception4a", head="aux1", size=224, doc="GoogLeNet's first auxiliary classifier"),
        "aux2": HeadDef(layer="inception4d", head="aux2", size=224, doc="GoogLeNet's second auxiliary classifier"),
    },
}


@functools.cache
def _default_info(name: str) -> ModelInfo:
    weights = get_model_weights(name).DEFAULT
    preprocess = weights.transforms()
    return ModelInfo(
        categories=tuple(weights.meta["categories"]),
        mean=tuple(preprocess.mean),
        std=tuple(preprocess.std),
        size=int(preprocess.crop_size[0]),
    )


def _cache_path(name: str) -> Path:
    url = get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _local_kwargs(name: str, spec: ModelSpec) -> dict:
    kwargs = dict(spec.kwargs)
    if spec.categories is not None:
        kwargs.setdefault("num_classes", len(spec.categories))
    if name in HEADS:  # keep the auxiliary heads so their weights load and they can be used
        kwargs.setdefault("aux_logits", True)
        kwargs.setdefault("init_weights", False)
    return kwargs


def build(name: str, spec: ModelSpec) -> nn.Module:
    if spec.weights is not None:
        try:
            state = torch.load(spec.weights, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ModelLoadError(f"model.weights: no file at {spec.weights}") from None
        except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file
            text = str(exc)
            if "Unsupported global" in text:
                why = "it holds more than tensors: save model.state_dict(), not the model"
            elif any(s in text for s in ("Weights only load failed", "invalid load key", "zip archive", "EOF")) \
                    or isinstance(exc, (KeyError, IndexError, ValueError)) or len(text.strip()) < 12:
                why = "the file is corrupt, cut short or not a PyTorch file"
            else:
                why = (text.strip().splitlines() or [type(exc).__name__])[0][:160]
            raise ModelLoadError(f"model.weights: {spec.weights} is not a PyTorch state dict ({why})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        model = get_model(name, weights=None, **_local_kwargs(name, spec))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ModelLoadError(
                f"model.weights: {spec.weights} does not fit torchvision's {name} ({first}); "
                "check model.name, and model.categories for the number of classes"
            ) from None
        return model
    weights = get_model_weights(name).DEFAULT
    cached = _cache_path(name)
    was_cached = cached.is_file()
    try:
        return get_model(name, weights=weights, **spec.kwargs)
    except Exception as exc:  # noqa: BLE001 - a download that failed, or a cached file that is not weights
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if was_cached:  # torch's cache holds a file cut short or overwritten: it is read, never downloaded again
            raise ModelLoadError(
                f"the cached weights of {name} at {cached} cannot be read ({type(exc).__name__}: {reason}); the "
                f"file is corrupt or cut short: delete it (rm {cached}) and run again to download it anew, or set "
                "model.weights to a local state-dict file"
            ) from None
        if not isinstance(exc, (OSError, RuntimeError, ValueError)):
            raise
        raise ModelLoadError(
            f"could not get the ImageNet weights of {name} ({reason}). Download {weights.url} "
            f"to {_cache_path(name)}, or set model.weights to a local state-dict file "
            "(with model.mean, model.std and model.size)"
        ) from None


def skeleton(name: str, spec: ModelSpec) -> nn.Module:
    """The architecture :func:`build` gives, with random weights: layer paths and shapes without a download."""
    kwargs = _local_kwargs(name, spec) if spec.weights is not None else dict(spec.kwargs)
    if name in HEADS:
        kwargs.setdefault("init_weights", False)
    return get_model(name, weights=None, **kwargs)


def model_defs() -> list[ModelDef]:
    defs = []
    for name in list_models(module=torchvision.models):
        defs.append(
            ModelDef(
                name=name,
                build=functools.partial(build, name),
                info=functools.partial(_default_info, name),
                heads=HEADS.get(name, {}),
                description=f"torchvision {name}, ImageNet-1k weights",
                skeleton=functools.partial(skeleton, name),
            )
        )
    return defs


@hookimpl
def register_models(registry):
    for model in model_defs():
        registry.add_model(model)
