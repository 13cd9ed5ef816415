"""A run from Python borrows the caller's process: torch's global settings and the caller's own
model. Both are handed back as they were, however the run ends.

The engine was written for a process of its own (the command), so it sets what it needs and
leaves it: eval mode and frozen parameters on the model, forward hooks that a step adds, the
number of threads, cuDNN's flags. In a notebook the same process trains the model in the next
cell, so :func:`torch_state_kept` and :func:`module_lent` put every one of them back.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Iterator

import torch
from torch import nn

#: the per-module hook tables torch keeps; a step's hooks are found by comparing their keys
_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
                "_state_dict_hooks", "_load_state_dict_pre_hooks")


@contextlib.contextmanager
def torch_state_kept() -> Iterator[None]:
    """Threads, grad mode, every RNG (torch's, CUDA's, Python's, NumPy's) and the determinism
    flags as they were before the block."""
    import numpy as np

    threads = torch.get_num_threads()
    grad = torch.is_grad_enabled()
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    py_rng = random.getstate()
    np_rng = np.random.get_state()
    flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        random.setstate(py_rng)
        np.random.set_state(np_rng)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags[0], flags[1]
        torch.use_deterministic_algorithms(flags[2], warn_only=flags[3])
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def _place(module: nn.Module) -> tuple[torch.device | None, bool]:
    """(device of the first parameter or buffer, whether a 4-D weight is channels-last)."""
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device, t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return None, False


@contextlib.contextmanager
def module_lent(module: nn.Module) -> Iterator[nn.Module]:
    """The caller's module for one run: afterwards its train/eval mode, each parameter's
    ``requires_grad``, its device and memory layout are as they were, and every hook the run
    added is removed (the hooks a step adds would otherwise fire in the caller's next forward)."""
    training = {name: m.training for name, m in module.named_modules()}
    grads = {name: p.requires_grad for name, p in module.named_parameters()}
    hooks = {(name, table): set(getattr(m, table, {}) or {}) for name, m in module.named_modules()
             for table in _HOOK_TABLES}
    device, channels_last = _place(module)
    try:
        yield module
    finally:
        modules = dict(module.named_modules())
        for (name, table), before in hooks.items():
            found: Any = getattr(modules.get(name), table, None)
            if found:
                for key in [k for k in found if k not in before]:
                    del found[key]
        for name, mode in training.items():
            if name in modules:
                modules[name].training = mode
        for name, p in module.named_parameters():
            if name in grads:
                p.requires_grad_(grads[name])
        now_device, now_last = _place(module)
        if device is not None and now_device != device:
            module.to(device)
        if now_last and not channels_last:
            module.to(memory_format=torch.contiguous_format)
