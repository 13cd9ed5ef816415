"""A finished run's final images and the class each one ends up aimed at, read from its folder.

``run.json`` names each final PNG and its targets; this reads them back, exactly as the run
saved them, refusing a record this tool did not write (a file name outside ``images/``, a
target without an index) with one line instead of scoring something else.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from pipeline_core.errors import RecipeError
from pipeline_core.run.record import read_record


@dataclass
class ScoredImage:
    file: str
    target_index: int
    target_name: str


def final_target(targets: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The class an image ends up aimed at: the one with the largest final weight (blends)."""
    if not targets:
        return None
    return max(targets, key=_weight)


def _weight(target: dict[str, Any]) -> float:
    value = target.get("final_weight", target.get("weight", 1.0))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def _entry_problem(entry: Any) -> str | None:
    """Why an entry of run.json's "images" is not one a run writes, or None."""
    if not isinstance(entry, dict):
        return f"an entry is a {type(entry).__name__}, not a mapping"
    name = entry.get("file")
    if not isinstance(name, str) or not re.fullmatch(r"[^/\\]+\.png", name) or name.startswith("."):
        return f"the file {name!r} is not an image name in images/"
    targets = entry.get("targets")
    if targets is None:
        return None
    if not isinstance(targets, list):
        return f"the targets of {name} are not a list"
    for t in targets:
        if not isinstance(t, dict):
            return f"a target of {name} is not a mapping"
        index, cls = t.get("index"), t.get("name")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 10**9:
            return f"a target of {name} has no class index"
        if not isinstance(cls, (str, int)) or isinstance(cls, bool):
            return f"a target of {name} has no class name"
        if math.isnan(_weight(t)):
            return f"a target weight of {name} is not a number"
    return None


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[ScoredImage]]:
    """run.json and, per final image, its file and final target."""
    record_path = run_dir / "run.json"
    if not record_path.is_file():
        raise RecipeError(f"{run_dir} is not a run folder: it has no run.json")
    record = read_record(run_dir)
    entries = record.get("images")
    if entries is not None and not isinstance(entries, list):
        raise RecipeError(f"{record_path} is not a run record: its 'images' is not a list")
    images = []
    for entry in entries or []:
        problem = _entry_problem(entry)
        if problem:
            raise RecipeError(f"{record_path} is not a run record this tool wrote: {problem}")
        target = final_target(entry.get("targets") or [])
        if target is None:
            continue
        images.append(ScoredImage(entry["file"], int(target["index"]), str(target["name"])))
    if not images:
        status = record.get("status")
        raise RecipeError(f"{run_dir}: run.json lists no final images with a target "
                          f"(status: {status if isinstance(status, str) else '?'})")
    return record, images


def load_images(run_dir: Path, images: Sequence[ScoredImage]) -> list[torch.Tensor]:
    """The final PNGs as (3, H, W) tensors in [0, 1], exactly as the run saved them."""
    import numpy as np
    from PIL import Image

    out = []
    for item in images:
        path = run_dir / "images" / item.file
        if not path.is_file():
            raise RecipeError(f"{path} is listed in run.json but missing")
        try:
            with Image.open(path) as im:
                if im.width * im.height > 4096 * 4096 * 4:
                    raise ValueError("too large")
                array = np.array(im.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise RecipeError(f"{path} is listed in run.json but is not a readable image "
                              f"({type(exc).__name__})") from None
        out.append(torch.from_numpy(array).permute(2, 0, 1).float() / 255.0)
    return out
