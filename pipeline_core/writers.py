"""Output writers: what a plugin writes to put its own file (a GIF, a metrics file) in the run folder.

Writers run off the optimisation's hot path: the loop only snapshots the image and a thread
(:mod:`pipeline_core.output.pump`) hands each frame to every writer, so a writer may take its
time without slowing the run (a slow one slows it rather than filling memory; no frame is
ever dropped).

A writer plugin subclasses :class:`Writer` and registers with ``registry.add_output``; a
recipe enables it with ``output.writers: [{writer: NAME, ...options}]``. The options are the
writer's ``Params`` (a :class:`~pipeline_core.step.StepParams` model, so unknown keys are
refused); they are checked when the recipe is validated, before any model is loaded.

:func:`grid` (the batch as one picture, as the video draws it) and :func:`write_atomically`
(a file that is either whole or absent, even if the run is killed) are here so a writer
plugin does not have to reach into the host's internals.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pipeline_core.step import StepParams

if TYPE_CHECKING:
    import numpy as np
    import torch


__all__ = [
    "FrameInfo",
    "Writer",
    "grid",
    "write_atomically",
]

@dataclass
class FrameInfo:
    """What a writer knows about the run when it starts."""

    run_dir: Path
    batch: int
    iterations: int
    categories: list[str]
    targets: list[list[int]]  #: per image, the target class indices (for red dots)
    fps: int
    tile: int | None
    columns: int | None
    #: per image, where its photo lies on a canvas shared with photos of other shapes
    #: (init-image's ``fit: whole``): (top, left, height, width) as fractions of the image, or
    #: None; :func:`grid` draws only that part, as the final PNGs are cut (API 1.6)
    frames: list[tuple[float, float, float, float] | None] | None = None


class Writer:
    """Base class of output writers. Methods run on the writer thread, never in the loop.

    Set ``name`` (what ``output.writers`` entries name) and, for options, ``Params``.
    ``frame`` is called for every frame the run emits (iteration 0 first, the last iteration
    always), ``close`` once at the end whatever the status, so an interrupted run still gets
    its file. An exception in either fails the run with a clear message; it never blocks it.
    """

    name: ClassVar[str]
    Params: ClassVar[type[StepParams]] = StepParams
    #: the largest image side this writer uses; None: full resolution. When every writer
    #: gives one, a GPU run shrinks frames on the device before copying them to the host.
    frame_side: int | None = None

    def __init__(self, params: StepParams, info: FrameInfo):
        self.params = params
        self.info = info

    def frame(self, iteration: int, images: torch.Tensor, logits: torch.Tensor | None) -> None:
        """One frame: ``images`` (B, 3, H, W) float on the CPU, ``logits`` (B, C) or None."""

    def close(self, status: str) -> list[str]:
        """The run ended (completed, interrupted or failed); return the files written."""
        return []


def grid(images: torch.Tensor, logits: torch.Tensor | None = None, info: FrameInfo | None = None,
         tile: int | None = None, panels: bool = False) -> np.ndarray:
    """The batch as one (H, W, 3) uint8 picture, laid out as the video lays it out.

    ``tile`` is the side of each image in pixels (default: the images' own size); with
    ``panels`` each image gets its logits plot beside it, the ``info.targets`` in red. Photos
    that share a canvas (``info.frames``) are drawn without the canvas's filled margin.
    """
    # the video's own composer, imported when called: output (whose writers subclass Writer)
    # sits above this module, and frames imports nothing of the package, so no circle forms
    from pipeline_core.output.frames import compose

    targets = info.targets if info is not None else None
    columns = info.columns if info is not None else None
    frames = info.frames if info is not None else None
    return compose(images, logits if panels else None, targets, tile, columns, panels=panels, frames=frames)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: whole or absent.

    The host writes run.json, checkpoints and reports with this same function, so a writer's
    file is as safe as the run's own. Written here rather than taken from a library: the
    ``atomicwrites`` package is no longer maintained, and the job is these few lines of the
    standard library (``mkstemp``, ``fsync``, ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
