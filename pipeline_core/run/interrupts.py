"""Ctrl-C, SIGTERM and SIGHUP (the terminal closed) stop a run at the next iteration boundary,
never in the middle of one.

The first signal sets a flag the loop reads between iterations, so the image, the optimiser
state and every generator are consistent when the run saves its checkpoint and finishes its
video. A second signal stops at once (``KeyboardInterrupt``) for a user who cannot wait for the
iteration to end; the run still closes its video and writes run.json. From then on, and while
the run writes its outputs, further signals are ignored: a third impatient Ctrl-C must not cut
run.json or the video in half.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

#: the signals that stop a run cleanly (SIGHUP: the terminal or the SSH session went away)
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopFlag:
    """What the signal handler tells the loop."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        #: set once the run writes its outputs (or was stopped at once): signals are ignored
        self.finishing = False

    @property
    def set(self) -> bool:
        return self.signal_name is not None


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Install the handlers for the block (main thread only; elsewhere the flag never sets)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    arrivals = itertools.count()

    def handler(signum: int, _frame: Any) -> None:
        # One call of next() cannot be split by a second signal's handler, which Python may run
        # in the middle of this one: whichever call numbers itself first is the first signal.
        first = next(arrivals) == 0
        if flag.finishing:
            return
        if not first:
            flag.finishing = True  # before raising: the handler of this interrupt may not be cut short
            raise KeyboardInterrupt
        flag.signal_name = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def shielded() -> Iterator[None]:
    """Ignore the stopping signals for the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class StartupFlag:
    """Which stopping signal arrived outside a run (None: none)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None


def _importing(frame: Any) -> bool:
    """Whether the interrupted code runs inside an import (importlib's frames below it)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@contextmanager
def startup_signals(exit_inside_imports: bool = False) -> Iterator[StartupFlag]:
    """Until a run installs :func:`graceful_stop`: SIGINT, SIGTERM and SIGHUP stop the command as a
    Ctrl-C does (``KeyboardInterrupt``), so that a stop while it imports, validates or loads is
    the same one line and exit code 130 whichever signal it was; the flag remembers it, for a
    library that swallowed the interrupt and failed on in its own way (main thread only).

    With ``exit_inside_imports`` (the command, not a caller's process), a stop that lands while a
    module is being imported prints the line and leaves at once: an exception raised there can
    unwind through an extension's C++ start-up code (torch's), which aborts the process instead
    of exiting 130, and an import has nothing of the user's to close."""
    flag = StartupFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        flag.signal_name = flag.signal_name or name
        if exit_inside_imports and _importing(frame):
            os.write(2, f"interrupted ({name})\n".encode())
            os._exit(130)
        raise KeyboardInterrupt(name)

    old = {}
    for s in SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:  # nohup's SIGHUP, a background job's SIGINT stay ignored
            old[s] = signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
