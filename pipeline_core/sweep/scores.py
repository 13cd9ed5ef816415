"""``pipeline evaluate SWEEP_DIR``: a sweep's images scored job by job, in tables by class and by axis value.

The per-run machinery of :mod:`pipeline_core.scoring` does the scoring; this module
adds what only a sweep has: many run folders scored with each model loaded once, every job's
score written back into sweep.json (the atlas page sorts by it), and tables per value of each
axis.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pipeline_core import regular
from pipeline_core.errors import OutputError, RecipeError, _printable
from pipeline_core.recipe.model_arg import EvalModel
from pipeline_core.run.device import pick_device
from pipeline_core.run.record import atomic_write_json
from pipeline_core.scoring.images import load_images, read_run
from pipeline_core.scoring.score import FILE, SWEEP_FILE, Tally, build_adapter, score

if TYPE_CHECKING:
    from pipeline_core.registry import Registry


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def evaluate_sweep(sweep_dir: Path, models: Sequence[EvalModel], registry: Registry, device: str = "cpu",
                   batch_size: int = 16, write: bool = True) -> dict[str, Any]:
    """Score every finished job of a sweep folder, run folder by run folder, with each model.

    Each model is loaded once; each run's images go through the per-run machinery
    (:func:`read_run`, :func:`load_images`, :func:`score`). The tables are overall, per class
    and per value of each axis; each job's target probability goes into its ``score`` in
    sweep.json (under the model's label), and the whole into the sweep folder's evaluation.json.
    """
    path = sweep_dir / SWEEP_FILE
    try:
        index = json.loads(regular.read_text(path))  # a FIFO is refused, never waited on
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{path} cannot be read as a sweep index ({type(exc).__name__})") from None
    if not isinstance(index, dict) or not isinstance(index.get("jobs"), list):
        raise RecipeError(f"{path} is not a sweep index: it has no list of jobs")
    if write and not os.access(sweep_dir, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {sweep_dir / FILE}: permission denied; copy the sweep folder somewhere writable")
    runs: dict[str, list[dict[str, Any]]] = {}
    for job in index["jobs"]:
        if isinstance(job, dict) and job.get("status") == "completed" and isinstance(job.get("run"), str) \
                and isinstance(job.get("image"), str):
            runs.setdefault(job["run"], []).append(job)
    if not runs:
        raise RecipeError(f"{sweep_dir}: the sweep has no completed jobs to score yet "
                          f"({len(index['jobs'])} jobs, none completed)")
    loaded = []
    for run, jobs in runs.items():
        _record, images = read_run(sweep_dir / run)
        by_file = {f"{run}/images/{i.file}": i for i in images}
        wanted = [by_file[j["image"]] for j in jobs if j["image"] in by_file]
        loaded.append((run, {i.file: j for j in jobs for i in [by_file.get(j["image"])] if i is not None}, wanted,
                       load_images(sweep_dir / run, wanted)))
    dev = pick_device(device)
    axes = index.get("axes") if isinstance(index.get("axes"), dict) else {}
    results = []
    for model in models:
        adapter = build_adapter(model, registry, dev)
        overall, per_class, per_axis = Tally(), {}, {key: {} for key in axes}
        unscored: list[str] = []
        for run, jobs_by_file, wanted, pictures in loaded:
            scored = score(adapter, model, pictures, wanted, batch_size)
            unscored += [f"{run}/images/{f}" for f in scored.unscored]
            for item in scored.images:
                job = jobs_by_file[item["file"]]
                rank, prob = item["rank"], item["target_probability"]
                tallies = [overall, per_class.setdefault(item["target"], Tally())]
                values = job.get("values") if isinstance(job.get("values"), dict) else {}
                for key in axes:
                    if key in values:
                        tallies.append(per_axis[key].setdefault(_value_text(values[key]), Tally()))
                for tally in tallies:
                    tally.add(rank, prob)
                    tally.non_finite += bool(item.get("non_finite"))
                job.setdefault("score", {})[model.label] = prob
                job.setdefault("score_rank", {})[model.label] = rank
        del adapter
        results.append({"model": model.label, "spec": model.describe(), "overall": overall.summary(),
                        "per_class": {n: t.summary() for n, t in sorted(per_class.items())},
                        "per_axis": {k: {v: t.summary() for v, t in vals.items()} for k, vals in per_axis.items()},
                        "unscored": unscored})
    data = {"kind": "sweep", "run": str(sweep_dir), "sweep": index.get("name"),
            "recipe": index.get("recipe") if isinstance(index.get("recipe"), str) else None,
            "images": sum(len(w) for _r, _j, w, _p in loaded), "jobs": len(index["jobs"]),
            "axes": {k: len(v) if isinstance(v, list) else None for k, v in axes.items()}, "models": results}
    if write:
        index["evaluation"] = {"file": FILE, "models": [m["model"] for m in results]}
        try:
            atomic_write_json(path, index)
            atomic_write_json(sweep_dir / FILE, data)
        except OSError as exc:
            raise OutputError(f"cannot write {sweep_dir / FILE}: {exc.strerror or exc}") from None
    return data


#: more rows than this in a per-class table are left to evaluation.json
MAX_ROWS = 100


def render_sweep(data: dict[str, Any]) -> Any:
    """Overall per model, then per class and per value of each axis (a target axis is the classes)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def table(title: str, first: str, rows: dict[str, Any]) -> Any:
        t = Table(title=Text(_printable(title)))
        for col in (first, "images", "top-1", "top-5", "mean p(target)"):
            t.add_column(col, justify="left" if col == first else "right")
        for name, c in rows.items():
            t.add_row(Text(_printable(name)), str(c["images"]), f"{c['top1']:.0%}", f"{c['top5']:.0%}",
                      f"{c['mean_target_probability']:.3f}")
        return t

    overall = {m["model"]: m["overall"] for m in data["models"]}
    parts: list[Any] = [table(f"sweep {data.get('sweep') or data['run']}: {data['images']} images of "
                              f"{data['jobs']} jobs", "model", overall)]
    for m in data["models"]:
        if len(m["per_class"]) > MAX_ROWS:
            parts.append(Text(_printable(f"{m['model']}: {len(m['per_class'])} classes: per class in "
                                         f"{data['run']}/{FILE}")))
        elif len(m["per_class"]) > 1:
            parts.append(table(f"by class: {m['model']}", "class", m["per_class"]))
        for key, values in m["per_axis"].items():
            if key.endswith(".target") or len(values) < 2:
                continue  # a target axis is the table by class
            parts.append(table(f"by {key}: {m['model']}", key.rsplit(".", 1)[-1], values))
        if m["unscored"]:
            parts.append(Text(_printable(f"{m['model']}: {len(m['unscored'])} images not scored "
                                         "(target class unknown to it)")))
    return Group(*parts)
