"""The contents of the files a batch reads, as part of what the batch is.

A finished batch is skipped when a sweep starts again, so its identity must change whenever
what it was made from changes: a weights file overwritten in place (same path, other numbers)
or a photo replaced makes another batch, run again, not the old images reported as finished.
Every absolute path in the resolved recipe that names a regular file (the weights, photos and
their globs, a class list) is read once per process and hashed (SHA-256, streamed); the hash is
kept for as long as the file's size, modification time and inode stay the same, so a sweep of a
thousand batches over one weights file reads it once.
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
from pathlib import Path
from typing import Any, Iterator

_CHUNK = 1 << 20
#: (real path) -> ((device, inode, size, mtime_ns), sha256)
_cache: dict[str, tuple[tuple[int, int, int, int], str]] = {}


def file_digest(path: str | Path) -> str | None:
    """SHA-256 of a regular file's bytes (cached while it is unchanged); None if it is not one."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None  # a FIFO or a device is never read here (it could block or never end)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _cache.get(real)
    if hit is not None and hit[0] == key:
        return hit[1]
    digest = hashlib.sha256()
    try:
        with open(real, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    _cache[real] = (key, digest.hexdigest())
    return digest.hexdigest()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _files(text: str) -> list[str]:
    if not os.path.isabs(text) or "\x00" in text or len(text) > 4096:
        return []
    if any(ch in text for ch in "*?["):
        return sorted(glob.glob(text))
    return [text]


def read_files(resolved: dict[str, Any]) -> dict[str, str]:
    """{path: sha256} of every regular file the resolved recipe names by an absolute path."""
    out: dict[str, str] = {}
    for text in _strings(resolved):
        for path in _files(text):
            if path in out:
                continue
            digest = file_digest(path)
            if digest is not None:
                out[path] = digest
    return out
