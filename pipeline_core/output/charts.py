"""The report's curves: matplotlib figures rendered to SVG text, to inline in the page.

matplotlib is imported here only, and only when a report is written, so the command's
start-up never pays for it. Figures are made with the object API (``Figure``), never
pyplot: nothing global changes (no backend switch, no figure manager), so a report written
in the middle of a run leaves the process as it was. Each SVG gets its own hash salt: the
ids matplotlib gives clip paths and markers then differ between the figures of one page and
stay the same between two writes of the same data.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

#: a chart's size in inches (at 100 dpi)
_WIDE, _TALL = 6.4, 2.3


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan for v in values]


def _svg(fig: Any, salt: str) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.find("<svg"):]  # inline in HTML: no XML declaration or doctype


def _figure(title: str, ylabel: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    # fixed margins: a layout engine ("constrained", "tight") draws the figure twice or more,
    # and a report is written at the end of every run
    fig = Figure(figsize=(_WIDE, _TALL), dpi=100)
    fig.subplots_adjust(left=0.12, right=0.98, top=0.88, bottom=0.2)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel("iteration", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    return fig, ax


def line_chart(title: str, ylabel: str, xs: Sequence[int], series: Sequence[tuple[str, Sequence[Any]]],
               salt: str, ylim: tuple[float, float] | None = None, log: bool = False) -> str:
    """One chart of several named series over the iterations, as SVG text.

    The title and the legend hold text from the user (a class name, an objective's label): it is
    drawn as text, never parsed as mathtext (a name with ``$...$`` in it), so no name can fail
    the chart or change what it shows."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        return _line_chart(title, ylabel, xs, series, salt, ylim, log)


def _line_chart(title: str, ylabel: str, xs: Sequence[int], series: Sequence[tuple[str, Sequence[Any]]],
                salt: str, ylim: tuple[float, float] | None, log: bool) -> str:
    fig, ax = _figure(title, ylabel)
    for name, values in series:
        ys = _finite(values)
        ax.plot(xs[: len(ys)], ys, linewidth=1.2, marker="." if len(ys) < 30 else None, label=name)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if log and all(v > 0 for _, vs in series for v in _finite(vs) if not math.isnan(v)):
        ax.set_yscale("log")
    if 1 < len(series) <= 12:
        ax.legend(fontsize=7, loc="best", frameon=False, ncols=1 + len(series) // 5)
    return _svg(fig, salt)


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics line as the charts read it: lists of numbers where lists are expected (a file
    edited or cut by hand leaves a gap in a curve, never a failed page)."""
    def numbers(v: Any) -> list[Any]:
        return [x if isinstance(x, (int, float)) and not isinstance(x, bool) else None for x in v] \
            if isinstance(v, list) else []

    terms = row.get("terms") if isinstance(row.get("terms"), dict) else {}
    out = {"iteration": row["iteration"], "loss": numbers([row.get("loss")])[0],
           "terms": {str(k): numbers(v) for k, v in terms.items()}}
    if isinstance(row.get("p_target"), list):
        out["p_target"] = numbers(row["p_target"])
    return out


def _image_label(names: Sequence[str], i: int) -> str:
    """A legend entry: the image's index first, since several images often share a target."""
    return f"{i}: {names[i]}" if i < len(names) else f"image {i}"


def metric_charts(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> list[dict[str, str]]:
    """The report's curves from metrics.jsonl: total loss, each objective (summed over the
    batch, with each image's own line when the batch is small), the target's probability."""
    rows = [_clean(r) for r in rows]
    if not rows:
        return []
    xs = [int(r["iteration"]) for r in rows]
    charts = [{"title": "total loss", "svg": line_chart("total loss (sum over the batch)", "loss", xs,
                                                          [("loss", [r.get("loss") for r in rows])], "loss")}]
    labels: list[str] = []
    for r in rows:
        for label in r.get("terms") or {}:
            if label not in labels:
                labels.append(label)
    for k, label in enumerate(labels):
        per_image = [(r.get("terms") or {}).get(label) for r in rows]
        batch = max((len(v) for v in per_image if v), default=0)
        series = [("sum", [sum(x for x in v if x is not None) if v else None for v in per_image])]
        if 1 < batch <= 8:
            series += [(_image_label(names, i), [v[i] if v and i < len(v) else None for v in per_image])
                       for i in range(batch)]
        charts.append({"title": label, "svg": line_chart(label, "loss", xs, series, f"term-{k}")})
    if any("p_target" in r for r in rows):
        batch = max(len(r.get("p_target") or []) for r in rows)
        series = [(_image_label(names, i),
                   [(r.get("p_target") or [None] * batch)[i] if i < len(r.get("p_target") or []) else None
                    for r in rows]) for i in range(min(batch, 12))]
        charts.append({"title": "target probability",
                       "svg": line_chart("the target's probability (the generating model, what it saw)", "p(target)",
                                         xs, series, "p-target", ylim=(0.0, 1.0))})
    return charts
