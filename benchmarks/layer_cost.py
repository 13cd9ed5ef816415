"""What hooking a layer costs: one recipe with a ``channel`` objective against the same recipe
with ``L1-loss``, alternated in one process.

A class objective reads the logits, which the forward pass makes anyway; a layer objective
adds a forward hook on one module, keeps that module's output for the iteration and reads one
channel of it. Everything else is the same: the model, the image, the update, the seed. The
two variants run in turn (L1, channel, L1, channel, ...) so drifts in the machine's load hit
both alike; the medians of the loop's own clock (``loop_seconds`` in run.json) are compared.

    python benchmarks/layer_cost.py                        # the real MobileNetV2 from ../shared/models
    python benchmarks/layer_cost.py --rounds 5 --batch 4 --size 224 --json benchmarks/results/layer_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by its path (the tests), not run as a script
    sys.path.append(str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MOBILENET = ROOT.parent / "shared" / "models" / "mobilenet_v2_imagenet.pth"


def recipe(objective: dict, iterations: int, batch: int, size: int, weights: Path, threads: int) -> dict:
    return {
        "iterations": iterations,
        "seed": 0,
        "batch": batch,
        "device": "cpu",
        "model": {"name": "mobilenet_v2", "weights": str(weights), "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                  "size": size},
        "performance": {"threads": threads},
        "steps": [
            {"step": "init-noise", "scale": 0.04, "offset": 0.5, "size": size},
            objective,
            {"step": "gradient-step", "lr": 0.05, "normalize": "std"},
        ],
        "output": {"video": False},
    }


VARIANTS = {
    "L1-loss": {"step": "L1-loss", "target": "volcano"},
    "channel": {"step": "channel", "layer": "features.14.conv.0", "channel": 7},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="runs of each variant, alternating (default 5)")
    ap.add_argument("--iterations", type=int, default=20, help="iterations per run (default 20)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1, as on a shared CPU)")
    ap.add_argument("--weights", type=Path, default=MOBILENET)
    ap.add_argument("--json", type=Path, help="also write every figure to this file")
    args = ap.parse_args()

    from pipeline_core.testing import installed_registry, run_recipe_dict

    registry = installed_registry()
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="layer-cost-") as tmp:
        # one uncounted run of each first: the first model build and the allocator's warm-up
        for rnd in range(-1, args.rounds):
            for name, objective in VARIANTS.items():
                spec = recipe(objective, args.iterations, args.batch, args.size, args.weights, args.threads)
                result = run_recipe_dict(spec, Path(tmp) / f"{name}-{rnd + 1}", registry=registry)
                loop = json.loads((result.run_dir / "run.json").read_text())["timings"]["loop_seconds"]
                if rnd >= 0:
                    seconds[name].append(loop)
                print(f"round {rnd + 1 if rnd >= 0 else 'warm-up'}  {name:8s}  {loop:.3f} s", flush=True)
    med = {name: statistics.median(v) for name, v in seconds.items()}
    ratio = med["channel"] / med["L1-loss"]
    per_it = {name: 1000 * m / args.iterations for name, m in med.items()}
    print(f"median loop time over {args.rounds} rounds of {args.iterations} iterations, batch {args.batch} at "
          f"{args.size} px, {args.threads} thread(s):")
    for name in VARIANTS:
        print(f"  {name:8s}  {med[name]:.3f} s  ({per_it[name]:.1f} ms an iteration)")
    print(f"  channel / L1-loss = {ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps(provenance() | {
            "rounds": args.rounds, "iterations": args.iterations, "batch": args.batch,
            "size": args.size, "threads": args.threads, "loop_seconds": seconds,
            "median_seconds": med, "ratio_channel_over_l1": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
