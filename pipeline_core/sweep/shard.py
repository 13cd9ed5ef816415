"""Sharing a sweep among torchrun's processes, on one machine or several.

``torchrun --nproc-per-node N [--nnodes M ...] -m pipeline_core sweep FILE`` starts N x M
copies of the command; torchrun's RANK, WORLD_SIZE and LOCAL_RANK tell each who it is. Every
rank computes the same plan (it depends only on the files and options) and takes the batches
whose index is its rank modulo the world size: a static, deterministic division, so no job
runs twice and a rank that torchrun restarts takes the same batches again and skips those
already finished. Each rank runs on its own device (``cuda:LOCAL_RANK``, or the CPU).

torch.distributed (gloo on the CPU, nccl on GPUs; only when WORLD_SIZE > 1) is used once, at
the start: the ranks exchange what they planned, so ranks started with different files or
options stop with one clear line instead of writing a mixed sweep, and agree on one batch
size for ``batch: auto`` (the smallest that every rank's device holds).

Completions are reported through small per-rank status files in the sweep folder
(``.ranks/rank-00001.json``, written atomically) that rank 0 polls, rather than through
collectives. Why: a collective needs every rank to take part at the same moment, but a rank
is inside a run for minutes at a time and its batches take different times; a rank that
fails or is killed would leave the others waiting in a collective until a timeout, while a
file simply stops changing; and the files outlive the processes, so what a restarted rank
finds is exactly what it wrote. The sweep folder has to be one folder all ranks write anyway
(the run folders are the results, and rank 0 indexes them), so on several machines it is on
a shared file system. A session token from rank 0 (handed out in the start-up exchange) keeps
rank 0 from reading a status file left by an earlier start.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from pipeline_core import regular
from pipeline_core.errors import PipelineError, RecipeError
from pipeline_core.run.record import atomic_write_json

STATUS_DIR = ".ranks"


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, items: Sequence[Any]) -> list[Any]:
        """This rank's share: every item whose index is the rank modulo the world size."""
        return [item for i, item in enumerate(items) if i % self.size == self.rank]


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise RecipeError(f"the environment variable {name}={text!r} is not a whole number (torchrun sets it)") from None


def world_from_env() -> World:
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank if size > 1 else 0)
    if size < 1 or not 0 <= rank < size or local < 0:
        raise RecipeError(f"RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local} do not describe a process group")
    return World(rank, size, local)


def start(world: World, device: torch.device) -> None:
    """Join the process group (nothing for one process)."""
    if world.size <= 1:
        return
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))


def agree(world: World, mine: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``mine``, in rank order (just ``[mine]`` for one process)."""
    if world.size <= 1:
        return [mine]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, mine)
    return gathered


def stop(world: World) -> None:
    if world.size <= 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def new_token() -> str:
    return uuid.uuid4().hex[:16]


# -- status files ------------------------------------------------------------------------------


def status_path(sweep_dir: Path, rank: int) -> Path:
    from pipeline_core.run.confine import inside

    return inside(sweep_dir, f"{STATUS_DIR}/rank-{rank:05d}.json")


@dataclass
class RankStatus:
    """What one rank tells rank 0: its batches' outcomes, the batch in progress, and its speed."""

    sweep_dir: Path
    world: World
    token: str
    device: str
    batches: dict[str, str] = field(default_factory=dict)  #: folder -> completed/failed/interrupted/skipped
    jobs_done: int = 0  #: jobs finished (a skipped batch's too), failed ones included
    jobs_run: int = 0  #: jobs this start ran (not skipped), for the speed
    run_seconds: float = 0.0
    current: dict[str, Any] | None = None
    finished: bool = False
    _last: float = 0.0

    def write(self, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._last < 1.0:
            return
        self._last = now
        data = {"token": self.token, "rank": self.world.rank, "world_size": self.world.size,
                "host": socket.gethostname(), "pid": os.getpid(), "device": self.device,
                "batches": self.batches, "jobs_done": self.jobs_done, "jobs_run": self.jobs_run,
                "run_seconds": round(self.run_seconds, 3), "current": self.current, "finished": self.finished}
        try:
            atomic_write_json(status_path(self.sweep_dir, self.world.rank), data)
        except OSError:
            pass  # the display misses an update; the runs and their records are what count


def read_statuses(sweep_dir: Path, world: World, token: str) -> list[dict[str, Any] | None]:
    """Each rank's latest status of this start (None where it has written none yet)."""
    out: list[dict[str, Any] | None] = []
    for rank in range(world.size):
        try:
            data = json.loads(regular.read_text(status_path(sweep_dir, rank)))
        except (OSError, ValueError, PipelineError):
            data = None
        out.append(data if isinstance(data, dict) and data.get("token") == token else None)
    return out
