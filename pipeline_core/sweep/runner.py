"""Running a rank's batches: skip what is finished, resume what was interrupted, go on past failures.

Each batch is a run of the engine (:class:`~pipeline_core.run.engine.Run`) in its own run
folder, started exactly as ``pipeline run`` starts one (the folder locked and cleared first)
or continued exactly as ``pipeline run --resume`` continues one. So the sweep adds nothing to
what a run folder promises: an interrupted batch keeps its checkpoint and video, a failed
one its record, and every finished one replays from its run.json.

The first Ctrl-C (or SIGTERM, SIGHUP) lets the batch in progress save its checkpoint, then the
sweep stops without starting another and exits with 130; starting it again continues. On rank
0 a thread polls every rank's status file and draws one bar for the whole sweep (jobs done of
all, counting the batches in progress by their iterations, with the rate and ETA of this
start), and refreshes sweep.json when a batch ends anywhere.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from pipeline_core.errors import PipelineError
from pipeline_core.run.progress import Progress
from pipeline_core.sweep import index as sweep_index
from pipeline_core.sweep.plan import Batch, SweepPlan, batch_dir, load_batch
from pipeline_core.sweep.shard import RankStatus, World, read_statuses


class ReportingProgress(Progress):
    """The progress of the batch in progress, into the rank's status file (about once a second)."""

    def __init__(self, status: RankStatus, batch: Batch):
        super().__init__()
        self.status = status
        self.batch = batch

    def start(self, total: int, description: str, done: int = 0) -> None:
        self.status.current = {"run": self.batch.folder, "images": self.batch.size, "iterations": total,
                               "iterations_done": done}
        self.status.write(force=False)

    def update(self, done: int, loss: float, prob: float | None) -> None:
        if self.status.current is not None:
            self.status.current["iterations_done"] = done
        self.status.write(force=False)


@dataclass
class Outcome:
    status: str  #: completed, skipped, resumed-completed is completed; failed; interrupted
    message: str = ""
    seconds: float = 0.0


def run_batch(plan: SweepPlan, batch: Batch, sweep_dir: Path, registry: Any, sets: Sequence[str],
              device: torch.device, progress: Progress, force: bool = False) -> Outcome:
    """One batch to its end: skipped if finished, resumed if it has a checkpoint, else run afresh."""
    from pipeline_core.errors import RecipeError
    from pipeline_core.run.engine import Run, prepare_resume
    from pipeline_core.run.record import RunLock, prepare_run_dir, run_lock

    run_dir = batch_dir(sweep_dir, batch)  # never through a link out of the sweep folder
    state = sweep_index.batch_state(run_dir)
    if state == "completed" and not force:
        return Outcome("skipped")
    t0 = time.perf_counter()
    if state in ("interrupted", "running") and (run_dir / "checkpoint.pt").is_file() and not force:
        with RunLock.acquire(run_dir):
            try:
                recipe, resume = prepare_resume(run_dir, registry)
            except RecipeError:
                resume = None  # a checkpoint that does not fit: the batch starts again below
            if resume is not None:
                result = Run(recipe, registry, run_dir, progress, device=str(device), resume=resume).execute()
                return Outcome(result.status, result.message, time.perf_counter() - t0)
    recipe = load_batch(plan, batch, registry, sets)
    with run_lock(run_dir):
        prepare_run_dir(run_dir, force=True)
        result = Run(recipe, registry, run_dir, progress, device=str(device)).execute()
    return Outcome(result.status, result.message, time.perf_counter() - t0)


@dataclass
class RankRun:
    """What one rank did in this start."""

    status: RankStatus
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False


def run_rank(plan: SweepPlan, sweep_dir: Path, registry: Any, sets: Sequence[str], world: World,
             device: torch.device, status: RankStatus, force: bool = False,
             say: Callable[[str], None] = lambda _line: None) -> RankRun:
    """This rank's share of the batches, in order; stops after a batch that was interrupted."""
    out = RankRun(status)
    status.write()
    try:
        for batch in world.mine(plan.batches):
            try:
                outcome = run_batch(plan, batch, sweep_dir, registry, sets, device,
                                    ReportingProgress(status, batch), force)
            except PipelineError as exc:  # the batch's recipe or folder: this batch fails, the rest go on
                outcome = Outcome("failed", str(exc))
            status.current = None
            status.batches[batch.folder] = outcome.status
            if outcome.status == "interrupted":
                out.interrupted = True
                status.write()
                break
            status.jobs_done += len(batch.jobs)
            if outcome.status != "skipped":
                status.jobs_run += len(batch.jobs)
                status.run_seconds += outcome.seconds
            if outcome.status == "failed":
                out.failed.append((batch.folder, outcome.message))
                say(f"{batch.folder} failed: {outcome.message} (record: {sweep_dir / batch.folder / 'run.json'}); "
                    "the sweep goes on")
            status.write()
    except KeyboardInterrupt:  # a stop between two batches (while one was being loaded)
        out.interrupted = True
        status.current = None
        status.write()
    return out


class Overall:
    """Rank 0's view of the whole sweep: every rank's status file, polled by a thread."""

    def __init__(self, plan: SweepPlan, sweep_dir: Path, world: World, token: str, bar: Any,
                 refresh: Callable[[], None], poll: float = 0.5):
        self.plan, self.sweep_dir, self.world, self.token = plan, sweep_dir, world, token
        self.bar = bar
        self.refresh = refresh
        self.poll = poll
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seen: dict[str, str] = {}
        self.statuses: list[dict[str, Any] | None] = [None] * world.size
        self._thread = threading.Thread(target=self._watch, name="sweep-progress", daemon=True)
        self.sizes = {b.folder: b.size for b in plan.batches}
        self.jobs = {b.folder: len(b.jobs) for b in plan.batches}

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.look()
            except Exception:  # noqa: BLE001 - the display must never stop the sweep
                pass

    def look(self) -> None:
        with self._lock:
            self._look()

    def _look(self) -> None:
        self.statuses = read_statuses(self.sweep_dir, self.world, self.token)
        finished_batches: dict[str, str] = {}
        done = run = 0.0
        for s in self.statuses:
            if not s:
                continue
            finished_batches.update(s.get("batches") or {})
            done += float(s.get("jobs_done") or 0)
            cur = s.get("current")
            if isinstance(cur, dict) and cur.get("iterations"):
                part = self.jobs.get(cur.get("run"), 0) * min(1.0, float(cur.get("iterations_done") or 0) / float(cur["iterations"]))
                done += part
                run += part
            run += float(s.get("jobs_run") or 0)
        skipped = sum(self.jobs.get(f, 0) for f, st in finished_batches.items() if st == "skipped")
        failed = sum(self.jobs.get(f, 0) for f, st in finished_batches.items() if st == "failed")
        self.bar.show(done, self.plan.total, run, skipped, failed, time.monotonic() - self.started)
        if finished_batches != self._seen:
            self._seen = dict(finished_batches)
            self.refresh()

    def outcomes(self) -> dict[str, str]:
        """Every batch's outcome in this start, as the ranks reported it."""
        out: dict[str, str] = {}
        for s in self.statuses:
            out.update((s or {}).get("batches") or {})
        return out

    def all_finished(self) -> bool:
        return all(s is not None and s.get("finished") for s in self.statuses)

    def wait_for_ranks(self, interval: float = 0.5) -> None:
        """Until every rank has said it is finished (torchrun ends the group if one dies)."""
        while True:
            self.look()
            if self.all_finished():
                return
            time.sleep(interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.bar.stop()
