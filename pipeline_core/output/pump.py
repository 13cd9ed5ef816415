"""The thread between the loop and the writers.

The loop only *snapshots* the image on its device (an asynchronous copy) and puts it on a
bounded queue. A background thread moves it to the CPU and hands it to every writer, so the
loop never waits for ffmpeg and never synchronises the GPU for a frame. The queue is bounded,
so a slow encoder slows the run down rather than filling memory; no frame is ever dropped.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from typing import Any


import torch

from pipeline_core.writers import Writer

_STOP = object()


def shrink(images: torch.Tensor, side: int) -> torch.Tensor:
    """``images`` scaled (antialiased bilinear) so the longer side is at most ``side``; no autograd."""
    h, w = images.shape[-2:]
    if max(h, w) <= side:
        return images
    scale = side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    with torch.no_grad():
        return torch.nn.functional.interpolate(images.detach().float(), size=size, mode="bilinear",
                                               align_corners=False, antialias=True)


def _lower_priority(niceness: int) -> None:
    """Make the calling thread, and the processes it starts later (ffmpeg), yield to the loop.

    On Linux a thread has its own nice value and a child process inherits its parent
    thread's, so on a CPU with few cores the encoder uses the cycles the model leaves idle
    instead of taking them from it. Elsewhere (or when not allowed) nothing changes.
    """
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + niceness, 19))
    except (OSError, AttributeError):
        pass


class FramePump:
    """A bounded queue and one thread that feeds every writer."""

    def __init__(self, writers: list[Writer], depth: int = 4):
        self.writers = writers
        sides = [w.frame_side for w in writers]
        #: frames from a GPU are shrunk on the device to this side first (None: never)
        self.max_side = max(sides) if sides and None not in sides else None  # type: ignore[type-var]
        self.frames = 0
        self.encode_seconds = 0.0
        self.encode_cpu_seconds = 0.0  #: CPU time of this thread on frames (it competes with the model on a CPU)
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._work, name="frame-writer", daemon=True)
        self._thread.start()

    def put(self, iteration: int, images: torch.Tensor, logits: torch.Tensor | None) -> None:
        """Queue a frame. ``images`` must be a snapshot nobody modifies afterwards."""
        if self.error is not None:
            return
        self._queue.put((iteration, images, logits, None))

    def wait(self) -> None:
        """Block until every queued frame has been handed to the writers.

        The engine calls this once, after the first frame and before the loop's clock starts:
        that frame opens the encoders (ffmpeg's start costs about 0.1 s of CPU), which then
        happens while the model is idle rather than on cores the first iterations need.
        Returns at once if the writer thread is gone.
        """
        done = threading.Event()
        self._queue.put(done)
        while not done.wait(0.1):
            if not self._thread.is_alive():
                return

    def snapshot(self, iteration: int, images: torch.Tensor, logits: torch.Tensor | None) -> None:
        """Queue a copy of tensors the loop goes on changing, without waiting for the device.

        On a CUDA device the copy goes straight into pinned host memory, asynchronously, in
        stream order: after the work that produced ``images`` and before any later update
        of them, so the frame is exact and the loop never synchronises; the writer thread
        waits for the copy's event instead. Elsewhere the tensors are cloned. With no
        writer (video off, no writer plugins) nothing is copied at all.
        """
        if self.error is not None or not self.writers:
            return
        if not images.is_cuda:
            self._queue.put((iteration, images.detach().clone(),
                             logits.detach().clone() if logits is not None else None, None))
            return
        if self.max_side is not None:
            images = shrink(images, self.max_side)  # less to copy and to convert on the CPU
        copies = []
        for t in (images, logits):
            if t is None:
                copies.append(None)
                continue
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t.detach(), non_blocking=True)
            copies.append(host)
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(images.device))
        self._queue.put((iteration, copies[0], copies[1], ready))

    #: how much nicer than the loop the writer thread (and the encoder processes it starts) runs
    niceness = 10

    def _work(self) -> None:
        _lower_priority(self.niceness)
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, threading.Event):  # wait(): everything queued before it is written
                item.set()
            elif self.error is None:
                self._write(*item)

    def _write(self, iteration: int, images: torch.Tensor, logits: torch.Tensor | None, ready: Any) -> None:
        start, cpu_start = time.perf_counter(), time.thread_time()
        try:
            if ready is not None:
                ready.synchronize()  # the asynchronous device-to-host copy has landed
            images = images.to("cpu", torch.float32)
            logits = logits.to("cpu", torch.float32) if logits is not None else None
            for writer in self.writers:
                writer.frame(iteration, images, logits)
            self.frames += 1
        except BaseException as exc:  # noqa: BLE001 - reported by close()
            self.error = exc
        self.encode_seconds += time.perf_counter() - start
        self.encode_cpu_seconds += time.thread_time() - cpu_start

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
