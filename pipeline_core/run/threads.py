"""How many CPU threads PyTorch gets when the recipe does not say (``performance.threads``).

PyTorch's own default is one thread per core, which is right on an idle machine and badly
wrong on a busy one: its threads meet at a barrier after every operation, so when another
program holds one of the cores, every barrier waits for the thread that is not running, and
two threads on a two-core machine shared with one other busy process ran about ten times
slower than one thread. The default here is therefore the number of cores that are *free*:

* the cores this process may use: ``os.sched_getaffinity`` (``taskset``, container CPU sets),
  capped by a cgroup CPU quota (``cpu.max``) where one is set, else ``os.cpu_count()``;
* minus the work already running on the machine: the larger of the 1-minute load average
  and the number of tasks runnable right now (``/proc/loadavg``, less this process's own), so
  a program started a second ago counts as much as one running for minutes; both count the
  whole machine, so they are taken from ``os.cpu_count()`` before the cap above is applied;
* rounded to the nearest whole core, never more than the usable cores and never less than 1.

Costs are lopsided, which is why the busier of the two load figures is used: one thread too
few costs at most that thread's share (1 thread instead of 2 on an idle two-core machine:
about 1.4x slower in docs/performance.md), one too many can cost ten times. An explicit
``OMP_NUM_THREADS`` (torchrun sets it to 1 for several processes per machine) is the user's
choice and is kept. The figure is worked out once per process, so every batch of a sweep
uses the same count (and the load a run makes itself never lowers the next one's);
``run.json`` records it under ``recipe.performance.threads`` so that a replay uses the same
count, whatever the load then, and gives the same bytes.

The load is read from ``/proc`` by hand rather than through psutil: psutil offers neither the
number of tasks runnable now nor the state of each of this process's threads, nor the cgroup
quota, and what it does offer here (the affinity, the load average) the standard library has.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from pathlib import Path
from typing import Iterator


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError, ZeroDivisionError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return max(1, cores)


def _own_running_threads() -> int:
    """Threads of this process that are running or runnable now (they are in the loadavg count)."""
    count = 0
    with contextlib.suppress(OSError):
        for task in os.scandir("/proc/self/task"):
            with contextlib.suppress(OSError, IndexError):
                stat = Path(task.path, "stat").read_text()
                if stat[stat.rindex(")") + 2] == "R":
                    count += 1
    return max(count, 1)


def machine_load() -> float:
    """The work running on the whole machine besides this process, in cores (0 when unknown)."""
    load = 0.0
    with contextlib.suppress(AttributeError, OSError):
        load = os.getloadavg()[0]
    with contextlib.suppress(OSError, ValueError, IndexError):
        runnable = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        load = max(load, float(runnable - _own_running_threads()))
    return max(load, 0.0)


def free_cores() -> int:
    """The cores left for this process by the work already running: at least 1."""
    usable = usable_cores()
    free = (os.cpu_count() or usable) - machine_load()
    return max(1, min(usable, math.floor(free + 0.5)))


def _explicit_env() -> bool:
    return bool(os.environ.get("OMP_NUM_THREADS", "").strip() or os.environ.get("MKL_NUM_THREADS", "").strip())


@functools.lru_cache(maxsize=1)
def default_threads() -> int:
    """The thread count a run uses when neither the recipe nor ``--threads`` sets one (see the module).

    Worked out once per process. With ``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``) set, that is
    the user's choice and PyTorch's resulting count is kept.
    """
    if _explicit_env():
        import torch

        return torch.get_num_threads()
    return free_cores()


@contextlib.contextmanager
def using_threads(threads: int | None) -> Iterator[int]:
    """PyTorch's intra-op thread count set to ``threads`` (None: :func:`default_threads`) inside
    the block; the process's own setting is given back after it."""
    import torch

    count = threads or default_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before)
