"""The run folder: run.json and the final images, always written atomically.

run.json is rewritten at the start, at every checkpoint and at the end, each time through a
temporary file and a rename, so whatever moment a run is killed at, run.json is whole and says
what happened.

While a run owns its folder, the folder is locked (:class:`RunLock`, on the ``filelock``
library): a second process that would write into it (a ``--resume`` of a run still going, a
``--force`` over it) is refused, naming the process that holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import re
import shutil
import platform
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from PIL import Image

from pipeline_core.errors import OutputError
from pipeline_core.writers import write_atomically

if TYPE_CHECKING:
    import filelock


#: the run folder's files are written through the public helper writer plugins use (a temporary
#: file, fsync, rename: whole or absent), under the name the host's modules know it by
atomic_write_bytes = write_atomically


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
    errno.ENAMETOOLONG: "the name is too long for the file system",
    errno.ELOOP: "the path has a loop of symbolic links",
}


def _why(exc: OSError) -> str:
    return _WHY.get(exc.errno or 0, exc.strerror or str(exc))


def new_run_id() -> str:
    """The id a run's record and its checkpoints share, so a checkpoint proves whose it is."""
    return uuid.uuid4().hex


# -- the lock --------------------------------------------------------------------------------

LOCK = ".lock"

#: run folders this process holds, with how many holders (the lock is re-entrant in a process)
_held: dict[Path, "RunLock"] = {}

#: how long a second writer waits before it is refused: long enough to ride out the moment a
#: holder that is ending removes the file, short enough to read as an immediate refusal
_WAIT_SECONDS = 0.5


def _lock_owner(path: Path) -> tuple[int, str] | None:
    """(pid, host) written in a lock file; None if it holds anything else."""
    try:
        from pipeline_core import regular

        text = regular.read_text(path, errors="replace")[:200]  # never waits on a FIFO
    except OSError:
        return None
    found = re.fullmatch(r"\s*(\d{1,10})(?:\s+(\S+))?\s*", text)
    if not found:
        return None
    return int(found.group(1)), found.group(2) or ""


def _write_owner(fd: int) -> None:
    """Called by filelock with the locked file's descriptor: the owner, for a refusal to name."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)  # no pwrite on Windows
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())


class RunLock:
    """The lock of one run folder: the file ``.lock``, locked by the operating system (through
    :mod:`filelock`: ``flock`` on POSIX, ``msvcrt.locking`` on Windows) and holding the owner's
    pid and host, which is what a refusal names.

    The operating system lets go of the lock when its process ends however it ends (a kill, a
    power cut), so a stale ``.lock`` is simply taken over. Re-entrant within a process: the CLI
    holds the lock from before ``--force`` clears the folder, and the run holds it again. The
    file is removed when the last holder releases it (while still locked, so a process waiting
    on the old file finds it gone and starts again on a new one).
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.held: filelock.FileLock | None = None  #: while this process holds the folder
        self.count = 0

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunLock":
        key = Path(os.path.abspath(run_dir))
        held = _held.get(key)
        if held is not None:
            held.count += 1
            return held
        lock = cls(run_dir)
        lock._take()
        lock.count = 1
        _held[key] = lock
        return lock

    def _refuse(self, pid: int | None, host: str = "") -> OutputError:
        who = f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "") if pid else "another process"
        return OutputError(f"the run folder {self.run_dir} is in use by {who} (a run still going); wait for it to "
                           f"end or stop it, or --out another folder (a stale {self.path} of a dead process is "
                           "taken over by itself)")

    def _take(self) -> None:
        # imported here: a run needs it, ``pipeline --version`` and the listings do not
        import filelock

        lock = filelock.FileLock(self.path, timeout=_WAIT_SECONDS, thread_local=False, on_acquired=_write_owner)
        try:  # filelock opens with O_NOFOLLOW: a link is never followed, its target never written
            lock.acquire()
        except filelock.Timeout:
            raise self._refuse(*(_lock_owner(self.path) or (None,))) from None
        except OSError as exc:
            if exc.errno != errno.ELOOP and not self.path.is_symlink():
                raise
            raise OutputError(f"{self.path} is a symbolic link, not a run's lock; remove it (the file it "
                              "points at is left alone)") from None
        self.held = lock

    def release(self) -> None:
        self.count -= 1
        if self.count > 0:
            return
        _held.pop(Path(os.path.abspath(self.run_dir)), None)
        lock, self.held = self.held, None
        if lock is None:
            return
        try:
            owner = _lock_owner(self.path)
            if owner is not None and owner[0] == os.getpid():
                self.path.unlink(missing_ok=True)  # still locked: see the class
        except OSError:
            pass  # Windows cannot remove an open file; filelock removes it there on release
        finally:
            with contextlib.suppress(OSError):
                lock.release(force=True)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.release()


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[RunLock]:
    """Hold the lock of ``run_dir`` (made if missing) for the block."""
    make_folder(run_dir)
    lock = RunLock.acquire(run_dir)
    try:
        yield lock
    finally:
        lock.release()


# -- the folder ------------------------------------------------------------------------------


def make_folder(path: Path) -> None:
    """The run folder, made if missing; OutputError if it cannot be."""
    try:
        if path.exists() and not path.is_dir():
            raise OutputError(f"--out {path} is a file, not a folder")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write to the run folder {path}: {_why(exc)}") from None


def _contents(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.name != LOCK]


#: what a run writes into its folder, besides the files its record lists
_RUN_FILES = ("run.json", "checkpoint.pt", "video.mp4", "evaluation.json", "metrics.jsonl", "report.html")
_RUN_PATTERNS = (".video*", ".run.json.*.tmp", ".checkpoint.pt.*.tmp", ".evaluation.json.*.tmp", ".video.mp4.*",
                 ".report.html.*.tmp", ".metrics.jsonl.*.tmp")
