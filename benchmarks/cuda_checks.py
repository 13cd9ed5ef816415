#!/usr/bin/env python
"""The CUDA paths, checked for real on a GPU: what the CPU test suite can only mock.

    python benchmarks/cuda_checks.py --weights ../shared/models/mobilenet_v2_imagenet.pth --out runs/cuda

Each check runs the real ``pipeline`` command in a subprocess, as a user would, and reads back
what it wrote:

- ``precision``: ``best_class.yaml`` as a 20-classes x 3-starts sweep (batch 60) on the real
  MobileNetV2, in fp32, bf16 + channels_last, fp16 + channels_last and bf16 + channels_last +
  ``torch.compile``. Each must complete, write a playable MP4 with the expected frames, and
  give images that the generator (scored afresh by ``pipeline evaluate``, fp32) still calls the
  target: mixed precision must not break the optimisation. The loop's speed is reported.
- ``determinism``: ``performance.deterministic: true`` twice on the GPU gives identical PNGs
  (``smooth_blur.yaml``); a recipe with rotated views records that grid_sample's backward has
  no deterministic CUDA kernel instead of claiming to repeat exactly.
- ``oom``: a batch far too large for the card (the model sees the images at 2048 px) fails
  with exit code 1 and the one-line message naming the batch that would fit, and still leaves
  run.json, every image and a playable video.

It prints one line per check and writes ``cuda_checks.json`` into ``--out``. Exit status 1
if any check failed. Needs a CUDA GPU; a few minutes on a data-centre card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by its path (the tests), not run as a script
    sys.path.append(str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BEST = ROOT / "recipes" / "best_class.yaml"


def pipeline(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline_core", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def model_sets(weights: Path) -> list[str]:
    sets = ["model.name=mobilenet_v2", f"model.weights={weights}", "model.mean=[0.5,0.5,0.5]",
            "model.std=[0.5,0.5,0.5]", "model.size=224"]
    return [a for s in sets for a in ("--set", s)]


def batch_sets(batch: int) -> list[str]:
    """The recipe's 20 classes fill batches that are a multiple of 20; smaller ones get the first few."""
    sets = ["--set", f"batch={batch}"]
    if batch % 20:
        sets += ["--set", "L1-loss.target=[goldfish, castle, lion, pizza]"]
        if batch % 4:
            raise SystemExit(f"--batch {batch}: use a multiple of 4 or of 20")
    return sets


def frames_in(video: Path) -> int:
    import imageio_ffmpeg

    return imageio_ffmpeg.count_frames_and_secs(str(video))[0]


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return lines[-1] if lines else ""


