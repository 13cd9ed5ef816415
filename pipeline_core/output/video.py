"""video.mp4: the evolving batch as an H.264 grid, streamed to ffmpeg as frames arrive.

The MP4 is *fragmented* (its index is written with every fragment, not only at the end), so a
run killed at any moment, even without a chance to close ffmpeg, leaves a playable video of
every frame encoded so far.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

from pipeline_core.output.frames import compose, scaled_size
from pipeline_core.output.panels import Sparklines, class_panel
from pipeline_core.writers import FrameInfo, Writer

FRAGMENTED = ["-movflags", "+frag_keyframe+empty_moov+default_base_moof", "-g", "25"]
#: x264's constant rate factor: 10 keeps the fine, noisy detail these images are made of
CRF = 10
#: the pipe to ffmpeg is widened to this (Linux's default limit for a user): a frame then goes
#: across in one or two writes instead of sixteen 64 KiB ones, each of which woke ffmpeg's
#: reader and the writer thread again; on a CPU every such wake-up takes a core from the model
PIPE_BYTES = 1 << 20


class H264Pipe:
    """ffmpeg encoding RGB frames from a pipe into a fragmented MP4 (H.264, yuv420p).

    imageio-ffmpeg provides the binary; the process is started here rather than through its
    ``write_frames`` so the pipe can be widened, ffmpeg's messages go to a file (not over the
    progress bar) and come back in the error, and no ``fork`` of a large process is needed
    (its own session or process group keeps the terminal's Ctrl-C away from ffmpeg, so an
    interrupted run can still finish its video).
    """

    def __init__(self, path: Path, size: tuple[int, int], fps: int, preset: str = "ultrafast",
                 threads: int | None = None):
        w, h = size
        self.size = size
        self.path = Path(path)
        self.command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
            "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(CRF), "-preset", preset,
            *(["-threads", str(threads)] if threads else []), *FRAGMENTED, str(path),
        ]
        self._log = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=self._log, **_own_process_group())
        except BaseException:
            self._log.close()
            raise
        _widen(self._proc.stdin, min(PIPE_BYTES, max(w * h * 3, 1 << 16)))  # never below the default

    def write(self, frame: np.ndarray) -> None:
        """One (H, W, 3) uint8 frame of the size given at the start."""
        try:
            self._proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except (BrokenPipeError, OSError) as exc:
            self._proc.wait()
            raise RuntimeError(f"the video encoder stopped writing {self.path}: {self._message() or exc}") from None

    def close(self) -> None:
        """Finish the file: ffmpeg writes what it holds and exits. A second call does nothing."""
        if self._log.closed:
            return
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        code = self._proc.wait()
        message = self._message()
        self._log.close()
        if code != 0:
            raise RuntimeError(f"the video encoder failed writing {self.path} (ffmpeg exit code {code}): "
                               f"{message or 'no message'}")

    def _message(self) -> str:
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""


def _own_process_group() -> dict:
    """Popen arguments that keep the terminal's Ctrl-C away from ffmpeg, so that after an
    interrupt the run can still hand it the last frames and let it finish the file."""
    if sys.platform.startswith("win"):
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}  # unlike preexec_fn, no fork of this (large) process


def _widen(pipe, size: int) -> None:
    """Ask Linux for a pipe buffer of ``size`` bytes; elsewhere, or when refused, keep the default."""
    if not sys.platform.startswith("linux"):
        return
    import fcntl

    setsize = getattr(fcntl, "F_SETPIPE_SZ", 1031)
    try:
        fcntl.fcntl(pipe.fileno(), setsize, size)
    except OSError:
        pass


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
                 encoder_threads: int | None = None, primary: list[int | None] | None = None,
                 history: list[dict] | None = None, objectives: list[str] | None = None):
        super().__init__(params, info)
        #: x264's threads; None lets it choose (about 1.5 per core). A run on the CPU passes 1:
        #: the cores belong to PyTorch's threads, and a single encoder thread preempts them less
        #: often (docs/performance.md: 0.86 -> 0.90 of the bare loop with a frame every iteration)
        self.encoder_threads = encoder_threads
        self.frame_side = info.tile  # a fixed tile: frames larger than it may be shrunk before they get here
        self.path = path or info.run_dir / "video.mp4"
        self.logits_panel = logits_panel
        #: per image, the class whose name and probability the panel shows
        self.primary = primary if primary is not None else [ts[-1] if ts else None for ts in info.targets]
        #: no objective aims at a class: the panels show each objective's course instead of logits
        self.sparklines = None if any(info.targets) else Sparklines(history, objectives or [])
        self._encoder: H264Pipe | None = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def _open(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        self._size = (w, h)
        self._encoder = H264Pipe(self.path, (w, h), self.info.fps, self.preset, self.encoder_threads)

    def frame(self, iteration: int, images: torch.Tensor, logits: torch.Tensor | None) -> None:
        # a fixed tile keeps every frame the same size even while a transform resizes the image
        tile = self.info.tile or max(images.shape[-2:])
        if self._size is None and self.info.tile is None:
            self.info.tile = tile
        picture = compose(images, None, self.info.targets, tile, self.info.columns, panels=self.logits_panel,
                          side_panels=self._panels(iteration, images, logits, tile) if self.logits_panel else None,
                          frames=self.info.frames)
        if self._encoder is None:
            self._open(picture)
        w, h = self._size  # type: ignore[misc]
        if picture.shape[:2] != (h, w):
            fixed = np.full((h, w, 3), 255, dtype=np.uint8)
            ph, pw = min(h, picture.shape[0]), min(w, picture.shape[1])
            fixed[:ph, :pw] = picture[:ph, :pw]
            picture = fixed
        self._encoder.write(picture)
        self.frames += 1

    def _panels(self, iteration: int, images: torch.Tensor, logits: torch.Tensor | None, tile: int) -> list[np.ndarray]:
        h, w = scaled_size(images.shape[-2], images.shape[-1], tile)
        if self.sparklines is not None:
            return [self.sparklines.panel(i, iteration, h, w, self.info.iterations) for i in range(images.shape[0])]
        lg = logits.numpy() if logits is not None else None
        return [class_panel(lg[i] if lg is not None else None, self.info.targets[i], self.primary[i], iteration,
                            self.info.categories, h, w, self.info.iterations) for i in range(images.shape[0])]

    def close(self, status: str) -> list[str]:
        if self._encoder is None:
            return []
        self._encoder.close()
        self._encoder = None
        return [self.path.name]
