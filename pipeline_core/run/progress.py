"""Progress on the terminal, at a fixed rate, never per iteration.

Reading the loss costs a device synchronisation, so the loop asks :meth:`Progress.due` (a
clock check, free) and only then reads numbers. On a terminal a rich progress bar shows
iteration, rate, ETA, loss and the target's probability; when the output is a file or a pipe,
a plain line is printed every few seconds instead, so logs stay readable; in a Jupyter cell
(the Python API) the bar is drawn into the cell's output.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Progress:
    """Base reporter: also the ``--quiet`` one (shows nothing)."""

    interval = 0.5

    def __init__(self) -> None:
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            return True
        return False

    def start(self, total: int, description: str, done: int = 0) -> None: ...

    def update(self, done: int, loss: float, prob: float | None) -> None: ...

    def stop(self) -> None: ...

    def message(self, text: str) -> None: ...


class BarProgress(Progress):
    """A rich bar on a terminal: numbers read 4 times a second, and the bar redrawn with them.

    Each read of the numbers synchronises a GPU once, so the rate is a fixed, small one
    whatever the speed of the loop; faster than 4 Hz is not readable anyway.

    The loop redraws the bar itself when the numbers are due, rather than rich's refresh
    thread on its own clock. A redraw is about 1.5 ms of Python; from a second thread it took
    the interpreter lock from the loop between PyTorch calls and a core from PyTorch's
    threads, four times a second, which cost a CPU run about 4% (docs/performance.md). From
    the loop it costs its 1.5 ms and nothing else. So that the clocks still move through slow
    iterations (a big batch on a CPU, a first iteration that compiles), a watchdog thread
    redraws the bar when the loop has not for ``stale_after`` seconds; while the loop draws,
    the watchdog only looks at the clock once a second.
    """

    #: seconds without a redraw after which the watchdog redraws the bar itself
    stale_after = 1.0

    interval = 0.25

    def __init__(self, console: Console):
        super().__init__()
        self.console = console
        self.bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("loss {task.fields[loss]}  p(target) {task.fields[prob]}"),
            console=console,
            auto_refresh=False,
        )
        self.task = None
        self._t0 = time.monotonic()
        self._done0 = 0
        self._drawn = time.monotonic()
        self._quit = threading.Event()
        self._watchdog: threading.Thread | None = None

    def start(self, total: int, description: str, done: int = 0) -> None:
        self.bar.start()
        self._t0, self._done0 = time.monotonic(), done
        self.task = self.bar.add_task(description, total=total, completed=done, loss="-", prob="-", rate="")
        self._redraw()
        self._quit.clear()
        self._watchdog = threading.Thread(target=self._watch, name="progress-watchdog", daemon=True)
        self._watchdog.start()

    def _redraw(self) -> None:
        self.bar.refresh()
        self._drawn = time.monotonic()

    def _watch(self) -> None:
        while not self._quit.wait(min(self.stale_after, 1.0)):
            if time.monotonic() - self._drawn >= self.stale_after:
                self._redraw()

    def update(self, done: int, loss: float, prob: float | None) -> None:
        rate = (done - self._done0) / max(time.monotonic() - self._t0, 1e-9)
        self._first = loss if getattr(self, "_first", None) is None else self._first
        self.bar.update(self.task, completed=done, loss=loss_text(loss, self._first),
                        prob="-" if prob is None else f"{prob:.3f}", rate=f"{rate:.2f} it/s")
        self._redraw()

    def stop(self) -> None:
        self._quit.set()
        if self._watchdog is not None:
            self._watchdog.join()
            self._watchdog = None
        self.bar.stop()

    def message(self, text: str) -> None:
        self.console.print(text)


def loss_text(loss: float, first: float | None) -> str:
    """The loss and how far it moved since the first reading. An objective with a far target
    (L1-loss with C: 10000) sits near its constant the whole run ("9985" for hundreds of
    iterations); the change since the start ("-14.7") is what moves."""
    text = f"{loss:.4g}"
    if first is None or not (math.isfinite(loss) and math.isfinite(first)):
        return text
    return f"{text} ({loss - first:+.3g})"


class LineProgress(Progress):
    """For logs: one line every few seconds, and one at the end."""

    interval = 5.0

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream or sys.stderr
        self.total = 0
        self._t0 = time.monotonic()
        self._done0 = 0

    def start(self, total: int, description: str, done: int = 0) -> None:
        self.total, self._t0, self._done0 = total, time.monotonic(), done
        self._next = time.monotonic() + self.interval
        print(f"{description}: {total} iterations", file=self.stream, flush=True)

    def update(self, done: int, loss: float, prob: float | None) -> None:
        rate = (done - self._done0) / max(time.monotonic() - self._t0, 1e-9)
        p = "" if prob is None else f"  p(target) {prob:.3f}"
        self._first = loss if getattr(self, "_first", None) is None else self._first
        print(f"  iteration {done}/{self.total}  {rate:.2f} it/s  loss {loss_text(loss, self._first)}{p}",
              file=self.stream, flush=True)

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class NotebookProgress(Progress):
    """rich's progress bar, drawn into the cell's output through one display handle."""

    interval = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                TextColumn("loss {task.fields[loss]}  p(target) {task.fields[prob]}"),
                                auto_refresh=False)
        self.task: Any = None
        self.handle: Any = None
        self.lines: list[str] = []

    def _html(self) -> dict[str, str]:
        from rich.console import Console

        console = Console(record=True, width=110, file=open(os.devnull, "w"), force_jupyter=False,
                          force_terminal=True, color_system="truecolor")
        console.print(self.bar.get_renderable())
        for line in self.lines:
            console.print(line, markup=False, highlight=False)
        text = console.export_text(clear=False)
        body = console.export_html(inline_styles=True, code_format="<pre style='margin:0'>{code}</pre>")
        console.file.close()
        return {"text/plain": text, "text/html": body}

    def _show(self) -> None:
        from IPython.display import display

        data = self._html()
        if self.handle is None:
            self.handle = display(data, raw=True, display_id=True)
        else:
            self.handle.update(data, raw=True)

    def start(self, total: int, description: str, done: int = 0) -> None:
        self.task = self.bar.add_task(description, total=total, completed=done, loss="-", prob="-")
        self._show()

    def update(self, done: int, loss: float, prob: float | None) -> None:
        if self.task is None:
            return
        self.bar.update(self.task, completed=done, loss=f"{loss:.4g}", prob="-" if prob is None else f"{prob:.3f}")
        self._show()

    def stop(self) -> None:
        if self.task is not None:
            self._show()

    def message(self, text: str) -> None:
        self.lines.append(text)
        if self.handle is not None:
            self._show()
        else:
            print(text, file=sys.stderr)


def notebook_progress() -> Progress:
    return NotebookProgress()


def make_progress(quiet: bool, console: Console | None = None) -> Progress:
    if quiet:
        return Progress()
    console = console or Console(stderr=True)
    return BarProgress(console) if console.is_terminal else LineProgress()
