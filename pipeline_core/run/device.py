"""Choosing the run's device, at run time only (never at import)."""

from __future__ import annotations

import torch

from pipeline_core.errors import RecipeError


def pick_device(name: str) -> torch.device:
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RecipeError(f"device '{name}' was asked for but CUDA is not available here; use --device cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise RecipeError(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise RecipeError("device 'mps' was asked for but Apple's MPS is not available here; use --device cpu or auto")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise RecipeError(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps")


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of one process of a sweep started by torchrun: ``auto`` and ``cuda`` mean the
    card numbered by its LOCAL_RANK (one card per process on each machine), so that a sweep's
    processes never share a card by accident; anything else is taken as :func:`pick_device` takes it."""
    name = (name or "auto").strip().lower()
    if name in ("auto", "cuda") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise RecipeError(f"process {local_rank} on this machine would use cuda:{local_rank}, but it has "
                              f"{count} CUDA device(s): start at most {count} processes per machine "
                              "(torchrun --nproc-per-node)")
        return torch.device("cuda", local_rank)
    return pick_device(name)
