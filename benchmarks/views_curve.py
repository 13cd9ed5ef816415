"""Cost against quality: how many views per iteration, how many iterations?

Showing the model K crops of every image per iteration (the ``crops`` step) multiplies the
cost of an iteration by about K. Is that better spent than on K times as many iterations with
one view? This script answers it on held-out classes: it runs ``benchmarks/quality.py`` once
per point (a recipe variant: ``crops.views`` and ``iterations``), then draws held-out top-5
and top-1 of every independent judge against image-iterations (one model pass on one 224 px
view of one image) into ``docs/images/views_curve.png`` and writes the table to
``benchmarks/results/views_curve.json``.

    python benchmarks/views_curve.py                       # K = 1, 2, 4, 8 at 128 iterations; K = 1 at 512
    python benchmarks/views_curve.py --plot-only           # redraw from the points already measured
    python benchmarks/views_curve.py --points 1x128 4x128 --classes 4 --starts 1

Every point is its own quality.py measurement (``quality_views_KxN.json`` in results/, run
folders under runs/quality/); a point already measured with the same classes and starts is
reused, so the script can be stopped and started again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_POINTS = ["1x128", "2x128", "4x128", "8x128", "1x512"]


def crops_index(recipe: Path) -> int:
    steps = yaml.safe_load(recipe.read_text(encoding="utf-8"))["steps"]
    for i, s in enumerate(steps):
        if isinstance(s, dict) and s.get("step") == "crops":
            return i
    sys.exit(f"views_curve.py: {recipe} has no crops step")


def point_json(views: int, iterations: int) -> Path:
    return RESULTS / f"quality_views_{views}x{iterations}.json"


def measure(recipe: Path, views: int, iterations: int, classes: int, starts: int, threads: int) -> Path:
    out = point_json(views, iterations)
    if out.exists():
        done = json.loads(out.read_text(encoding="utf-8"))
        if len(done["classes"]) == classes and done["starts"] == starts and done["threads"] == threads:
            print(f"{views}x{iterations}: measured already ({out.name})", flush=True)
            return out
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--recipe", str(recipe),
           "--classes", str(classes), "--starts", str(starts), "--iterations", str(iterations),
           "--threads", str(threads), "--set", f"steps.{crops_index(recipe)}.views={views}",
           "--name", f"views_{views}x{iterations}", "--json", str(out), "--reuse"]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out


def table(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        views = int(path.stem.split("_")[-1].split("x")[0])
        row = {"views": views, "iterations": data["iterations"],
               "image_iterations_per_image": data["image_iterations"] // (len(data["classes"]) * data["starts"]),
               "wall_seconds": data["wall_seconds"], "images": len(data["classes"]) * data["starts"],
               "luminance_std": data["tone"]["final_images"]["luminance_std"], "judges": {},
               # the point's own origin, as quality.py recorded it (older points did not)
               "commit": data.get("commit", "not recorded"), "torch": data.get("torch", "not recorded")}
        for judge in data["judges"] + ["mean of judges"]:
            overall = data["scores"][judge]["overall"]
            row["judges"][judge] = {"top1": overall["top1"], "top5": overall["top5"]}
        rows.append(row)
    return sorted(rows, key=lambda r: (r["image_iterations_per_image"], r["views"]))


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    judges = list(rows[0]["judges"])
    colours = dict(zip(judges, ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red"]))
    colours["mean of judges"] = "black"
    base = min(r["iterations"] for r in rows)
    series = {"K views": [r for r in rows if r["iterations"] == base],  # more views, the same iterations
              "1 view, more iterations": [r for r in rows if r["views"] == 1]}
    for ax, metric in zip(axes, ("top5", "top1")):
        for judge in judges:
            mean = judge == "mean of judges"
            for kind, pts in series.items():
                if len(pts) < 2:
                    continue
                ax.plot([r["image_iterations_per_image"] for r in pts], [r["judges"][judge][metric] for r in pts],
                        label=f"{judge}, {kind}", color=colours.get(judge), linestyle="-" if kind == "K views" else ":",
                        marker="o" if kind == "K views" else "s", linewidth=2.5 if mean else 1, alpha=1 if mean else 0.6)
        for r in rows:
            ax.annotate(f"K={r['views']}, {r['iterations']} it", (r["image_iterations_per_image"],
                        r["judges"]["mean of judges"][metric]), textcoords="offset points", xytext=(4, -12), fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("model passes per image (views x iterations)")
        ax.set_title(f"held-out classes, {metric.replace('top', 'top-')} of independent judges")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of images")
    axes[1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"written: {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "best_class_maco.yaml")
    ap.add_argument("--points", nargs="+", default=DEFAULT_POINTS, metavar="VIEWSxITERATIONS")
    ap.add_argument("--classes", type=int, default=8, help="held-out classes (a prefix of quality.py's list)")
    ap.add_argument("--starts", type=int, default=1, help="seeds per class")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "views_curve.png")
    args = ap.parse_args(argv)
    points = [tuple(int(v) for v in p.split("x")) for p in args.points]
    if args.plot_only:
        paths = [point_json(k, n) for k, n in points if point_json(k, n).exists()]
    else:
        paths = [measure(args.recipe, k, n, args.classes, args.starts, args.threads) for k, n in points]
    rows = table(paths)
    (RESULTS / "views_curve.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    for r in rows:
        mean = r["judges"]["mean of judges"]
        print(f"K={r['views']:<2} {r['iterations']:>4} it  {r['image_iterations_per_image']:>5} passes/image  "
              f"top-5 {mean['top5']:.2f}  top-1 {mean['top1']:.2f}  "
              + (f"{r['wall_seconds']:.0f} s" if r["wall_seconds"] else "(from a larger run)"))
    plot(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
