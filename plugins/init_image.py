"""init-image: start from photographs (transfiguration). Grayscale and RGBA photos become RGB, and a
photo's EXIF orientation is applied, so a phone's portrait shot starts upright, as viewers show it."""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path
from typing import ClassVar, Literal, Sequence, Union

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from pydantic import Field
from PIL import Image, ImageOps

from pipeline_core.regular import problem as regular_problem
from pipeline_core.errors import Location, RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import MAX_SIDE, Step, StepKind, StepParams

from .init_noise import Size, image_size

MAX_PHOTOS = 4096


def expand_images(patterns: Sequence[str]) -> list[Path]:
    """Photos named by paths or globs, in a stable order."""
    out: list[Path] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            out.extend(Path(p) for p in sorted(glob.glob(pattern)))
        else:
            out.append(Path(pattern))
    return out


class InitImageParams(StepParams):
    images: Union[str, list[str]] = Field(..., description="Photo paths or globs, relative to the recipe file.")
    size: Size | None = Field(
        None, description="whole: the short side of each photo in pixels (its long side follows its aspect ratio), "
                          "or [height, width] of a canvas each photo is fitted into whole; crop and stretch: the "
                          "side (or [height, width]) of the image. Default: the model's input size. Sizes up to a "
                          "photo's own keep its detail; beyond, it is enlarged.")
    fit: Literal["whole", "crop", "stretch"] = Field(
        "whole", description="whole: keep the whole photo and its aspect ratio; photos of other shapes in one batch "
                             "share the smallest canvas that holds each whole, centred, its margin filled by "
                             "repeating the photo's edge pixels, and the final PNGs are cut back to each photo's "
                             "own frame. crop: resize the short side and cut the centre. stretch: resize to the "
                             "size exactly."
    )


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


def _scaled(h: int, w: int, scale: float) -> tuple[int, int]:
    return max(1, round(h * scale)), max(1, round(w * scale))


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


class InitImage(Step):
    """Load photos as the starting images, one per batch element (repeated to fill the batch).

    By default (``fit: whole``) each photo is kept whole with its aspect ratio, its short side
    ``size`` pixels (the model's input size unless given); photos of other shapes share one
    canvas, centred, the margin filled with their edge pixels, and the final PNGs are cut back
    to each photo's own frame. ``fit: crop`` cuts a centred square (or ``[height, width]``)."""

    name = "init-image"
    kind = StepKind.INIT
    Params = InitImageParams
    paths: ClassVar[tuple[str, ...]] = ("images",)

    @staticmethod
    def _files(params) -> list[Path]:
        patterns = [params.images] if isinstance(params.images, str) else list(params.images)
        return expand_images(patterns)

    @classmethod
    def batch_hint(cls, params) -> int | None:
        return len(cls._files(params)) or None

    def bind(self, plan) -> None:
        files = self._files(self.params)
        if not files:
            raise RecipeError(f"no photo matches {self.params.images!r}", Location(key="images"))
        if len(files) > MAX_PHOTOS:
            raise RecipeError(f"{len(files)} photos is more than {MAX_PHOTOS}", Location(key="images"))
        if plan.batch % len(files):
            raise RecipeError(f"{len(files)} photos do not divide the batch of {plan.batch}", Location(key="images"))
        self.files = files
        photos = [load_photo(f) for f in files]
        if self.params.fit == "whole":
            self.photos, self.frames = self._whole(photos, plan.model_size)
        else:
            try:
                self.size = image_size(self.params.size, plan.model_size)
            except ValueError as exc:
                raise RecipeError(str(exc), Location(key="size")) from None
            self.photos, self.frames = [self._fit(p) for p in photos], None

    def _whole(self, photos: list[torch.Tensor], model_size: int | None) -> tuple[list[torch.Tensor], list | None]:
        """Each photo resized whole, then all placed on one canvas (see ``fit``); the frames are
        where each photo lies on it, (top, left, height, width) as fractions of the canvas's
        height and width, or None when every photo fills it."""
        size = self.params.size
        if size is None or isinstance(size, int):
            short = size or model_size or 224
            if not 1 <= short <= MAX_SIDE:
                raise RecipeError(f"size must lie in 1..{MAX_SIDE}, got {short}", Location(key="size"))
            shapes = [_scaled(p.shape[1], p.shape[2], short / min(p.shape[1], p.shape[2])) for p in photos]
            canvas = (max(h for h, _ in shapes), max(w for _, w in shapes))
        else:
            canvas = tuple(size)
            shapes = [_scaled(p.shape[1], p.shape[2], min(canvas[0] / p.shape[1], canvas[1] / p.shape[2]))
                      for p in photos]
        if not (1 <= canvas[0] <= MAX_SIDE and 1 <= canvas[1] <= MAX_SIDE):
            raise RecipeError(f"the photos fitted whole make a {canvas[0]}x{canvas[1]} canvas; image sides must lie "
                              f"in 1..{MAX_SIDE}: give a smaller size", Location(key="size"))
        self.size = canvas
        out, frames = [], []
        for photo, (h, w) in zip(photos, shapes):
            resized = TF.resize(photo, [h, w], antialias=True)
            top, left = (canvas[0] - h) // 2, (canvas[1] - w) // 2
            bottom, right = canvas[0] - h - top, canvas[1] - w - left
            if top or left or bottom or right:  # the margin repeats the edge pixels (no hard border to erase)
                resized = torch.nn.functional.pad(resized[None], (left, right, top, bottom), mode="replicate")[0]
            out.append(resized)
            frames.append((top, left, h, w))
        if all(f == (0, 0, *canvas) for f in frames):
            return out, None
        # as fractions of the canvas, so that a step that resizes the image (interpolate) keeps them
        return out, [(t / canvas[0], l / canvas[1], h / canvas[0], w / canvas[1]) for t, l, h, w in frames]

    def _fit(self, photo: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        if self.params.fit == "stretch":
            return TF.resize(photo, [h, w], antialias=True)
        scale = max(h / photo.shape[1], w / photo.shape[2])
        resized = TF.resize(photo, [max(h, round(photo.shape[1] * scale)), max(w, round(photo.shape[2] * scale))],
                            antialias=True)
        return TF.center_crop(resized, [h, w])

    def init(self, ctx, image):
        batch = torch.stack(self.photos)
        repeats = ctx.batch // batch.shape[0]
        if self.frames is not None:  # the run folder cuts each final PNG back to its photo's frame
            ctx.state["frames"] = self.frames * repeats
        return batch.repeat(repeats, 1, 1, 1).to(ctx.device)

    def record(self):
        return {"images": [str(f) for f in self.files]}


@hookimpl
def register_steps(registry):
    registry.add_step(InitImage)