_IMAGE_NAME = re.compile(r"(\d{3}_[a-z0-9-]+|grid)\.png")


def clear_old_run(path: Path) -> None:
    """Remove every file an earlier run left in ``path`` (for ``--force``): its record, checkpoint,
    video and its segments, images and what its writers listed. Files that are not a run's stay.

    Every removal goes through :mod:`pipeline_core.run.confine`: a symbolic link among them (an
    ``images`` that points at a folder of the user's pictures) is removed as a link, and nothing
    outside ``path`` is ever removed, whatever run.json lists."""
    from pipeline_core import regular
    from pipeline_core.run import confine

    doomed: set[str] = set()
    try:
        record = json.loads(regular.read_text(path / "run.json"))  # a FIFO is not waited on
    except (OSError, ValueError):
        record = None
    listed = record.get("files") if isinstance(record, dict) else None
    for name in listed if isinstance(listed, list) else []:
        if isinstance(name, str) and name and Path(name).name != LOCK:
            doomed.add(name)  # confine.remove refuses a name that leads out of the folder
    doomed.update(_RUN_FILES)
    top = confine.list_dir(path, ".")
    for pattern in _RUN_PATTERNS:
        doomed.update(n for n in top if fnmatch.fnmatchcase(n, pattern))
    for name in confine.list_dir(path, "images"):  # none when images is a link: the link goes, not its files
        if _IMAGE_NAME.fullmatch(name) or name.endswith(".png.tmp") or (name.startswith(".") and name.endswith(".tmp")):
            doomed.add(f"images/{name}")
    try:
        for name in sorted(doomed):
            confine.remove(path, name)
        if not confine.list_dir(path, "images"):
            confine.remove_empty_dir(path, "images")
    except OSError as exc:
        raise OutputError(f"--force cannot remove the old run's files in {path}: {_why(exc)}") from None


def prepare_run_dir(path: Path, force: bool) -> Path:
    """Make the run folder, refusing to overwrite a non-empty one unless ``force``; with it, the
    old run's files are removed first, so nothing of it (a checkpoint, video segments, images)
    mixes with the new run.

    A folder the run cannot write to is found here, by writing a probe file, before any model
    is loaded, rather than at the first checkpoint or at the end. The folder's lock is held
    meanwhile (a run still going in it is refused, not cleared).
    """
    try:
        if path.exists() and not path.is_dir():
            raise OutputError(f"--out {path} is a file, not a folder")
        taken = path.exists() and bool(_contents(path))
    except OSError as exc:
        raise OutputError(f"cannot read the run folder {path}: {_why(exc)}") from None
    if taken and not force:
        raise OutputError(f"the run folder {path} is not empty; pass --force to overwrite it or --out another folder")
    with run_lock(path):
        if taken:
            clear_old_run(path)
        try:
            from pipeline_core.run import confine

            probe = path / ".write-test"
            confine.remove(path, probe.name)  # a link left there is removed, never written through
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(b"0" * 65536)
                    fh.flush()
                    os.fsync(fh.fileno())
            finally:
                confine.remove(path, probe.name)
        except OSError as exc:
            raise OutputError(f"cannot write to the run folder {path}: {_why(exc)}") from None
    return path


def check_output_file(path: Path, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written: its folder is missing or
    read-only, or the path is a folder."""
    shown = f"{option} {path}"
    if not str(path).strip():
        raise OutputError(f"{option} is empty: give a file name")
    if path.is_dir():
        raise OutputError(f"{shown} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"{shown}: the folder {parent} does not exist; make it first or write somewhere else")
    if not parent.is_dir():
        raise OutputError(f"{shown}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{shown}: permission denied; write somewhere else")


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


def default_run_dir(name: str, root: Path | None = None) -> Path:
    """runs/NAME, or runs/NAME-2, -3... : a new folder that is not there yet or is empty. ``runs`` is
    in the current folder, or beside the run folder the current folder is in (never inside a run)."""
    from pipeline_core.run.confine import name_problem, outputs_root

    if root is None:
        root = outputs_root()
    if name_problem(name):
        name = "run"
    candidate = root / name
    n = 2
    while candidate.exists() and (not candidate.is_dir() or _contents(candidate)):
        candidate = root / f"{name}-{n}"
        n += 1
    return candidate


def read_record(run_dir: Path) -> dict[str, Any]:
    """A run folder's run.json as a mapping; RecipeError (one line) if it is not a run record."""
    from pipeline_core import regular
    from pipeline_core.errors import RecipeError

    path = run_dir / "run.json"
    kind = regular.problem(path)
    if kind:
        raise RecipeError(f"{path} is {kind}, not a run record; remove it (a run writes a regular file)")
    if not path.is_file():
        raise RecipeError(f"{run_dir} holds no run: it has no run.json")
    try:
        if path.stat().st_size > 64 * 2**20:
            raise RecipeError(f"{path} is {path.stat().st_size / 2**20:.0f} MiB: not a run record")
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RecipeError(f"{path} is not a run record (not UTF-8 text)") from None
    except (ValueError, RecursionError) as exc:
        raise RecipeError(f"{path} is not a run record (not JSON: {str(exc)[:120]})") from None
    except OSError as exc:
        raise RecipeError(f"cannot read {path}: {_why(exc)}") from None
    if not isinstance(record, dict):
        raise RecipeError(f"{path} is not a run record (it holds a {type(record).__name__}, not a mapping)")
    return record


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
