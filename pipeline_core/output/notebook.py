"""A run seen from a notebook: its progress in the cell, its output shown inline.

In Jupyter the progress is a rich progress bar rendered to HTML and redrawn in place in the
cell's output (an IPython display handle), at the rate the loop already reads its numbers
(:class:`pipeline_core.run.progress.NotebookProgress`, beside the terminal's reporters); on a
terminal the command's own bar is used. :func:`result_html` is what
:class:`pipeline_core.api.RunOutput` shows: the status, the grid, the video and a link to the report.
"""

from __future__ import annotations

import base64
import html
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

#: a video larger than this is linked rather than embedded in the notebook
EMBED_VIDEO_BYTES = 8 * 2**20


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where IPython's display reaches the cell's output)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def final_images(result: Any, engine: Any) -> tuple[torch.Tensor | None, list[str | None], list[float | None]]:
    """(the final images on the CPU, each one's target name, its final probability) from the run
    (the engine's image where it got that far, else the PNGs it wrote)."""
    entries = result.record.get("images", []) if isinstance(result.record, dict) else []
    images = None
    ctx = getattr(engine, "ctx", None)
    if ctx is not None and ctx.param is not None:
        try:
            with torch.no_grad():
                images = ctx.param.image().detach().float().clamp(0, 1).cpu()
        except Exception:  # noqa: BLE001 - the PNGs below are the fallback
            images = None
    if images is None and entries:
        import numpy as np
        from PIL import Image

        pics = []
        for entry in entries:
            with Image.open(Path(result.run_dir) / "images" / entry["file"]) as pic:
                pics.append(torch.from_numpy(np.asarray(pic.convert("RGB")).copy()).permute(2, 0, 1).float() / 255)
        images = torch.stack(pics) if pics else None
    targets: list[str | None] = []
    probs: list[float | None] = []
    for entry in entries:
        aimed = entry.get("targets") or []
        targets.append(aimed[-1].get("name") if aimed else None)
        probs.append(entry.get("target_probability"))
    return images, targets, probs


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short by a kill
            continue
    return rows


def _link(path: Path) -> str:
    """A link a notebook can follow: relative to the notebook's folder where it lies under it."""
    try:
        target = os.path.relpath(path.resolve(), Path.cwd())
    except ValueError:
        target = path.resolve().as_uri()
    if target.startswith(".."):
        target = path.resolve().as_uri()
    return html.escape(target, quote=True)


def result_html(out: Any) -> str:
    """The status line, the grid, the video (embedded when small, else linked) and the report's link."""
    colour = {"completed": "#2a7", "interrupted": "#c80"}.get(out.status, "#c33")
    line = f"<b style='color:{colour}'>{html.escape(out.status)}</b> after {out.iterations_done} iterations"
    if out.message:
        line += f": {html.escape(out.message)}"
    parts = [f"<div>{line} &mdash; <code>{html.escape(str(out.run_dir))}</code></div>"]
    guesses = [f"{html.escape(str(t))} {p:.2f}" for t, p in zip(out.targets, out.probabilities)
               if t is not None and p is not None]
    if guesses:
        parts.append("<div>p(target): " + ", ".join(guesses) + "</div>")
    if out.grid is not None:
        data = base64.b64encode(out.grid.read_bytes()).decode()
        parts.append(f"<img src='data:image/png;base64,{data}' style='max-width:100%'/>")
    video = out.video
    if video is not None and video.stat().st_size <= EMBED_VIDEO_BYTES:
        data = base64.b64encode(video.read_bytes()).decode()
        parts.append(f"<video controls loop style='max-width:100%' src='data:video/mp4;base64,{data}'></video>")
    links = [f"<a href='{_link(p)}' target='_blank'>{name}</a>" for name, p in
             (("report", out.report), ("video", video), ("run.json", out.run_json)) if p is not None]
    if links:
        parts.append("<div>" + " &middot; ".join(links) + "</div>")
    return "\n".join(parts)

