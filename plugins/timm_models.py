"""Every timm model, by ``timm:NAME`` (``timm:convnext_tiny``, ``timm:vit_small_patch16_224``).

timm is an optional extra (``pip install 'pipeline-transfigure[timm]'``); without it the names
are refused with that line. Preprocessing (mean, std, input side) comes from timm's own
pretrained config for the name; class names are ImageNet's for a 1000-class head, else the
indices (or ``model.categories``). Weights: ``model.weights`` loads a local state dict into the
architecture; without it timm fetches its pretrained weights through its cache (Hugging Face
hub), and a fetch that fails is one line saying where to put them instead. ``model.kwargs`` go
to ``timm.create_model`` (``{img_size: 64, depth: 2}`` makes a small ViT for tests;
``pretrained: false`` builds it with random weights, seeded so that a replay gets the same ones,
without looking for any).

Vision transformers' layers give tokens; the model adapter shows them to objectives as a
feature map (embedding dimensions as channels, the patch grid as positions, the class token
left out), so ``channel``, ``neuron`` and ``layer`` steps name ``blocks.5`` as they name a CNN's block.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pipeline_core.errors import ModelLoadError, did_you_mean
from pipeline_core.hookspecs import hookimpl
from pipeline_core.model import ModelDef, ModelInfo, ModelSpec

from .lazy_imports import nn, torch

PREFIX = "timm"
INSTALL = "pip install 'pipeline-transfigure[timm]'"


def _timm():
    try:
        import timm
    except ImportError:
        raise KeyError(f"model '{PREFIX}:...' needs timm, which is not installed: {INSTALL}") from None
    return timm


@functools.cache
def _imagenet_names() -> tuple[str, ...]:
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


@functools.cache
def _info(name: str) -> ModelInfo:
    """From timm's pretrained config for ``name`` (no weights, no network)."""
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
    n = int(cfg.get("num_classes") or 1000)
    return ModelInfo(categories=_imagenet_names() if n == 1000 else tuple(str(i) for i in range(n)),
                     mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))), std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
                     size=int(cfg.get("input_size", (3, 224, 224))[-1]))


def _kwargs(spec: ModelSpec) -> dict:
    kwargs = dict(spec.kwargs)
    if spec.categories is not None:
        kwargs.setdefault("num_classes", len(spec.categories))
    return kwargs


def _load_state(spec: ModelSpec) -> dict:
    try:
        state = torch.load(spec.weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(f"model.weights: no file at {spec.weights}") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelLoadError(f"model.weights: {spec.weights} is not a PyTorch state dict ({why})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state


def build(name: str, spec: ModelSpec) -> nn.Module:
    timm = _timm()
    kwargs = _kwargs(spec)
    if not kwargs.pop("pretrained", True):  # model.kwargs.pretrained: false, random weights (tests, smoke runs)
        with torch.random.fork_rng(devices=[]):  # the same weights every build, so a run replays exactly
            torch.manual_seed(0)
            return timm.create_model(name, pretrained=False, **kwargs)
    if spec.weights is not None:
        model = timm.create_model(name, pretrained=False, **kwargs)
        try:
            model.load_state_dict(_load_state(spec), strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ModelLoadError(f"model.weights: {spec.weights} does not fit timm's {name} ({first}); check "
                                 "model.name, model.kwargs, and model.categories for the number of classes") from None
        return model
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - no network, no cache, a hub error: one line either way
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        cfg = timm.models.get_pretrained_cfg(name)
        hub = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or "timm's hub"
        raise ModelLoadError(f"could not get the pretrained weights of {PREFIX}:{name} ({type(exc).__name__}: "
                             f"{reason}); fetch them once where the hub is reachable ({hub}, into timm's cache), "
                             "or set model.weights to a local state-dict file") from None


def skeleton(name: str, spec: ModelSpec) -> nn.Module:
    kwargs = _kwargs(spec)
    kwargs.pop("pretrained", None)
    return _timm().create_model(name, pretrained=False, **kwargs)


@dataclass
class TimmModelDef(ModelDef):
    """A timm ModelDef whose input side follows ``model.kwargs.img_size`` (a ViT built for
    another side sees only that side) unless ``model.size`` says otherwise."""

    def describe(self, spec: ModelSpec) -> ModelInfo:
        info = super().describe(spec)
        side = spec.kwargs.get("img_size")
        if spec.size is None and side is not None:
            side = side[-1] if isinstance(side, (list, tuple)) else side
            info = ModelInfo(info.categories, info.mean, info.std, int(side))
        return info


def make(name: str) -> ModelDef:
    """The ModelDef of ``timm:NAME``; KeyError (one line) for a name timm does not have."""
    timm = _timm()
    arch = name.split(".", 1)[0]
    if not name or not timm.is_model(arch):
        hint = did_you_mean(arch, timm.list_models()) if name else ""
        raise KeyError(f"unknown model '{PREFIX}:{name}': timm has no such architecture{hint} "
                       "(timm.list_models() names them)")
    return TimmModelDef(name=f"{PREFIX}:{name}", build=functools.partial(build, name),
                        info=functools.partial(_info, name), skeleton=functools.partial(skeleton, name),
                        description=f"timm {name}")


@hookimpl
def register_models(registry):
    registry.add_model_family(PREFIX, make)
