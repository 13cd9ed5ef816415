"""video.mp4: the evolving batch as an H.264 grid, streamed to ffmpeg as frames arrive.

The MP4 is *fragmented* (its index is written with every fragment, not only at the end), so a
run killed at any moment, even without a chance to close ffmpeg, leaves a playable video of
every frame encoded so far.
"""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

from .frames import compose
from .writers import FrameInfo, Writer

FRAGMENTED = ["-movflags", "+frag_keyframe+empty_moov+default_base_moof", "-g", "25"]


class VideoWriter(Writer):
    """H.264 at high quality (CRF 10) with x264's ``ultrafast`` preset.

    The preset is a speed choice. On a small CPU the encoder shares the cores with the
    model; on a GPU machine the loop can ask for hundreds of frames a second. x264's default
    preset (``medium``) costs about 10 times the CPU per frame of ``ultrafast``, for files
    about a sixth smaller at the same quality (docs/performance.md has the figures).
    """

    name = "video"
    #: x264 preset; slower presets give smaller files for the same quality at more CPU per frame
    preset = "ultrafast"

    def __init__(self, params, info: FrameInfo, logits_panel: bool = True, path: Path | None = None,
                 encoder_threads: int | None = None):
        super().__init__(params, info)
        #: x264's threads; None lets it choose (about 1.5 per core). A run on the CPU passes 1:
        #: the cores belong to PyTorch's threads, and a single encoder thread preempts them less
        #: often (docs/performance.md: 0.86 -> 0.90 of the bare loop with a frame every iteration)
        self.encoder_threads = encoder_threads
        self.frame_side = info.tile  # a fixed tile: frames larger than it may be shrunk before they get here
        self.path = path or info.run_dir / "video.mp4"
        self.logits_panel = logits_panel
        self._encoder = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def _open(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        self._size = (w, h)
        self._encoder = imageio_ffmpeg.write_frames(
            str(self.path), (w, h), fps=self.info.fps, codec="libx264", quality=8,
            macro_block_size=1, output_params=[*FRAGMENTED, "-preset", self.preset, *self._threads()], ffmpeg_log_level="error",
        )
        self._encoder.send(None)  # start ffmpeg

    def _threads(self) -> list[str]:
        return ["-threads", str(self.encoder_threads)] if self.encoder_threads else []

    def frame(self, iteration: int, images: torch.Tensor, logits: torch.Tensor | None) -> None:
        # a fixed tile keeps every frame the same size even while a transform resizes the image
        tile = self.info.tile or max(images.shape[-2:])
        if self._size is None and self.info.tile is None:
            self.info.tile = tile
        picture = compose(images, logits if self.logits_panel else None, self.info.targets, tile, self.info.columns,
                          panels=self.logits_panel)
        if self._encoder is None:
            self._open(picture)
        w, h = self._size  # type: ignore[misc]
        if picture.shape[:2] != (h, w):
            fixed = np.full((h, w, 3), 255, dtype=np.uint8)
            ph, pw = min(h, picture.shape[0]), min(w, picture.shape[1])
            fixed[:ph, :pw] = picture[:ph, :pw]
            picture = fixed
        self._encoder.send(np.ascontiguousarray(picture))
        self.frames += 1

    def close(self, status: str) -> list[str]:
        if self._encoder is None:
            return []
        self._encoder.close()
        self._encoder = None
        return [self.path.name]
