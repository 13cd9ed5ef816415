"""What the project may write or delete: files inside the folder the user named, and nothing else.

The user names a folder (``--out``, or ``runs/NAME`` by default; a sweep's folder, which holds
its batches' run folders). Inside it the project writes its own files and, with ``--force``,
removes the files of the run it replaces. Every write and delete of a run or sweep folder goes
through the rules kept here, so that no file anywhere else is ever touched:

* a path inside the folder never passes through a symbolic link: a link in the folder (an
  ``images`` that points at the user's own pictures) is removed as a link, never followed to
  what it points at, and a batch folder whose way passes through a link is refused;
* names that come from files (a sweep's ``name:``, the files a run.json lists) are names: one
  part, no ``..``, never absolute, so they cannot lead out of the folder;
* the default folder for outputs (``runs/``) is never made inside another run's folder: a
  replay started from inside a run folder goes beside that run folder, not into it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path, PurePath
from typing import Any

from pipeline_core.errors import Location, OutputError, RecipeError

#: the file every run folder holds; a folder with one is a run's, not a place for new folders
RUN_RECORD = "run.json"


def name_problem(text: Any) -> str | None:
    """Why ``text`` cannot name a folder of its own (None when it can): it must be one plain part."""
    if not isinstance(text, str) or not text.strip():
        return "it is empty"
    text = text.strip()
    if "\x00" in text:
        return "it holds a NUL character"
    if "/" in text or "\\" in text:
        return "it holds a '/' or '\\' (a path, not a name)"
    if text in (".", "..") or text.startswith("~"):
        return "it is '.', '..' or starts with '~' (a path, not a name)"
    if len(text.encode("utf-8", "surrogateescape")) > 200:
        return "it is longer than 200 bytes"
    return None


def check_name(value: Any, what: str, where: Location | None = None, fix: str = "") -> str:
    """``value`` as a plain name (one folder of its own); RecipeError naming ``where`` otherwise."""
    problem = name_problem(value)
    if problem:
        raise RecipeError(f"{what} {value!r} is not a plain name: {problem}; it names a folder of its own "
                          f"and never leads out of the one it is made in{fix}", where)
    return str(value).strip()


def _relative_parts(rel: str | PurePath) -> list[str] | None:
    """The parts of a relative path with no ``..`` and no absolute start; None otherwise."""
    text = str(rel)
    if not text or "\x00" in text or os.path.isabs(text) or text.startswith("~"):
        return None
    parts = [p for p in PurePath(text).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return parts  # empty for "." (the folder itself)


def within(root: Path, rel: str | PurePath, last_may_be_link: bool = False) -> Path | None:
    """``root / rel`` when it stays inside ``root`` without passing through a symbolic link; None if
    ``rel`` is not such a path (absolute, with ``..``) or one of its existing parts below ``root``
    is a link (the last part may be one when ``last_may_be_link``: removing it removes the link)."""
    parts = _relative_parts(rel)
    if parts is None:
        return None
    if not parts:
        return Path(root)
    path = Path(root)
    for i, part in enumerate(parts):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return Path(root).joinpath(*parts)  # nothing further exists: nothing further to follow
        except OSError:
            return None
        if stat.S_ISLNK(mode) and not (last_may_be_link and i == len(parts) - 1):
            return None
    return path


def inside(root: Path, rel: str | PurePath, what: str = "") -> Path:
    """``root / rel`` checked as :func:`within` does; OutputError saying why otherwise."""
    path = within(root, rel)
    if path is None:
        shown = Path(root) / str(rel)
        raise OutputError(f"{what or shown} would lead out of {root} (a symbolic link or '..' on the way); "
                          f"nothing is written through it: remove the link {shown} or use another folder")
    return path


def is_real_dir(path: Path) -> bool:
    """A folder that is not a symbolic link (to a folder or anywhere else)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def remove(root: Path, rel: str | PurePath) -> bool:
    """Remove the file (or the link itself) ``root / rel``; True if something was removed.

    Never follows a link: a link is unlinked, what it points at stays. A folder is left alone,
    and so is a path that would lead out of ``root``."""
    path = within(root, rel, last_may_be_link=True)
    if path is None or path == Path(root):
        return False
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(mode):
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def remove_empty_dir(root: Path, rel: str | PurePath) -> None:
    """Remove the folder ``root / rel`` if it is empty and a real folder (a link is removed as a link)."""
    path = within(root, rel, last_may_be_link=True)
    if path is None or path == Path(root):
        return
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            os.unlink(path)
        elif stat.S_ISDIR(mode):
            os.rmdir(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
            raise


def list_dir(root: Path, rel: str | PurePath) -> list[str]:
    """The names in the real folder ``root / rel``; none when it is a link or not a folder."""
    path = within(root, rel)
    if path is None or not is_real_dir(path):
        return []
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _is_run_folder(folder: Path) -> bool:
    """A folder holding a run's record (run.json with a run id and a recipe), not any run.json."""
    from pipeline_core import regular

    try:
        data = json.loads(regular.read_text(folder / RUN_RECORD))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("run_id"), str) and isinstance(data.get("recipe"), dict)


def enclosing_run(folder: Path) -> Path | None:
    """The nearest run folder that ``folder`` is or lies inside; None if it is in none."""
    path = Path(os.path.abspath(folder))
    for candidate in [path, *path.parents]:
        if (candidate / RUN_RECORD).is_file() and _is_run_folder(candidate):
            return candidate
    return None


def outputs_root(cwd: Path | None = None) -> Path:
    """Where new run and sweep folders go by default: ``runs`` in the current folder, unless that is
    inside a run folder (``cd RUN && pipeline run run.json``): then beside that run folder, so a
    replay never nests inside the run it replays."""
    cwd = Path(cwd) if cwd is not None else Path(".")
    run = enclosing_run(cwd)
    if run is None:
        return Path("runs") if cwd == Path(".") else cwd / "runs"
    return run.parent
