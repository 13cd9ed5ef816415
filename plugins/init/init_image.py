"""init-image: start from photographs (transfiguration). Grayscale and RGBA photos become RGB, and a
photo's EXIF orientation is applied, so a phone's portrait shot starts upright, as viewers show it."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Union

from pydantic import Field

from pipeline_core.errors import Location, RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import MAX_SIDE, Step, StepKind, StepParams

from ..lazy_imports import TF, torch
from ..photo_files import expand_images, load_photo
from .image_size import Size, image_size

MAX_PHOTOS = 4096


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


def _scaled(h: int, w: int, scale: float) -> tuple[int, int]:
    return max(1, round(h * scale)), max(1, round(w * scale))


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
