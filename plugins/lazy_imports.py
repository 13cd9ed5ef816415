"""torch, torchvision, numpy and PIL for the built-in plugins, imported when first used.

The host imports every built-in module to register its steps and models, and the commands
that only list or check things (``pipeline steps``, ``schema``, ``plugins``, ``validate``)
never run one. Importing torch and torchvision costs seconds, so the built-ins name these
modules through the stand-ins below: each is an empty module until one of its attributes is
read, then imports the real module and hands over that attribute (and keeps it, so the next
read is an ordinary attribute lookup). Code reads exactly as with ``import torch``; nothing
at a module's top level may use them (a base class, a decorator, a constant computed from
torch), or the import happens at load time again - ``tests/test_startup.py`` notices.

Third-party plugins need none of this: one that imports torch at its top level costs only its
own import time.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any


class LazyModule(ModuleType):
    """A module imported on the first read of one of its attributes."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_real"] = None

    def _load(self) -> ModuleType:
        real = self.__dict__["_real"]
        if real is None:
            real = importlib.import_module(self.__name__)
            self.__dict__["_real"] = real
        return real

    def __getattr__(self, attr: str) -> Any:
        # only called for what this stand-in does not hold yet
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        value = getattr(self._load(), attr)
        self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        state = "imported" if self.__dict__["_real"] is not None else "not imported yet"
        return f"<lazy module {self.__name__!r} ({state})>"


if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn.functional as F
    import torchvision.transforms.v2.functional as TF
    from PIL import Image, ImageOps
    from torch import nn
else:
    np = LazyModule("numpy")
    torch = LazyModule("torch")
    F = LazyModule("torch.nn.functional")
    nn = LazyModule("torch.nn")
    TF = LazyModule("torchvision.transforms.v2.functional")
    Image = LazyModule("PIL.Image")
    ImageOps = LazyModule("PIL.ImageOps")

__all__ = ["LazyModule", "np", "torch", "F", "nn", "TF", "Image", "ImageOps"]
