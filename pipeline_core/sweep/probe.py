"""``batch: auto``: as many images per run as the device's memory holds, found by trying.

What a batch costs depends on everything in the recipe (the model, the image size, how many
views a step shows the model), so it is measured rather than guessed: one iteration of the
sweep's own recipe at 1 and at 4 images, through the engine, in a scratch folder. The peak
memory of each (CUDA: the allocator's peak; CPU on Linux: the process's peak resident size,
reset between the two) gives a fixed part and a part per image; the batch is what fits in 80%
of the memory free now (on the CPU shared by the processes of this machine). On the CPU the
result is capped at 64 images: beyond a few, a CPU makes no more images per second, and a
smaller batch is lost more cheaply to an interrupt. Without a way to measure (the resettable
peak is Linux's: :mod:`pipeline_core.run.memory`), auto means 8.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from pipeline_core.recipe.loader import load_recipe
from pipeline_core.recipe.sections import MAX_BATCH
from pipeline_core.recipe.source import Override
from pipeline_core.registry import Registry
from pipeline_core.run import memory

CPU_CAP = 64
FALLBACK = 8


def _one_iteration(recipe_file: Path, registry: Registry, overrides: Sequence[str], size: int,
                   device: torch.device) -> int | None:
    """Peak bytes of one iteration at ``size`` images (None: cannot be measured here)."""
    from pipeline_core.run.engine import Run
    from pipeline_core.run.progress import Progress

    sets = [*overrides, Override(f"batch={size}", "batch: auto (probe)"),
            Override("iterations=1", "batch: auto (probe)"), Override("output.video=false", "batch: auto (probe)")]
    recipe = load_recipe(recipe_file, registry, sets)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    elif not memory.reset_peak():
        return None
    with tempfile.TemporaryDirectory(prefix="sweep-probe-") as tmp:
        result = Run(recipe, registry, Path(tmp) / "run", Progress(), device=str(device)).execute()
    if result.status == "interrupted":
        raise KeyboardInterrupt
    if result.status != "completed":
        return -1  # did not fit (or failed otherwise): the caller stops growing
    if cuda:
        return int(torch.cuda.max_memory_allocated(device))
    return memory.peak_rss()


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    available, rss = memory.available_bytes(), memory.current_rss()
    if available is None or rss is None:
        return None
    sharing = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return available // sharing + rss


def probe_batch(recipe_file: Path, registry: Registry, overrides: Sequence[str], device: torch.device,
                most: int) -> tuple[int, dict]:
    """The batch size for ``batch: auto`` and how it was found (for sweep.json)."""
    most = max(1, min(most, MAX_BATCH))
    if device.type not in ("cuda", "cpu"):
        return min(FALLBACK, most), {"how": f"no memory probe on {device.type}: {FALLBACK}"}
    one = _one_iteration(recipe_file, registry, overrides, 1, device)
    four = _one_iteration(recipe_file, registry, overrides, 4, device) if one and one > 0 else None
    free = _free_bytes(device)
    if not one or one < 0 or not four or four < 0 or free is None:
        return min(FALLBACK, most), {"how": "the probe could not measure memory here", "batch": min(FALLBACK, most)}
    per_image = max((four - one) / 3, 1 << 20)
    fixed = max(one - per_image, 0)
    fits = int((0.8 * free - fixed) // per_image)
    cap = most if device.type == "cuda" else min(most, CPU_CAP)
    batch = max(1, min(fits, cap))
    return batch, {"how": "probe", "device": str(device), "peak_bytes_1": one, "peak_bytes_4": four,
                   "bytes_per_image": int(per_image), "free_bytes": free, "fits": fits, "batch": batch}
