"""The sweep's one progress bar, drawn by rank 0: jobs done of all, rate and ETA of this start.

On a terminal a rich bar; in a log (a file, a pipe) a plain line every ten seconds and when
the count changes by a batch; nothing with ``--quiet``. The rate counts only jobs run in this
start (a restarted sweep's skipped batches are not speed), and the batches in progress count
by their share of iterations done, so the bar moves during long batches too.
"""

from __future__ import annotations

import time

from rich.console import Console


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe(done: float, total: int, run: float, skipped: int, failed: int, elapsed: float) -> str:
    rate = run / elapsed if elapsed > 0 and run > 0 else 0.0
    eta = f"ETA {_clock((total - done) / rate)}" if rate > 0 and done < total else ("" if done >= total else "ETA -")
    extra = [f"{skipped} already done" if skipped else "", f"{failed} failed" if failed else ""]
    parts = [f"{int(done)}/{total} jobs", f"{rate * 60:.1f} jobs/min" if rate else "", eta, *extra]
    return " | ".join(p for p in parts if p)


class QuietBar:
    def show(self, done: float, total: int, run: float, skipped: int, failed: int, elapsed: float) -> None: ...

    def stop(self) -> None: ...


class LineBar(QuietBar):
    every = 10.0

    def __init__(self, console: Console, name: str):
        self.console, self.name = console, name
        self._next = 0.0
        self._last = -1

    def show(self, done: float, total: int, run: float, skipped: int, failed: int, elapsed: float) -> None:
        now = time.monotonic()
        if now < self._next and int(done) == self._last:
            return
        self._next, self._last = now + self.every, int(done)
        self.console.print(f"sweep {self.name}: {describe(done, total, run, skipped, failed, elapsed)}",
                           markup=False, highlight=False)


class RichBar(QuietBar):
    def __init__(self, console: Console, name: str):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), console=console, transient=False)
        self.task = self.progress.add_task(f"sweep {name}", total=1, info="")
        self.progress.start()

    def show(self, done: float, total: int, run: float, skipped: int, failed: int, elapsed: float) -> None:
        self.progress.update(self.task, completed=done, total=max(total, 1),
                             info=describe(done, total, run, skipped, failed, elapsed))

    def stop(self) -> None:
        self.progress.stop()


def make_bar(quiet: bool, console: Console, name: str) -> QuietBar:
    from pipeline_core.errors import _printable

    if quiet:
        return QuietBar()
    name = _printable(name)
    return RichBar(console, name) if console.is_terminal else LineBar(console, name)
