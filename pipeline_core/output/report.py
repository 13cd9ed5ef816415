"""report.html (a run) and atlas.html (a sweep): pages to look at instead of files to read.

A run folder holds a video, PNGs, run.json and metrics.jsonl; the report puts them on one page:
the final images with their targets, the probability of each and the model's top five, the
video, the curves of the loss, of each objective and of the target's probability, the recipe
as YAML, the facts of the run and, once ``pipeline evaluate`` has run, its tables. A sweep gets
an atlas: a thumbnail per job, filtered by class name and sorted by an independent score.

The pages are self-contained: the styles and the few lines of script are in the page, the
curves are inline SVG (:mod:`.charts`), and the images and the video are named by relative
links, so a page opens from the file system, from a copied folder or an archive, with no
network. They are rendered from Jinja2 templates (``templates/`` beside this module, shipped
with the package) with HTML escaping on: every name in them comes from a recipe, a class list
or a plugin, and is shown, never interpreted.

Everything here reads the folder's files, never the live run, so ``pipeline report DIR``
rebuilds any page at any time and gives the same page the run wrote.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipeline_core.output.metrics import FILE as METRICS_FILE, read_metrics
from pipeline_core.writers import write_atomically

REPORT = "report.html"
ATLAS = "atlas.html"
SWEEP = "sweep.json"
EVALUATION = "evaluation.json"


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("pipeline_core.output", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["href"] = _href
    env.filters["num"] = _num
    env.filters["pct"] = lambda v: "-" if not _is_number(v) else f"{100 * float(v):.0f}%"
    return env


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any, digits: int = 4) -> str:
    """A probability or a loss as the page shows it (run.json's value, rounded for reading)."""
    if not _is_number(value):
        return "-"
    return f"{float(value):.{digits}f}"


def _href(path: Any) -> str:
    """A relative link to a file of the folder: its characters quoted ('#', '?', spaces), never absolute."""
    text = str(path).replace(os.sep, "/")
    return quote(text.lstrip("/"), safe="/-_.~")


def _read_json(path: Path) -> Any:
    from pipeline_core import regular

    try:
        return json.loads(regular.read_text(path))  # a FIFO is refused, never waited on
    except (OSError, ValueError):
        return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _recipe_yaml(recipe: Any) -> str:
    import yaml

    if not isinstance(recipe, dict):
        return ""
    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True, width=100)


def _evaluation(data: Any) -> dict[str, Any] | None:
    """evaluation.json's tables as the page shows them, whatever a hand-edited file holds."""
    def tally(t: Any) -> dict[str, Any]:
        t = _dict(t)
        return {k: t.get(k) for k in ("images", "top1", "top5", "mean_target_probability")}

    models = []
    for m in _list(_dict(data).get("models")):
        if isinstance(m, dict):
            models.append({"model": str(m.get("model", "?")), "overall": tally(m.get("overall")),
                           "per_class": {str(k): tally(v) for k, v in _dict(m.get("per_class")).items()},
                           "images": [i for i in _list(m.get("images")) if isinstance(i, dict)]})
    return {"models": models} if models else None


def _images(record: dict[str, Any], evaluation: dict[str, Any] | None) -> list[dict[str, Any]]:
    judged: dict[str, list[dict[str, Any]]] = {}
    for model in _list(_dict(evaluation).get("models")):
        for item in _list(_dict(model).get("images")):
            if isinstance(item, dict) and isinstance(item.get("file"), str):
                judged.setdefault(item["file"], []).append({"rank": "?", "target_probability": None, "top1": "?",
                                                            **item, "model": model.get("model")})
    out = []
    for entry in _list(record.get("images")):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            continue
        targets = [t for t in _list(entry.get("targets")) if isinstance(t, dict)]
        target_indices = {t.get("index") for t in targets}
        top5 = [{"name": str(t.get("name")), "index": t.get("index"), "probability": t.get("probability"),
                 "width": max(0.0, min(100.0, 100 * float(t["probability"]))) if _is_number(t.get("probability")) else 0,
                 "target": t.get("index") in target_indices}
                for t in _list(entry.get("top5")) if isinstance(t, dict)]
        out.append({"file": entry["file"], "src": f"images/{entry['file']}",
                    "targets": [str(t.get("name", t.get("index"))) for t in targets],
                    "probability": entry.get("target_probability"), "top5": top5,
                    "judged": judged.get(entry["file"], [])})
    return out


