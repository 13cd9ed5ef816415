"""The run folder: run.json and the final images, always written atomically.

run.json is rewritten at the start, at every checkpoint and at the end, each time through a
temporary file and a rename, so whatever moment a run is killed at, run.json is whole and says
what happened.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import RecipeError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))


def save_png(path: Path, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    # no timestamps or other varying chunks: the same pixels give the same bytes
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    atomic_write_bytes(path, buf.getvalue())


def versions() -> dict[str, str]:
    import torchvision

    from . import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pipeline": __version__,
    }


def prepare_run_dir(path: Path, force: bool) -> Path:
    """Make the run folder, refusing to overwrite a non-empty one unless ``force``."""
    if path.exists() and not path.is_dir():
        raise RecipeError(f"--out {path} is a file, not a folder")
    if path.exists() and any(path.iterdir()) and not force:
        raise RecipeError(f"the run folder {path} is not empty; pass --force to overwrite it or --out another folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise RecipeError(f"cannot write to the run folder {path}: {exc.strerror or exc}") from None
    return path


def default_run_dir(name: str, root: Path = Path("runs")) -> Path:
    """runs/NAME, or runs/NAME-2, -3... : a new folder that is not there yet or is empty."""
    candidate = root / name
    n = 2
    while candidate.exists() and any(candidate.iterdir()):
        candidate = root / f"{name}-{n}"
        n += 1
    return candidate


class RunRecord:
    """run.json, kept up to date."""

    def __init__(self, run_dir: Path, data: dict[str, Any]):
        self.path = run_dir / "run.json"
        self.data = data
        self.started = time.time()

    def update(self, **changes: Any) -> None:
        self.data.update(changes)
        self.data["timings"] = {**self.data.get("timings", {}), "wall_seconds": round(time.time() - self.started, 3)}
        atomic_write_json(self.path, self.data)
