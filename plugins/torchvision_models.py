"""Every torchvision classification model, by its torchvision name.

Without ``model.weights`` the ImageNet weights come through torchvision's weights API (and its
download cache); preprocessing and class names come from the weights' metadata. With
``model.weights`` a local state dict is loaded into the same architecture, for offline use and
for fine-tuned classifiers (give ``categories`` and the model's ``mean``/``std``/``size``).

The names and the default weights' metadata (class names, preprocessing, download address)
come from :mod:`.torchvision_table`, a copy made from the installed torchvision, so listing
and validating need neither torch nor torchvision; with another torchvision version they are
read from torchvision itself (:func:`live_table`), as the copy was made.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

from pipeline_core.errors import ModelLoadError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.model import HeadDef, ModelDef, ModelInfo, ModelSpec

from .lazy_imports import nn, torch

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


def live_table() -> dict[str, Any]:
    """Every classification model of the installed torchvision, with its default weights'
    metadata: ``{"torchvision": version, "categories": (names shared by the models), "models":
    {name: {"mean", "std", "size", "url"[, "categories" where they differ]}}}``. Imports torch."""
    import torchvision
    from torchvision.models import get_model_weights, list_models

    models: dict[str, dict[str, Any]] = {}
    shared: tuple[str, ...] | None = None
    for name in list_models(module=torchvision.models):
        weights = get_model_weights(name).DEFAULT
        preprocess = weights.transforms()
        categories = tuple(weights.meta["categories"])
        shared = categories if shared is None else shared
        models[name] = {"mean": tuple(preprocess.mean), "std": tuple(preprocess.std),
                        "size": int(preprocess.crop_size[0]), "url": weights.url,
                        **({"categories": categories} if categories != shared else {})}
    return {"torchvision": _installed_version() or torchvision.__version__, "categories": shared or (),
            "models": models}


TABLE_HEADER = '''"""A copy of :func:`pipeline_plugins.torchvision_models.live_table` for torchvision {version}.

The torchvision plugin reads it instead of importing torchvision (seconds, with torch) when the
installed torchvision is this version. Made by ``python -c "from pipeline_plugins.torchvision_models
import write_table; write_table()"`` after installing another torchvision; tests/test_startup.py
checks it against torchvision.
"""

# generated: do not edit

'''


def write_table(path: Path | None = None) -> Path:
    """Write :func:`live_table` as the module :mod:`.torchvision_table`, beside this one."""
    import pprint

    live = live_table()
    path = path or Path(__file__).with_name("torchvision_table.py")
    body = pprint.pformat(live, width=110, compact=True, sort_dicts=False)
    path.write_text(TABLE_HEADER.format(version=live["torchvision"]) + f"TABLE = {body}\n", encoding="utf-8")
    return path


def _installed_version() -> str | None:
    """The installed torchvision distribution's version, read from its metadata (no import)."""
    try:
        return importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def table() -> dict[str, Any]:
    """:func:`live_table`, from the copy in :mod:`.torchvision_table` when it was made from the
    installed torchvision version (read without importing torch), else from torchvision."""
    from .torchvision_table import TABLE

    if _installed_version() == TABLE["torchvision"]:
        return TABLE
    return live_table()


@functools.cache
def _default_info(name: str) -> ModelInfo:
    entry = table()["models"][name]
    return ModelInfo(
        categories=tuple(entry.get("categories", table()["categories"])),
        mean=tuple(entry["mean"]),
        std=tuple(entry["std"]),
        size=int(entry["size"]),
    )


def _hub_dir() -> Path:
    """torch.hub's folder: ``torch.hub.get_dir()`` once torch is loaded (a script may have moved
    it with ``set_dir``); before that, where torch documents it: ``$TORCH_HOME/hub``, with
    TORCH_HOME defaulting to ``$XDG_CACHE_HOME/torch`` and that to ``~/.cache/torch``."""
    if "torch" in sys.modules:
        return Path(sys.modules["torch"].hub.get_dir())
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.path.expanduser(os.environ.get("TORCH_HOME", os.path.join(cache, "torch")))) / "hub"


def _cache_path(name: str) -> Path:
    url = table()["models"][name]["url"]
    return _hub_dir() / "checkpoints" / Path(urlparse(url).path).name


def pending_download(name: str) -> tuple[str, Path] | None:
    """(url, file) when building ``name`` without ``model.weights`` downloads its weights (they
    are not in torch.hub's cache yet); None when they are there, or ``name`` is not torchvision's."""
    entry = table()["models"].get(name)
    if entry is None:
        return None
    file = _cache_path(name)
    return None if file.is_file() else (entry["url"], file)


def _local_kwargs(name: str, spec: ModelSpec) -> dict:
    kwargs = dict(spec.kwargs)
    if spec.categories is not None:
        kwargs.setdefault("num_classes", len(spec.categories))
    if name in HEADS:  # keep the auxiliary heads so their weights load and they can be used
        kwargs.setdefault("aux_logits", True)
        kwargs.setdefault("init_weights", False)
    return kwargs


#: where training code keeps the weights in a checkpoint: {"state_dict": ...} or {"model": ...}
_WRAPPERS = ("state_dict", "model")


def classifier_state(state: Any, expected: Iterable[str]) -> Any:
    """The classifier's own state dict inside a checkpoint saved by training code.

    A checkpoint may wrap the weights (``{"state_dict": ...}``, ``{"model": ..., "epoch": ...}``)
    and prefix their keys: ``module.`` (DataParallel), ``_orig_mod.`` (torch.compile), or
    ``module.model.`` of the robustness library's robust ImageNet models, whose file also holds
    an attacker's copy (``module.attacker.model.``) and a normaliser. The prefix is the shortest
    under which the keys cover every key the architecture has; keys outside it are left out.
    Anything that does not fit is returned as it is, for ``load_state_dict`` to report."""
    for _ in range(2):  # {"model": {"state_dict": ...}} at most
        if isinstance(state, dict):
            inner = next((state[k] for k in _WRAPPERS if isinstance(state.get(k), dict)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) for k, v in state.items() if k in _WRAPPERS):
                state = inner
    expected = [k for k in expected if not k.endswith("num_batches_tracked")]  # older files lack these counters
    if not isinstance(state, dict) or not expected or all(k in state for k in expected):
        return state
    probe = expected[0]
    prefixes = sorted({k[:-len(probe)] for k in state if isinstance(k, str) and k.endswith("." + probe)}, key=len)
    for prefix in prefixes:
        if all(prefix + k in state for k in expected):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def build(name: str, spec: ModelSpec) -> nn.Module:
    from torchvision.models import get_model, get_model_weights

    if spec.weights is not None:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):  # torchvision's train.py saves its args
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
        model = get_model(name, weights=None, **_local_kwargs(name, spec))
        state = classifier_state(state, model.state_dict().keys())
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            first = " ".join(lines[:2])[:240]  # "Error(s) in loading ...:" says nothing alone
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
    from torchvision.models import get_model

    kwargs = _local_kwargs(name, spec) if spec.weights is not None else dict(spec.kwargs)
    if name in HEADS:
        kwargs.setdefault("init_weights", False)
    return get_model(name, weights=None, **kwargs)


def model_defs() -> list[ModelDef]:
    defs = []
    for name in table()["models"]:
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

