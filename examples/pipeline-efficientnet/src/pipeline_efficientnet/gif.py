"""The output writer ``gif``: an animated GIF of the run, small enough to paste into a chat or a README.

video.mp4 is the faithful record; a GIF plays everywhere without a video player, at the cost
of 256 colours per frame. The writer keeps a reduced copy of every kept frame in memory and
writes the file once, when the run ends (completed, interrupted or failed alike), through a
temporary file, so the run folder never holds half a GIF.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from pydantic import Field, field_validator

from pipeline_core.step import StepParams
from pipeline_core.writers import FrameInfo, Writer, grid, write_atomically


class GifParams(StepParams):
    file: str = Field("run.gif", description="File name inside the run folder (ends in .gif).")
    every: int = Field(1, ge=1, description="Keep one frame the run emits in N (the last one always).")
    tile: int = Field(128, ge=16, le=1024, description="Side in pixels of each image in the GIF.")
    fps: float | None = Field(None, gt=0, le=50, description="Frames per second (default: output.fps).")
    loop: bool = Field(True, description="Loop forever (true) or play once (false).")
    logits_panel: bool = Field(False, description="Draw each image's logits beside it, as the video does.")

    @field_validator("file")
    @classmethod
    def _plain_gif_name(cls, value: str) -> str:
        if "/" in value or "\\" in value or value.startswith(".") or not value.lower().endswith(".gif"):
            raise ValueError(f"give a plain file name ending in .gif, such as 'run.gif', got '{value}'")
        return value


class GifWriter(Writer):
    """An animated GIF of the evolving batch, next to video.mp4."""

    name = "gif"
    Params = GifParams

    def __init__(self, params: GifParams, info: FrameInfo):
        super().__init__(params, info)
        self.frames: list[np.ndarray] = []
        self._pending: np.ndarray | None = None  # the newest skipped frame, kept so the end is never lost
        self._seen = 0

    def frame(self, iteration: int, images: torch.Tensor, logits: torch.Tensor | None) -> None:
        picture = grid(images, logits, self.info, tile=self.params.tile, panels=self.params.logits_panel)
        if self.frames and picture.shape != self.frames[0].shape:
            # a resize transform changed the image's shape: keep every frame the first one's size
            fixed = np.full(self.frames[0].shape, 255, dtype=np.uint8)
            h, w = min(fixed.shape[0], picture.shape[0]), min(fixed.shape[1], picture.shape[1])
            fixed[:h, :w] = picture[:h, :w]
            picture = fixed
        if self._seen % self.params.every == 0:
            self.frames.append(picture)
            self._pending = None
        else:
            self._pending = picture
        self._seen += 1

    def close(self, status: str) -> list[str]:
        if self._pending is not None:
            self.frames.append(self._pending)
            self._pending = None
        if not self.frames:
            return []
        fps = self.params.fps or self.info.fps
        pictures = [Image.fromarray(f) for f in self.frames]
        buf = io.BytesIO()
        options = {"loop": 0} if self.params.loop else {}
        pictures[0].save(buf, format="GIF", save_all=True, append_images=pictures[1:],
                         duration=max(20, round(1000 / fps)), optimize=False, **options)
        write_atomically(self.info.run_dir / self.params.file, buf.getvalue())
        return [self.params.file]
