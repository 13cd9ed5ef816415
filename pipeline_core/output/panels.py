"""The video's side panel beside each image: what the model sees, or each objective's course.

Two kinds, chosen per run. When objectives aim at classes, the panel says in words what the
logits scatter shows: the iteration, the target's name and probability and the model's
current top-1 class, above the scatter of the logits (targets in red). When no objective names
a class (an objective on a layer or a channel: a loss per image and nothing else), a logits
scatter says little, so the panel draws each objective's value for that image over the
iterations instead, as a small sparkline per objective, from the numbers the loop records at
the progress display's cadence (:mod:`.metrics`).

Drawn on the writer thread for every frame, so with NumPy and Pillow only (Pillow's
``ImageDraw`` and its default font), never PyTorch: see :mod:`.frames` for why.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline_core.output.frames import logits_panel

BACKGROUND = (250, 250, 250)
INK = (40, 40, 40)
RED = (200, 20, 20)
LINE = (30, 90, 180)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size)
    except (TypeError, OSError):  # an old Pillow or one without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _font_size(height: int) -> int:
    return int(min(16, max(8, height // 14)))


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` shortened (with '..') to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def _softmax(row: np.ndarray) -> np.ndarray:
    z = row.astype(np.float64) - float(row.max())
    e = np.exp(z)
    return e / e.sum()


@functools.lru_cache(maxsize=2048)
def _text_row(text: str, size: int, width: int, color: tuple[int, int, int]) -> np.ndarray:
    """One line of text as pixels, (size + 2, width, 3), read-only. Kept: the same line (a
    target's name, the top-1, this frame's iteration for every image) is drawn once, since
    FreeType's rendering is most of a panel's cost."""
    row = Image.new("RGB", (width, size + 2), BACKGROUND)
    draw = ImageDraw.Draw(row)
    font = _font(size)
    draw.text((3, 0), _fit(draw, text, font, width - 6), fill=color, font=font)
    pixels = np.asarray(row)
    pixels.flags.writeable = False
    return pixels


def _blank(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), BACKGROUND[0], dtype=np.uint8)  # a grey: one value fills faster


@functools.lru_cache(maxsize=64)
def _number_width(size: int) -> int:
    return int(_font(size).getlength("0.000")) + 6


def counter(iteration: int, total: int | None) -> str:
    """The frame's place in the run, counted as the progress bar and report count: the frame
    after the last of 100 iterations is "iteration 100 of 100", the photo or noise it starts
    from "iteration 0 of 100"."""
    return f"iteration {iteration}" + (f" of {total}" if total else "")


def class_panel(logits: np.ndarray | None, targets: Sequence[int], primary: int | None, iteration: int,
                categories: Sequence[str], height: int, width: int, total: int | None = None) -> np.ndarray:
    """Three lines of text (iteration, target and its probability, top-1) over the logits scatter."""
    size = _font_size(height)
    lines = 3 if height >= 3 * (size + 2) + 24 else 1
    band = lines * (size + 2) + 4
    name = (lambda k: str(categories[k]) if 0 <= k < len(categories) else str(k))
    text = [(counter(iteration, total), INK)]
    finite = logits is not None and logits.size > 0 and bool(np.all(np.isfinite(logits)))
    number = None
    if lines == 3:
        if primary is not None:
            number = f"{_softmax(logits)[primary]:.3f}" if finite and primary < logits.shape[0] else "-"
            text.append((name(primary), RED))
        else:
            text.append(("no class target", INK))
        text.append((f"top-1 {name(int(np.argmax(logits)))}" if finite else "top-1 -", INK))
    panel = _blank(height, width)
    # the probability is drawn on its own at the right: the name's pixels are then the same in
    # every frame (drawn once), and the number takes one of at most a thousand looks
    wide = _number_width(size) if number is not None else 0
    for i, (line, color) in enumerate(text):
        row = _text_row(line, size, width - wide if i == 1 else width, color)
        y = 2 + i * (size + 2)
        panel[y: y + row.shape[0], : row.shape[1]] = row[: max(0, height - y)]
    if number is not None and wide < width:
        row = _text_row(number, size, wide, RED)[: max(0, height - (size + 4))]
        panel[size + 4: size + 4 + row.shape[0], width - wide:] = row
    if height - band >= 8:
        panel[band:] = logits_panel(logits if logits is not None else np.zeros(0), targets, height - band, width)
    return panel


class Sparklines:
    """Each objective's value per image over the iterations, as recorded so far, for the panels.

    It reads the metrics' history (appended to by the loop's thread) up to the frame's
    iteration, keeping what it has read, so a frame costs the new rows only.
    """

    def __init__(self, history: list[dict[str, Any]] | None, labels: Sequence[str] = ()):
        self.history = history if history is not None else []
        self.read = 0
        self.iterations: list[int] = []
        #: label -> per image, the values in order; the run's objectives are named from the start
        self.series: dict[str, list[list[float]]] = {label: [] for label in labels}

    def _catch_up(self, iteration: int) -> None:
        while self.read < len(self.history) and self.history[self.read]["iteration"] <= iteration:
            row = self.history[self.read]
            self.read += 1
            n = len(self.iterations)
            self.iterations.append(row["iteration"])
            for label, values in (row.get("terms") or {}).items():
                per_image = self.series.setdefault(label, [])
                while len(per_image) < len(values):
                    per_image.append([])
                for i, v in enumerate(values):
                    seq = per_image[i]
                    seq.extend([float("nan")] * (n - len(seq)))  # an objective not active before
                    seq.append(float("nan") if v is None else float(v))

    def panel(self, image: int, iteration: int, height: int, width: int, total: int | None = None) -> np.ndarray:
        self._catch_up(iteration)
        size = _font_size(height)
        panel = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(panel)
        rows = [(2, counter(iteration, total))]
        top = size + 6
        labels = sorted(self.series)
        if not labels:
            rows.append((top, "no objective read yet"))
        row_h = (height - top) // max(len(labels), 1)
        for k, label in enumerate(labels):
            y0 = top + k * row_h
            values = self.series[label][image] if image < len(self.series[label]) else []
            last = next((v for v in reversed(values) if np.isfinite(v)), None)
            rows.append((y0, label if last is None else f"{label} {last:.4g}"))
            box_top, box_bottom = y0 + size + 3, y0 + row_h - 3
            if box_bottom - box_top >= 4:
                self._line(draw, values, 3, box_top, width - 4, box_bottom)
        out = np.asarray(panel).copy()
        for y, line in rows:
            row = _text_row(line, size, width, INK)[: max(0, height - y)]
            out[y: y + row.shape[0]] = row
        return out

    @staticmethod
    def _line(draw: ImageDraw.ImageDraw, values: list[float], x0: int, y0: int, x1: int, y1: int) -> None:
        v = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(v)
        if not ok.any():
            return
        n = len(v)
        xs = x0 + (np.arange(n) / max(n - 1, 1)) * (x1 - x0)
        lo, hi = float(v[ok].min()), float(v[ok].max())
        span = hi - lo if hi > lo else 1.0
        ys = y1 - (np.where(ok, v, lo) - lo) / span * (y1 - y0)
        draw.line([(x0, y1), (x1, y1)], fill=(210, 210, 210))
        points = [(float(x), float(y)) for x, y, good in zip(xs, ys, ok) if good]
        if len(points) == 1:
            x, y = points[0]
            draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=LINE)
        else:
            draw.line(points, fill=LINE, width=1)