def _facts(record: dict[str, Any]) -> list[tuple[str, str]]:
    model = _dict(record.get("model"))
    timings = _dict(record.get("timings"))
    versions = _dict(record.get("versions"))
    facts = [
        ("status", str(record.get("status", "?"))),
        ("message", str(record.get("message") or "")),
        ("iterations", f"{record.get('iterations_done', '?')} of {record.get('iterations', '?')}"),
        ("batch", str(record.get("batch", "?"))),
        ("model", f"{model.get('name', '?')} ({model.get('weights', '?')}), size {model.get('size', '?')}, "
                  f"mean {model.get('mean', '?')}, std {model.get('std', '?')}"),
        ("device", f"{record.get('device', '?')}, {record.get('threads', '?')} threads"),
        ("seed", str(record.get("seed", "?"))),
        ("recipe file", str(record.get("recipe_file") or "")),
        ("run id", str(record.get("run_id") or "")),
        ("replay", str(record.get("determinism_note") or "")),
    ]
    for key in ("loop_seconds", "image_iterations_per_second", "model_load_seconds", "total_seconds",
                "wall_seconds", "frames"):
        if key in timings:
            facts.append((key.replace("_", " "), str(timings[key])))
    if versions:
        facts.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    for key in ("checkpoint", "resumed", "video_note", "report_warning", "determinism_warnings"):
        if record.get(key):
            value = record[key]
            facts.append((key.replace("_", " "), value if isinstance(value, str) else json.dumps(value)))
    return [(k, v) for k, v in facts if v]


