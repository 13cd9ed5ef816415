"""The process's memory as the operating system counts it: now, free, and its peak over a block.

``pipeline bench`` (:mod:`pipeline_core.commands.measure`) reports how much memory a loop took
and ``batch: auto`` (:mod:`pipeline_core.sweep.probe`) sizes a batch from the peak of a trial
iteration and the memory free; both ask here.

The resident size now and the memory free on the machine come from ``psutil``, which reads
them the same way on Linux, macOS and Windows (on Linux it reads the same ``/proc`` files this
module once parsed by hand, and knows the kernels that lack ``MemAvailable``). The peak over a
block is not in psutil: it needs a peak mark the process can reset, which only Linux has
(``/proc/self/clear_refs`` and ``VmHWM``), so that part stays hand-written; elsewhere only the
process's lifetime peak is known (:func:`lifetime_peak`). psutil is imported when asked, never
by ``pipeline --version`` or a listing.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def current_rss() -> int | None:
    """The process's resident set size now, in bytes; None where it cannot be read."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil's errors (AccessDenied...) or none at all: unknown
        return None


def available_bytes() -> int | None:
    """Memory the machine can give a process now without swapping, in bytes; None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - as above
        return None


def peak_rss() -> int | None:
    """The resident peak since the last :func:`reset_peak` (Linux's ``VmHWM``), in bytes; None
    where there is no such mark."""
    try:
        text = Path("/proc/self/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+)\s+kB", text, re.M)
    return int(found.group(1)) * 1024 if found else None


def reset_peak() -> bool:
    """Reset the peak mark to the resident size now (Linux >= 4.0); False where impossible, and
    then :func:`peak_rss` means nothing for a block."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return peak_rss() is not None


def lifetime_peak() -> int | None:
    """The largest resident size the process has had since it started, in bytes (the fallback
    where the peak cannot be reset); None if unknown."""
    if sys.platform == "win32":
        try:
            import psutil

            return int(psutil.Process().memory_info().peak_wset)
        except Exception:  # noqa: BLE001 - as above
            return None
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux and the BSDs
