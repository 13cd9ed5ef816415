"""Contact sheets: a sweep's images as a few pictures one can look at side by side.

Per value of each axis, one grid of every finished job with that value, each thumbnail
captioned with the job's other values (``contact/seed/0.png``: every class at seed 0), so
comparing two values is comparing two pictures. An axis whose values each hold a single job
(the only axis of a sweep) gets no sheets of its own: a sheet of one image shows nothing
that the overview pages (``contact/all-000.png``, 100 jobs a page) do not. Pillow draws them;
the same images give the same bytes.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Sequence

from pipeline_core.run.confine import inside
from pipeline_core.run.record import atomic_write_bytes

THUMB = 128
CAPTION = 14
PAGE = 100
#: sheets larger than this are split into pages
MAX_PER_SHEET = 400


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:60] or "value"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def draw_sheet(items: Sequence[tuple[Path, str]], columns: int | None = None) -> bytes:
    """A grid of (image file, caption) as PNG bytes."""
    from PIL import Image, ImageDraw, ImageFont

    n = len(items)
    cols = columns or max(1, min(10, int(n ** 0.5 + 0.999)))
    rows = (n + cols - 1) // cols
    pad = 2
    cell_h = THUMB + CAPTION
    sheet = Image.new("RGB", (pad + cols * (THUMB + pad), pad + rows * (cell_h + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (path, caption) in enumerate(items):
        x = pad + (i % cols) * (THUMB + pad)
        y = pad + (i // cols) * (cell_h + pad)
        try:
            with Image.open(path) as im:
                thumb = im.convert("RGB").resize((THUMB, THUMB), Image.Resampling.LANCZOS)
        except (OSError, ValueError):
            thumb = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
        sheet.paste(thumb, (x, y))
        text = caption
        while text and draw.textlength(text, font=font) > THUMB - 2:
            text = text[:-1]
        draw.text((x + 1, y + THUMB + 1), text, fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _caption(job: dict[str, Any], skip: str | None) -> str:
    parts = []
    targets = job.get("targets") or []
    values = job.get("values") or {}
    for key, value in values.items():
        if key == skip:
            continue
        if key.endswith(".target") and targets:
            parts.append(str(targets[0].get("name")))
        else:
            parts.append(f"{key.rsplit('.', 1)[-1]}={_text(value)}")
    if not parts and targets:
        parts.append(str(targets[0].get("name")))
    return " ".join(parts) or str(job.get("id"))


def write_sheets(sweep_dir: Path, index: dict[str, Any]) -> dict[str, Any]:
    """Every sheet of the index's finished jobs; returns where they are (for sweep.json)."""
    done = [j for j in index.get("jobs", []) if j.get("status") == "completed" and j.get("image")]
    out: dict[str, Any] = {"overview": [], "axes": {}}
    for page, start in enumerate(range(0, len(done), PAGE)):
        items = [(sweep_dir / j["image"], _caption(j, None)) for j in done[start:start + PAGE]]
        rel = f"contact/all-{page:03d}.png"
        atomic_write_bytes(inside(sweep_dir, rel), draw_sheet(items))
        out["overview"].append(rel)
    for key, values in (index.get("axes") or {}).items():
        per_value = len(index.get("jobs", [])) // max(len(values), 1)
        if len(values) < 2 or per_value < 2:
            continue
        short = key.rsplit(".", 1)[-1]
        sheets: dict[str, str] = {}
        for value in values:
            items = [(sweep_dir / j["image"], _caption(j, key)) for j in done
                     if j.get("values", {}).get(key) == value][:MAX_PER_SHEET]
            if not items:
                continue
            rel = f"contact/{_slug(short)}/{_slug(_text(value))}.png"
            atomic_write_bytes(inside(sweep_dir, rel), draw_sheet(items))
            sheets[_text(value)] = rel
        out["axes"][key] = sheets
    return out
