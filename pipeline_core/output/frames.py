"""Turning a batch (and its logits) into one RGB picture: the grid used by the video and grid.png.

This runs on the writer thread, beside the optimisation, for every video frame, so it is kept
cheap and out of PyTorch's way: the pixels are converted with NumPy and resized with Pillow,
both single-threaded. A PyTorch operation called from this thread would start a second
OpenMP thread team next to the loop's, and on a small CPU the two teams then fight over the
same cores (measured: a 224 px batch of 4 took about 13 ms per frame through PyTorch under
load, under 2 ms through NumPy; see docs/performance.md).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # the layout functions need none of these: validate checks a run's frame sizes without them
    import numpy as np
    import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8, clamping what lies outside.

    Rounds half to even (as ``torch.round``); NaN becomes 0.
    """
    return _planes_uint8(images).transpose(0, 2, 3, 1)


def _planes_uint8(images: torch.Tensor) -> np.ndarray:
    """As :func:`to_uint8`, but (B, 3, H, W): the channels stay planes, as the images hold them."""
    import numpy as np
    import torch

    x = images.detach()
    if x.device.type != "cpu" or x.dtype != torch.float32:
        x = x.to("cpu", torch.float32)
    a = np.multiply(x.numpy(), np.float32(255.0))  # a new array: the caller's tensor is never modified
    np.fmax(a, 0.0, out=a)  # fmax/fmin, unlike clip, also turn NaN into a bound (0)
    np.fmin(a, 255.0, out=a)
    np.rint(a, out=a)
    return a.astype(np.uint8)


def columns_for(n: int, with_panel: bool) -> int:
    """About square: a cell with a logits panel is twice as wide, so fewer columns."""
    return max(1, math.ceil(math.sqrt(n / 2 if with_panel else n)))


#: the longer side of a video frame when the recipe sets no ``output.tile``: big batches get
#: smaller tiles instead of frames that H.264 players refuse and that cost seconds to compose
MAX_FRAME_SIDE = 2048
#: grid.png of a big batch gets smaller tiles past this side (the PNGs keep full size); here
#: beside the frame's limit because recipe validation checks both before anything runs
MAX_GRID_SIDE = 8192
#: the smallest automatic tile; a batch that needs less than this makes a larger frame
MIN_AUTO_TILE = 16


def auto_tile(n: int, side: int, with_panel: bool, columns: int | None = None, pad: int = 2,
              budget: int = MAX_FRAME_SIDE) -> int | None:
    """A tile that keeps the grid of ``n`` images within ``budget`` pixels; None if ``side`` fits."""
    cols = columns or columns_for(n, with_panel)
    rows = math.ceil(n / cols)
    per, extra = (2, pad) if with_panel else (1, 0)
    fit_w = (budget - (cols + 1) * pad - cols * extra) // (cols * per)
    fit_h = (budget - (rows + 1) * pad) // rows
    tile = min(fit_w, fit_h)
    return None if tile >= side else max(MIN_AUTO_TILE, tile)


