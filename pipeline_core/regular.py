"""Files the tool reads are regular files: a FIFO, a device or a socket is refused, never waited on.

Opening a FIFO for reading waits until something writes to it, and reading ``/dev/zero`` or
``/dev/urandom`` never ends, so a ``metrics.jsonl``, ``run.json``, weights file or photo that is
one of those would hang the command with nothing on the screen. Every such read goes through
here: the file is opened without waiting (``O_NONBLOCK``), checked to be a regular file on the
open descriptor (no window for a swap in between), and only then read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["NotRegularFile", "problem", "open_regular", "read_text", "read_bytes", "check"]
from typing import IO

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class NotRegularFile(OSError):
    """The path is there but is not a regular file; ``str()`` is the one line to show."""

    def __init__(self, path: str | os.PathLike[str], kind: str):
        self.kind = kind
        super().__init__(errno.EINVAL, f"{path} is {kind}, not a regular file; replace it with the file itself",
                         str(path))

    def __str__(self) -> str:
        return str(self.strerror)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def problem(path: str | os.PathLike[str]) -> str | None:
    """``"a FIFO (named pipe)"`` and the like when ``path`` exists and is not a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else _kind(mode)


def open_regular(path: str | os.PathLike[str], mode: str = "rb", encoding: str | None = None,
                 errors: str | None = None) -> IO:
    """``open(path, mode)`` for reading, refusing (NotRegularFile) anything but a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, _kind(st.st_mode))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, mode, encoding=encoding, errors=errors)
    except BaseException:
        os.close(fd)
        raise


def read_text(path: str | os.PathLike[str], encoding: str = "utf-8", errors: str = "strict") -> str:
    with open_regular(path, "r", encoding=encoding, errors=errors) as fh:
        return fh.read()


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    with open_regular(path, "rb") as fh:
        return fh.read()


def check(path: Path, what: str) -> None:
    """NotRegularFile naming ``what`` when ``path`` exists but is not a regular file."""
    kind = problem(path)
    if kind:
        raise NotRegularFile(f"{what} {path}", kind)
