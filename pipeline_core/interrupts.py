"""Ctrl-C and SIGTERM stop a run at the next iteration boundary, never in the middle of one.

The first signal sets a flag the loop reads between iterations, so the image, the optimiser
state and every generator are consistent when the run saves its checkpoint and finishes its
video. A second signal stops at once (``KeyboardInterrupt``); the run still closes its video
and writes run.json.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class StopFlag:
    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def set(self) -> bool:
        return self.signal_name is not None


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, _frame):
        if flag.set:
            raise KeyboardInterrupt
        flag.signal_name = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def shielded() -> Iterator[None]:
    """While finishing (closing the video, writing run.json), further signals are ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