def logits_panel(logits: np.ndarray, targets: Sequence[int], height: int, width: int) -> np.ndarray:
    """A scatter of one image's logits over the class index, the target classes in red."""
    import numpy as np

    panel = np.full((height, width, 3), 250, dtype=np.uint8)
    n = logits.shape[0]
    if n == 0 or not np.all(np.isfinite(logits)):
        return panel
    lo, hi = float(logits.min()), float(logits.max())
    span = hi - lo if hi > lo else 1.0
    margin = max(2, height // 20)
    xs = np.round(np.linspace(margin, width - 1 - margin, n)).astype(int)
    ys = np.round((height - 1 - margin) - (logits - lo) / span * (height - 1 - 2 * margin)).astype(int)
    panel[margin - 1, :] = panel[height - margin, :] = 200
    for dy in (0, 1):
        panel[np.clip(ys + dy, 0, height - 1), xs] = (90, 90, 90)
    r = max(2, height // 64)
    for t in targets:
        if 0 <= t < n:
            y0, x0 = ys[t], xs[t]
            panel[max(y0 - r, 0): y0 + r + 1, max(x0 - r, 0): x0 + r + 1] = (220, 20, 20)
    return panel


def _resized(planes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, 3, H, W) uint8 resized to ``size`` (h, w), plane by plane (Pillow's bilinear filter,
    which widens when shrinking; the same pixels as resizing the RGB picture)."""
    import numpy as np
    from PIL import Image

    h, w = size
    return np.stack([
        np.stack([np.asarray(Image.fromarray(plane).resize((w, h), Image.Resampling.BILINEAR)) for plane in image])
        for image in planes
    ])


def scaled_size(h: int, w: int, tile: int | None) -> tuple[int, int]:
    """The (h, w) an image of the grid is drawn at: its longer side ``tile`` (unchanged without one)."""
    if tile is None or (h, w) == (tile, tile):
        return h, w
    scale = tile / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


#: where a photo lies on the canvas it shares with photos of other shapes (init-image's ``fit:
#: whole``): (top, left, height, width) as fractions of the canvas, so a resized image keeps it
Frame = tuple[float, float, float, float]


def frame_box(frame: Frame, height: int, width: int) -> tuple[int, int, int, int]:
    """``frame`` in pixels of an image of ``height`` x ``width``: (top, left, height, width).

    The final PNGs are cut with this, and grid.png and the video draw the same box, so every
    picture of a photo shows the same part of it."""
    top, left = round(frame[0] * height), round(frame[1] * width)
    top, left = min(max(top, 0), height - 1), min(max(left, 0), width - 1)
    return top, left, min(max(1, round(frame[2] * height)), height - top), min(max(1, round(frame[3] * width)), width - left)


def compose(
    images: torch.Tensor,
    logits: torch.Tensor | None = None,
    targets: Sequence[Sequence[int]] | None = None,
    tile: int | None = None,
    columns: int | None = None,
    pad: int = 2,
    panels: bool | None = None,
    side_panels: Sequence[np.ndarray] | None = None,
    frames: Sequence[Frame | None] | None = None,
) -> np.ndarray:
    """The batch as one (H, W, 3) uint8 grid.

    With ``panels`` (default: when logits are given) each image is followed by its logits
    panel; a frame without logits yet gets empty panels, so every frame has the same layout.
    ``tile`` scales each image so its longer side is ``tile`` pixels. ``side_panels`` (one
    (H, W, 3) picture per image, drawn by the caller at the scaled size) replace the logits panels.
    ``frames`` (per image, its photo's :data:`Frame` or None) draws only that part of each
    image: the margin a photo's shared canvas filled with its repeated edge pixels stays the
    background, so a cell shows the photo's own frame, centred as it lies on the canvas.
    """
    import numpy as np

    b, _, h, w = images.shape
    planes = _planes_uint8(images)
    size = scaled_size(h, w, tile)
    if size != (h, w):
        planes = _resized(planes, size)
    h, w = size
    if panels is None:
        panels = logits is not None
    side: list[np.ndarray] | None = None
    if side_panels is not None:
        side = [np.asarray(p)[:h, :w] for p in side_panels]
    elif panels:
        lg = logits.detach().float().cpu().numpy() if logits is not None else np.zeros((b, 0))
        side = [logits_panel(lg[i], (targets or [[]] * b)[i], h, w) for i in range(b)]
    cols = columns or columns_for(b, side is not None)
    rows = math.ceil(b / cols)
    cell_w = w * (2 if side is not None else 1) + (pad if side is not None else 0)
    out_h = rows * h + (rows + 1) * pad
    out_w = cols * cell_w + (cols + 1) * pad
    out_h += out_h % 2  # H.264 with yuv420p needs even sides
    out_w += out_w % 2
    canvas = np.full((out_h, out_w, 3), 255, dtype=np.uint8)
    for i in range(b):
        r, c = divmod(i, cols)
        y = pad + r * (h + pad)
        x = pad + c * (cell_w + pad)
        frame = frames[i] if frames is not None and i < len(frames) else None
        top, left, fh, fw = (0, 0, h, w) if frame is None else frame_box(frame, h, w)
        for ch in range(3):  # plane by plane: copying whole pixels out of the planes costs about 4 times as much
            canvas[y + top: y + top + fh, x + left: x + left + fw, ch] = planes[i, ch, top: top + fh, left: left + fw]
        if side is not None:
            canvas[y: y + h, x + w + pad: x + 2 * w + pad] = side[i]
    return canvas
