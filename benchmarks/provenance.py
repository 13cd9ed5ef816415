"""What every result file records about its origin: the commit and the torch version.

A figure can only be checked, or compared with a later one, when the code and the library that
made it are known; the results kept before this was recorded had to be traced through git
history (benchmarks/RESULTS.md). Reading the torch version from the installed package's
metadata keeps scripts that never import torch (panel.py) light.
"""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The checkout's ``HEAD`` commit, or ``"unknown"`` outside a git checkout (or without git)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def torch_version() -> str:
    """The installed torch's version, or ``"unknown"``."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "unknown"


def provenance() -> dict[str, str]:
    """``{"commit": ..., "torch": ...}``, to merge into every result a script writes."""
    return {"commit": commit(), "torch": torch_version()}
