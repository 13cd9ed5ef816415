"""The run folder: run.json and the final images, always written atomically.

run.json is rewritten at the start, at every checkpoint and at the end, each time through a
temporary file and a rename, so whatever moment a run is killed at, run.json is whole and says
what happened.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline_core.errors import OutputError


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

    from pipeline_core import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pipeline": __version__,
    }


_WHY = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def _why(exc: OSError) -> str:
    return _WHY.get(exc.errno or 0, exc.strerror or str(exc))


def prepare_run_dir(path: Path, force: bool) -> Path:
    """Make the run folder, refusing to overwrite a non-empty one unless ``force``.

    A folder the run cannot write to is found here, by writing a probe file, before any model
    is loaded, rather than at the first checkpoint or at the end.
    """
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {path} is a file, not a folder")
    try:
        taken = path.exists() and any(path.iterdir())
    except OSError as exc:
        raise OutputError(f"cannot read the run folder {path}: {_why(exc)}") from None
    if taken and not force:
        raise OutputError(f"the run folder {path} is not empty; pass --force to overwrite it or --out another folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"0" * 65536)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write to the run folder {path}: {_why(exc)}") from None
    return path


def check_free_space(path: Path, need: int) -> None:
    """OutputError when the disk of ``path`` has less than ``need`` bytes free."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return  # nothing to measure with; the writes themselves will say what is wrong
    if free < need:
        raise OutputError(
            f"the disk of the run folder {path} has {free / 2**20:.1f} MiB free but this run needs about "
            f"{need / 2**20:.1f} MiB (video, images, checkpoint); free some space or --out another disk"
        )


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
