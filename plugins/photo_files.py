"""Photo files: finding them by path or glob, and reading one safely as an RGB tensor.

``init-image`` starts from photos and ``bn-statistics`` measures them; both read them here, so a
photo is found, oriented, size-checked and converted the same way. ``BUILTIN_PHOTOS`` is the
folder of ten ordinary photographs shipped with the package (``photos/ATTRIBUTION.md``).
"""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path
from typing import Sequence

from pipeline_core.errors import Location, RecipeError
from pipeline_core.regular import problem as regular_problem

from .lazy_imports import Image, ImageOps, TF, np, torch

#: ten ordinary photographs (see its ATTRIBUTION.md) whose statistics ``bn-statistics`` matches by default
BUILTIN_PHOTOS = Path(__file__).resolve().parent / "photos"


def expand_images(patterns: Sequence[str]) -> list[Path]:
    """Photos named by paths or globs, in a stable order."""
    out: list[Path] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            out.extend(Path(p) for p in sorted(glob.glob(pattern)))
        else:
            out.append(Path(pattern))
    return out


def load_photo(path: Path) -> torch.Tensor:
    """A photo as (3, H, W) float in [0, 1], upright by its EXIF orientation; grayscale, palette
    and RGBA photos become RGB.

    RecipeError if it is missing or not an image.
    """
    if path.is_dir():
        raise RecipeError(f"{path} is a folder, not an image; name the photos or a glob such as "
                          f"'{path.name}/*.jpg'", Location(key="images"))
    kind = regular_problem(path)
    if kind:  # a FIFO would make the decoder wait for ever
        raise RecipeError(f"the photo {path} is {kind}, not a regular file; name the image file itself",
                          Location(key="images"))
    if not path.is_file():
        raise RecipeError(f"no such image file: {path}", Location(key="images"))
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning is raw; the size is checked below instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if max_photo_pixels() > 2 * (Image.MAX_IMAGE_PIXELS or 0) > 0:
                Image.MAX_IMAGE_PIXELS = max_photo_pixels() // 2  # the user raised the limit past PIL's own
            im_file = Image.open(path)
        with im_file as im:
            _check_size(path, im.size)  # from the header, before the pixels take any memory
            im.load()
            im = _upright(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                flat = Image.new("RGB", im.size, (255, 255, 255))  # transparency over white
                flat.paste(im, mask=im.getchannel("A"))
                im = flat
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                return _deep_gray(im)
            pixels = TF.pil_to_tensor(im.convert("RGB"))
    except Image.DecompressionBombError:  # more than twice PIL's own limit: refused while opening
        raise RecipeError(_too_big(path, None), Location(key="images")) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise RecipeError(f"{path} is not a readable image ({type(exc).__name__})", Location(key="images")) from None
    return pixels.float() / 255.0


#: the largest photo read by default (decoded and as floats it takes ~15 bytes a pixel); the
#: environment variable PIPELINE_MAX_PHOTO_PIXELS raises it
MAX_PHOTO_PIXELS = 50_000_000
MAX_PIXELS_ENV = "PIPELINE_MAX_PHOTO_PIXELS"


def max_photo_pixels() -> int:
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else MAX_PHOTO_PIXELS


def _too_big(path: Path, size: tuple[int, int] | None) -> str:
    limit = max_photo_pixels()
    shown = f"is {size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.1f} megapixels)" if size else \
        f"has more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels"
    return (f"the photo {path} {shown}, more than the {limit / 1e6:g} megapixels a photo may have (reading it "
            f"would take gigabytes of memory); make it smaller (4000 px on the long side is plenty) or raise the "
            f"limit with the environment variable {MAX_PIXELS_ENV}=PIXELS")


def _check_size(path: Path, size: tuple[int, int]) -> None:
    """RecipeError before decoding a photo of more pixels than :func:`max_photo_pixels` allows."""
    if size[0] * size[1] > max_photo_pixels():
        raise RecipeError(_too_big(path, size), Location(key="images"))


def _upright(im: Image.Image) -> Image.Image:
    """The photo rotated or mirrored as its EXIF orientation says the camera held it; a photo
    whose EXIF block cannot be read is taken as it is stored."""
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:  # noqa: BLE001 - malformed EXIF data: the pixels are still good
        return im


def _deep_gray(im: Image.Image) -> torch.Tensor:
    """16-bit, 32-bit and float grayscale as RGB in [0, 1]: PIL's own conversion to RGB would clip
    them at 255 (16-bit photos come out white, float ones black)."""
    values = torch.from_numpy(np.asarray(im, dtype=np.float32).copy())
    top = float(values.max()) if values.numel() else 1.0
    if im.mode == "F" and top <= 1.0:
        scale = 1.0
    elif im.mode.startswith("I;16") or top > 255:
        scale = 65535.0
    else:
        scale = 255.0
    return (values / scale).clamp(0, 1).expand(3, *values.shape).contiguous()
