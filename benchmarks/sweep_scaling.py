"""Sweep throughput on the CPU: one process against two under torchrun, on the real MobileNetV2.

The same small sweep (CLASSES classes x one seed, BATCH images a run, ITERATIONS iterations of
best_class_maco.yaml's priors at SIZE px) runs three ways, each into a fresh folder:

- one process with one thread (the unit the others are compared with),
- one process with two threads (what a single ``pipeline sweep`` gets from two cores),
- ``torchrun --nproc-per-node 2``, one thread each (the sweep's batches shared by two ranks).

For each: the wall time of the whole command (start-up included, as a user waits for it), the
jobs per minute that sweep.json's throughput records per rank and in total, and whether the
PNG bytes equal those of the one-thread process (they must for the two-rank run; with two
threads a CPU sums in another order, so bytes may differ there). Usage::

    nice python benchmarks/sweep_scaling.py [--classes 8] [--json benchmarks/results/sweep_scaling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by its path (the tests), not run as a script
    sys.path.append(str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = Path(os.environ.get("PIPELINE_MOBILENET", ROOT.parent / "shared" / "models" / "mobilenet_v2_imagenet.pth"))


def sweep_files(folder: Path, classes: int, batch: int, iterations: int, size: int) -> Path:
    (folder / "sweep.yaml").write_text(
        f"name: scaling\nrecipe: {ROOT / 'recipes' / 'best_class_maco.yaml'}\n"
        f"axes:\n  steps.3.target: 0-{classes - 1}\nbatch: {batch}\n")
    return folder / "sweep.yaml"


def run(kind: str, file: Path, out: Path, sets: list[str]) -> dict:
    threads = "2" if kind == "1 process x 2 threads" else "1"
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    prefix = [sys.executable]
    if kind.startswith("torchrun"):
        prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*prefix, "-m", "pipeline_core", "sweep", str(file), "--out", str(out), "--quiet",
               *[x for s in [*sets, f"performance.threads={threads}"] for x in ("--set", s)]]
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    index = json.loads((out / "sweep.json").read_text())
    tp = index["throughput"]
    return {"kind": kind, "wall_seconds": round(wall, 2), "jobs": index["total"],
            "jobs_per_minute_wall": round(index["total"] / wall * 60, 2),
            "jobs_per_minute_in_runs": tp["jobs_per_minute"],
            "ranks": [{"rank": r["rank"], "jobs": r["jobs_run"], "jobs_per_minute": r["jobs_per_minute"]}
                      for r in tp["ranks"]],
            "images": {j["id"]: (out / j["image"]).read_bytes() for j in index["jobs"]}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iterations", type=int, default=24)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if not MODEL.is_file():
        raise SystemExit(f"the MobileNetV2 weights are not at {MODEL} (set PIPELINE_MOBILENET)")
    sets = [f"model={{name: mobilenet_v2, weights: {MODEL}, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], "
            f"size: {args.size}}}", f"steps.0.size={args.size}", f"iterations={args.iterations}", "device=cpu",
            "output.video=false"]
    results = []
    with tempfile.TemporaryDirectory(prefix="sweep-scaling-") as tmp:
        file = sweep_files(Path(tmp), args.classes, args.batch, args.iterations, args.size)
        for i, kind in enumerate(["1 process x 1 thread", "1 process x 2 threads", "torchrun 2 processes x 1 thread"]):
            results.append(run(kind, file, Path(tmp) / f"out{i}", sets))
    reference = results[0].pop("images")
    for r in results[1:]:
        r["same_png_bytes_as_1x1"] = r.pop("images") == reference
    base = results[0]["jobs_per_minute_wall"]
    print(f"| how | wall s | jobs/min (wall) | jobs/min in runs, per rank | speed-up (wall) | same bytes |")
    print("|---|---:|---:|---|---:|---|")
    for r in results:
        ranks = ", ".join(f"rank {x['rank']}: {x['jobs_per_minute']}" for x in r["ranks"])
        same = r.get("same_png_bytes_as_1x1", "(reference)")
        print(f"| {r['kind']} | {r['wall_seconds']} | {r['jobs_per_minute_wall']} | {ranks} | "
              f"{r['jobs_per_minute_wall'] / base:.2f}x | {same} |")
    if args.json:
        record = provenance() | {"settings": vars(args) | {"json": str(args.json)}, "results": results}
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
