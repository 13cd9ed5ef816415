"""The size of a starting image: one side or [height, width], the model's input size by default."""

from __future__ import annotations

from typing import Union

from pipeline_core.step import MAX_SIDE

#: a side in pixels, or [height, width]
Size = Union[int, tuple[int, int]]


def image_size(size: Size | None, default: int | None) -> tuple[int, int]:
    """(height, width) of ``size``, else a square of ``default`` (the model's input side, 224 if
    unknown); ValueError for a side outside 1..MAX_SIDE, which the step reports on its ``size``."""
    if size is None:
        size = default or 224
    h, w = (size, size) if isinstance(size, int) else size
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ValueError(f"image sides must lie in 1..{MAX_SIDE}, got {h}x{w}")
    return h, w