def _video(record: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    if not (run_dir / "video.mp4").is_file():
        return None
    output = _dict(_dict(record.get("recipe")).get("output"))
    fps = output.get("fps") if _is_number(output.get("fps")) else None
    frames = _dict(record.get("timings")).get("frames")
    return {"src": "video.mp4", "fps": fps, "frames": frames if _is_number(frames) else None,
            "seconds": round(frames / fps, 3) if _is_number(frames) and fps else None}


def render_report(run_dir: Path) -> str:
    """The report of the run in ``run_dir`` as HTML text, from the files there now."""
    from pipeline_core import __version__
    from pipeline_core.output.charts import metric_charts

    record = _read_json(run_dir / "run.json")
    if not isinstance(record, dict):
        raise ValueError(f"{run_dir / 'run.json'} is missing or not a run record")
    evaluation = _evaluation(_read_json(run_dir / EVALUATION))
    images = _images(record, evaluation)
    rows = read_metrics(run_dir / METRICS_FILE)
    names = [", ".join(i["targets"]) or f"image {k}" for k, i in enumerate(images)]
    if not names:
        names = [", ".join(str(t.get("name")) for t in _list(ts) if isinstance(t, dict))
                 for ts in _list(record.get("targets"))]
    recipe = _dict(record.get("recipe"))
    title = Path(str(record.get("recipe_file") or run_dir.name)).stem
    page = _environment().get_template("report.html.j2").render(
        title=title, run_dir=run_dir.name, description=recipe.get("description"),
        record=record, status=str(record.get("status", "?")), message=record.get("message") or "",
        facts=_facts(record), images=images, grid="images/grid.png" if (run_dir / "images" / "grid.png").is_file() else None,
        video=_video(record, run_dir), charts=metric_charts(rows, names), metrics_rows=len(rows),
        metrics_file=METRICS_FILE if (run_dir / METRICS_FILE).is_file() else None,
        recipe_yaml=_recipe_yaml(record.get("recipe")), evaluation=evaluation,
        written=time.strftime("%Y-%m-%d %H:%M:%S"), version=__version__,
    )
    return page


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir``/report.html (atomically); its path."""
    run_dir = Path(run_dir)
    path = run_dir / REPORT
    write_atomically(path, render_report(run_dir).encode("utf-8"))
    return path


def safe_write_report(run_dir: Path) -> str | None:
    """Write the report; a one-line warning instead of any exception (a report never fails a run)."""
    try:
        write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - the page is a view of the run; the run stands without it
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"report.html could not be written ({type(exc).__name__}: {first})"
    return None


# -- sweeps ---------------------------------------------------------------------------------------


def _relative(path: Any, folder: Path) -> str | None:
    """A path of sweep.json as a link from the sweep folder (an absolute one made relative)."""
    if not isinstance(path, str) or not path:
        return None
    if os.path.isabs(path):
        try:
            return os.path.relpath(path, folder.resolve())
        except ValueError:  # another drive (Windows): no relative link exists
            return None
    return path


def _job(job: dict[str, Any], sweep_dir: Path) -> dict[str, Any]:
    targets = [t for t in _list(job.get("targets")) if isinstance(t, dict)]
    top5 = [t for t in _list(job.get("top5")) if isinstance(t, dict)]
    scores = {str(k): v for k, v in _dict(job.get("score")).items() if _is_number(v)}
    run, image = (_relative(job.get(key), sweep_dir) for key in ("run", "image"))
    report = f"{run.rstrip('/')}/{REPORT}" if run and (sweep_dir / run / REPORT).is_file() else None
    target_indices = {t.get("index") for t in targets}
    top = top5[0] if top5 else None
    p_target = next((t.get("p") for t in top5 if t.get("index") in target_indices), None)
    return {
        "id": str(job.get("id", "?")),
        "settings": {str(k): v for k, v in _dict(job.get("values")).items()},
        "image": image, "report": report, "run": run,
        "targets": [str(t.get("name", t.get("index"))) for t in targets],
        "top1": str(top.get("name")) if top else None,
        "top1_p": top.get("p") if top else None,
        "top1_hit": bool(top) and top.get("index") in target_indices,
        "p_target": p_target,
        "status": str(job.get("status", "pending")),
        "scores": scores,
        "classes": " ".join(str(t.get("name", "")).lower() for t in targets),
    }


def render_atlas(sweep_dir: Path) -> str:
    """The atlas of the sweep in ``sweep_dir`` (its sweep.json) as HTML text."""
    from pipeline_core import __version__

    sweep = _read_json(sweep_dir / SWEEP)
    if not isinstance(sweep, dict):
        raise ValueError(f"{sweep_dir / SWEEP} is missing or not a sweep record")
    jobs = [_job(j, sweep_dir) for j in _list(sweep.get("jobs")) if isinstance(j, dict)]
    judges = sorted({label for j in jobs for label in j["scores"]})
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j["status"]] = counts.get(j["status"], 0) + 1
    classes = sorted({name for j in jobs for name in j["targets"]})
    return _environment().get_template("atlas.html.j2").render(
        name=str(sweep.get("name") or sweep_dir.name), recipe=str(sweep.get("recipe") or ""),
        axes={str(k): _list(v) for k, v in _dict(sweep.get("axes")).items()},
        options=[str(o) for o in _list(sweep.get("options"))],
        total=sweep.get("total") if _is_number(sweep.get("total")) else len(jobs),
        jobs=jobs, judges=judges, counts=counts, classes=classes,
        written=time.strftime("%Y-%m-%d %H:%M:%S"), version=__version__,
    )


def write_atlas(sweep_dir: Path) -> Path:
    """Write ``sweep_dir``/atlas.html (atomically) from its sweep.json; its path."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / ATLAS
    write_atomically(path, render_atlas(sweep_dir).encode("utf-8"))
    return path


def refresh(folder: Path) -> Path:
    """Rebuild the page of ``folder``: the atlas of a sweep (sweep.json), else the run's report."""
    folder = Path(folder)
    if (folder / SWEEP).is_file():
        return write_atlas(folder)
    return write_report(folder)


def safe_refresh(folder: Path) -> str | None:
    """:func:`refresh`, with a one-line warning instead of any exception (after ``pipeline evaluate``)."""
    try:
        refresh(folder)
    except Exception as exc:  # noqa: BLE001 - the evaluation is written; only its page is missing
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"the page in {folder} could not be rebuilt ({type(exc).__name__}: {first})"
    return None
