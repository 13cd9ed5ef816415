"""Loading the recipes' photos for tests."""

from pathlib import Path

import torch

from pipeline_plugins.photo_files import load_photo

PHOTOS = Path(__file__).resolve().parents[1] / "recipes" / "images"


def load(name: str, size: int = 224) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF

    photo = load_photo(PHOTOS / name)
    return TF.resize(photo, [size, size], antialias=True).unsqueeze(0)
