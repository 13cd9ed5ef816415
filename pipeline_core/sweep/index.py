"""``SWEEP_DIR/sweep.json``: every job of the sweep, where its image is and how it went.

The format is an agreement with the pages that read it; keys may be added, never changed::

    {"name": str, "recipe": str, "axes": {dotted_key: [values]}, "total": int,
     "options": ["--set KEY=VALUE", "--axis KEY=VALUES", ...],   # as typed, for the page's header
     "jobs": [{"id": str, "values": {dotted_key: value}, "run": "runs/...",
               "image": "runs/.../images/000_goldfish.png",   # null until the image exists
               "targets": [{"index": int, "name": str}],
               "top5": [{"index": int, "name": str, "p": float}],
               "status": "completed" | "failed" | "interrupted" | "pending",
               "score": {"<judge label>": p_target}}]}      # after pipeline evaluate SWEEP_DIR

The run folders' own run.json files are the truth: the index is rebuilt from them (by rank 0,
while the sweep runs and at its end), so it is never more than a view of what is on disk. A
job's top-5 is the run's own model's, as run.json records it for each final image. Scores
written by ``pipeline evaluate`` survive a rebuild for as long as the job's image is the same.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline_core import regular
from pipeline_core.run.record import atomic_write_json
from pipeline_core.sweep.plan import Batch, SweepPlan

FILE = "sweep.json"


def read_run_record(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(regular.read_text(run_dir / "run.json"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def batch_state(run_dir: Path) -> str:
    """completed, failed, interrupted (a checkpoint may be there), running (killed, or in
    progress), or pending (nothing written yet). A completed run must still have its images."""
    record = read_run_record(run_dir)
    if record is None:
        return "pending"
    status = record.get("status")
    if status == "completed":
        images = record.get("images") if isinstance(record.get("images"), list) else []
        if images and all(isinstance(i, dict) and (run_dir / "images" / str(i.get("file"))).is_file() for i in images):
            return "completed"
        return "failed"
    return status if status in ("failed", "interrupted", "running") else "pending"


def read_index(sweep_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(regular.read_text(sweep_dir / FILE))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _job_status(state: str) -> str:
    return {"completed": "completed", "failed": "failed", "interrupted": "interrupted"}.get(state, "pending")


def _batch_entries(plan: SweepPlan, sweep_dir: Path, batch: Batch, outcome: str | None) -> tuple[str, list[dict[str, Any]]]:
    run_dir = sweep_dir / batch.folder
    state = batch_state(run_dir)
    if state == "pending" and outcome == "failed":  # failed before its run.json could be written
        state = "failed"
    record = read_run_record(run_dir) if state != "pending" else None
    images = record.get("images") if record and isinstance(record.get("images"), list) else []
    out = []
    for job in batch.jobs:
        entry = images[job.position] if job.position < len(images) and isinstance(images[job.position], dict) else {}
        file = entry.get("file")
        image = f"{batch.folder}/images/{file}" if isinstance(file, str) and (run_dir / "images" / file).is_file() \
            else None
        targets = entry.get("targets") if isinstance(entry.get("targets"), list) else job.targets
        top5 = [{"index": t.get("index"), "name": t.get("name"), "p": t.get("probability")}
                for t in (entry.get("top5") or []) if isinstance(t, dict)]
        out.append({"id": job.id, "values": job.values, "run": batch.folder, "image": image,
                    "targets": [{"index": t.get("index"), "name": t.get("name")} for t in targets if isinstance(t, dict)],
                    "top5": top5, "status": _job_status(state), "batch": batch.index, "position": job.position})
    return state, out


def build_index(plan: SweepPlan, sweep_dir: Path, extra: dict[str, Any] | None = None,
                outcomes: dict[str, str] | None = None) -> dict[str, Any]:
    """The index from the run folders; ``outcomes`` are the ranks' reports of this start (a batch
    whose folder could not even be written has no run.json to say that it failed)."""
    old = read_index(sweep_dir) or {}
    scores = {}
    for job in old.get("jobs") or []:
        if isinstance(job, dict) and isinstance(job.get("score"), dict):
            scores[(job.get("id"), job.get("image"))] = job["score"]
    jobs: list[dict[str, Any]] = []
    batches = []
    for batch in plan.batches:
        state, entries = _batch_entries(plan, sweep_dir, batch, (outcomes or {}).get(batch.folder))
        for entry in entries:
            score = scores.get((entry["id"], entry["image"]))
            if score is not None and entry["image"] is not None:
                entry["score"] = score
        jobs.extend(entries)
        batches.append({"index": batch.index, "run": batch.folder, "images": batch.size, "status": state})
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    data = {
        "name": plan.spec.name,
        "recipe": str(plan.spec.recipe),
        "sweep_file": str(plan.spec.file.resolve()),
        "axes": {a.key: a.values for a in plan.axes},
        "total": plan.total,
        "batch": plan.batch_size,
        "counts": counts,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "batches": batches,
        "jobs": jobs,
    }
    for key in ("contact_sheets", "throughput", "evaluation"):
        if key in old:
            data[key] = old[key]
    data.update(extra or {})
    return data


def write_index(sweep_dir: Path, data: dict[str, Any]) -> None:
    atomic_write_json(sweep_dir / FILE, data)