def check_precision(name: str, perf: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    out = args.out / f"precision_{name}"
    sets = model_sets(args.weights) + batch_sets(args.batch) + ["--set", f"iterations={args.iterations}",
                                       "--set", "output.frame_every=8", "--set", "output.tile=112"]
    for key, value in perf.items():
        sets += ["--set", f"performance.{key}={value}"]
    proc = pipeline("run", str(BEST), *sets, "--device", args.device, "--quiet", "--force", "--out", str(out))
    row: dict[str, Any] = {"check": f"precision {name}", "exit_code": proc.returncode, "message": last_line(proc)}
    if proc.returncode != 0:
        return {**row, "ok": False}
    record = json.loads((out / "run.json").read_text())
    timings = record["timings"]
    frames = frames_in(out / "video.mp4")
    expected = args.iterations // 8 + 1
    ev = pipeline("evaluate", str(out), "--device", args.device, "--model",
                  f"mobilenet_v2,weights={args.weights},mean=0.5,std=0.5,size=224,label=generator")
    scores = json.loads((out / "evaluation.json").read_text())["models"][0]["overall"] if ev.returncode == 0 else {}
    row.update(status=record["status"], loop_seconds=timings["loop_seconds"],
               image_iterations_per_second=timings["image_iterations_per_second"], frames=frames,
               frames_expected=expected, generator_top1=scores.get("top1"), generator_top5=scores.get("top5"),
               evaluate_message=last_line(ev) if ev.returncode else "")
    row["ok"] = (record["status"] == "completed" and frames == expected and (scores.get("top1") or 0) >= 0.9)
    return row


def png_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted((folder / "images").glob("*.png")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def check_determinism(args: argparse.Namespace) -> dict[str, Any]:
    """Exact repeats where every kernel has a deterministic GPU version; otherwise the record says which has not."""
    digests, codes = [], []
    for i in range(2):
        out = args.out / f"deterministic_{i}"
        proc = pipeline("run", str(ROOT / "recipes" / "smooth_blur.yaml"), *model_sets(args.weights),
                        "--set", "iterations=40", "--set", "output.video=false", "--set", "performance.deterministic=true",
                        "--device", args.device, "--quiet", "--force", "--out", str(out))
        codes.append(proc.returncode)
        digests.append(png_digest(out) if proc.returncode == 0 else f"failed: {last_line(proc)}")
    # rotate and random-scale resample with grid_sample, whose CUDA backward has no deterministic kernel
    out = args.out / "deterministic_views"
    proc = pipeline("run", str(BEST), *model_sets(args.weights), *batch_sets(8), "--set", "iterations=8",
                    "--set", "output.video=false", "--set", "performance.deterministic=true",
                    "--device", args.device, "--quiet", "--force", "--out", str(out))
    warnings = json.loads((out / "run.json").read_text()).get("determinism_warnings", []) if proc.returncode == 0 else None
    named = args.device == "cpu" or any("grid_sampler" in w for w in warnings or [])
    return {"check": "determinism", "exit_codes": codes + [proc.returncode], "digests": digests,
            "determinism_warnings": warnings,
            "ok": codes == [0, 0] and digests[0] == digests[1] and proc.returncode == 0 and named}


def check_oom(args: argparse.Namespace) -> dict[str, Any]:
    """Out of memory in the loop: small stored images, but the model sees them at 2048 px."""
    out = args.out / "oom"
    proc = pipeline("run", str(BEST), *model_sets(args.weights), *batch_sets(args.oom_batch),
                    "--set", "model.size=2048", "--set", "iterations=4", "--set", "output.frame_every=1",
                    "--device", args.device, "--quiet", "--force", "--out", str(out))
    message = last_line(proc)
    record = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    video = out / "video.mp4"
    frames = frames_in(video) if video.is_file() else None
    return {"check": "oom", "exit_code": proc.returncode, "message": message, "status": record.get("status"),
            "frames": frames, "images": len(record.get("images") or []), "stderr_lines": len(proc.stderr.strip().splitlines()),
            "ok": proc.returncode == 1 and "out of memory" in message.lower() and "should fit" in message
            and record.get("status") == "failed" and frames is not None and len(record.get("images") or []) == args.oom_batch}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, required=True, help="the MobileNetV2 state dict (../shared/models)")
    p.add_argument("--out", type=Path, default=Path("runs/cuda_checks"), help="folder for the runs")
    p.add_argument("--batch", type=int, default=60, help="images per precision run (default 60: 20 classes x 3)")
    p.add_argument("--iterations", type=int, default=256, help="iterations per precision run (default 256)")
    p.add_argument("--oom-batch", type=int, default=400, help="a batch the card cannot hold at 2048 px (default 400)")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N; cpu runs the checks small, as a smoke test")
    p.add_argument("--only", nargs="+", choices=("fp32", "bf16", "fp16", "compile", "determinism", "oom"),
                   help="run only these checks")
    args = p.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("cuda_checks: no CUDA GPU here (torch.cuda.is_available() is False); --device cpu for a smoke test",
              file=sys.stderr)
        return 2
    args.weights = args.weights.resolve()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else args.device
    print(f"{where}, torch {torch.__version__}", flush=True)
    configs = {
        "fp32": {"precision": "fp32"},
        "bf16": {"precision": "bf16", "channels_last": "true", "cudnn_benchmark": "true"},
        "fp16": {"precision": "fp16", "channels_last": "true", "cudnn_benchmark": "true"},
        "compile": {"precision": "bf16", "channels_last": "true", "cudnn_benchmark": "true", "compile": "true"},
    }
    wanted = set(args.only or [*configs, "determinism", "oom"])
    rows = []
    for name, perf in configs.items():
        if name in wanted:
            t0 = time.perf_counter()
            rows.append(check_precision(name, perf, args))
            rows[-1]["wall_seconds"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(rows[-1]), flush=True)
    for name, fn in (("determinism", check_determinism), ("oom", check_oom)):
        if name in wanted:
            rows.append(fn(args))
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "cuda_checks.json").write_text(json.dumps(provenance() | {"device": where,
                                                           "torch": torch.__version__, "checks": rows}, indent=2))
    for r in rows:
        print(f"{'PASS' if r['ok'] else 'FAIL'}  {r['check']}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
