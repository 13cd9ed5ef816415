"""Output writers and the thread that feeds them, off the optimisation's hot path.

The loop only *snapshots* the image on its device (an asynchronous copy) and puts it on a
bounded queue. A background thread moves it to the CPU and hands it to every writer, so the
loop never waits for ffmpeg and never synchronises the GPU for a frame. The queue is bounded,
so a slow encoder slows the run down rather than filling memory; no frame is ever dropped.

A writer plugin subclasses :class:`Writer` and registers with ``registry.add_output``; a
recipe enables it with ``output.writers: [{writer: NAME, ...options}]``.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from .step import StepParams


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


class Writer:
    """Base class of output writers. Methods run on the writer thread, never in the loop."""

    name: ClassVar[str]
    Params: ClassVar[type[StepParams]] = StepParams

    def __init__(self, params: StepParams, info: FrameInfo):
        self.params = params
        self.info = info

    def frame(self, iteration: int, images: torch.Tensor, logits: torch.Tensor | None) -> None:
        """One frame: ``images`` (B, 3, H, W) float on the CPU, ``logits`` (B, C) or None."""

    def close(self, status: str) -> list[str]:
        """The run ended (completed, interrupted or failed); return the files written."""
        return []


_STOP = object()


class FramePump:
    """A bounded queue and one thread that feeds every writer."""

    def __init__(self, writers: list[Writer], depth: int = 4):
        self.writers = writers
        self.frames = 0
        self.encode_seconds = 0.0
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._work, name="frame-writer", daemon=True)
        self._thread.start()

    def put(self, iteration: int, images: torch.Tensor, logits: torch.Tensor | None) -> None:
        """Queue a frame. ``images`` must be a snapshot nobody modifies afterwards."""
        if self.error is not None:
            return
        self._queue.put((iteration, images, logits))

    def _work(self) -> None:
        import time

        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self.error is not None:
                continue
            iteration, images, logits = item
            start = time.perf_counter()
            try:
                images = images.to("cpu", torch.float32)
                logits = logits.to("cpu", torch.float32) if logits is not None else None
                for writer in self.writers:
                    writer.frame(iteration, images, logits)
                self.frames += 1
            except BaseException as exc:  # noqa: BLE001 - reported by close()
                self.error = exc
            self.encode_seconds += time.perf_counter() - start

    def close(self, status: str) -> list[str]:
        """Drain the queue, close every writer; returns the files they wrote."""
        self._queue.put(_STOP)
        self._thread.join()
        files: list[str] = []
        for writer in self.writers:
            try:
                files.extend(writer.close(status))
            except Exception as exc:  # noqa: BLE001
                self.error = self.error or exc
        return files
