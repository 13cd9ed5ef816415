#!/usr/bin/env python
"""The engine against a hand-written PyTorch loop, in one process: the figures in docs/performance.md.

CPU (the real MobileNetV2 from ../shared/models, batch 4, 224 px; about two minutes)::

    python benchmarks/bench.py

GPU (InceptionV3 at 299 px with random weights, batch 1, 16 and 64, fp32 and bf16)::

    python benchmarks/bench.py --suite gpu [--peak-tflops 989.4]

Both print image-iterations per second of the engine (video and the real progress bar on)
and of a hand-written loop doing the same arithmetic, their ratio, the time spent on frames,
peak memory, and whether the two loops' final images agree. Rounds alternate between the
two loops and the medians are reported, so a change in the machine's load during the run
does not favour either. ``--json FILE`` keeps every figure.

The hand-written loop is deliberately *not* built from the engine's steps (``pipeline bench``
does that, for any recipe): it is the plain PyTorch a researcher would write for the
recipes here (noise, Gaussian blur on a schedule, the L1 objective, a normalised gradient
step), reading only the recipe's numbers. That makes the comparison a check of the engine's
whole stack, and the equal final images a check that both did the same maths.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2.functional as TF
import yaml

from pipeline_core.commands.bench import BenchReport, bench
from pipeline_core.commands.measure import Measurement, MemoryWatch, synchronize
from pipeline_core.context import step_seed
from pipeline_core.run.device import pick_device
from pipeline_core.output.frames import to_uint8
from pipeline_core.recipe.loader import Recipe
from pipeline_core.registry import Registry

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by its path (the tests), not run as a script
    sys.path.append(str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

HERE = Path(__file__).resolve().parent
CPU_RECIPE = HERE / "mobilenet_cpu.yaml"

#: forward plus backward to the input, per image, for InceptionV3 at 299 px
INCEPTION_GFLOP_PER_IMAGE_ITERATION = 22.85
#: NVIDIA H100 SXM, dense bf16 tensor-core peak (the data sheet's 1979 is with 2:4 sparsity)
H100_BF16_PEAK_TFLOPS = 989.4


# -- the hand-written loop -----------------------------------------------------------------------


@dataclass
class LoopSpec:
    """The numbers of a recipe of the form: init-noise, [blur], L1-loss, gradient-step."""

    arch: str
    weights: Path
    kwargs: dict[str, Any]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int | None
    batch: int
    noise_seed: int
    noise_shape: tuple[int, int]
    noise_uniform: bool
    scale: float
    offset: float
    blur: tuple[int, float, int, int, int] | None  # kernel, sigma, start, stop, every
    targets: list[int]
    C: float
    lam: float
    lr: float
    normalize: str
    clamp: bool
    precision: str
    channels_last: bool
    compile: bool
    cudnn_benchmark: bool

    @classmethod
    def of(cls, recipe: Recipe) -> "LoopSpec":
        names = [s.cls.name for s in recipe.steps]
        if names not in (["init-noise", "blur", "L1-loss", "gradient-step"], ["init-noise", "L1-loss", "gradient-step"]):
            raise SystemExit(f"the hand-written loop does init-noise, [blur], L1-loss, gradient-step; this recipe has "
                             f"{', '.join(names)}. Use 'pipeline bench RECIPE' for any recipe.")
        by = {s.cls.name: s for s in recipe.steps}
        init, loss, update = by["init-noise"], by["L1-loss"], by["gradient-step"]
        if recipe.model_spec.weights is None:
            raise SystemExit("the hand-written loop loads model.weights; give a state-dict file")
        for name in ("L1-loss", "gradient-step"):
            s = by[name].schedule
            if (s.start, s.stop, s.every) != (0, recipe.plan.iterations, 1):
                raise SystemExit(f"the hand-written loop runs {name} at every iteration; remove its schedule")
        if loss.params.head != "logits":
            raise SystemExit("the hand-written loop reads the logits head only")
        blur = None
        if "blur" in by:
            b = by["blur"]
            if b.params.on != "image":
                raise SystemExit("the hand-written loop blurs the stored image (on: image)")
            k = b.params.kernel
            sigma = b.params.sigma or 0.3 * ((k - 1) * 0.5 - 1) + 0.8
            blur = (k, sigma, b.schedule.start, b.schedule.stop, b.schedule.every)
        plan, info, perf = recipe.plan, recipe.model_info, recipe.model.performance
        bound = {s.index: s for s in recipe.steps_bound}
        return cls(
            arch=recipe.model_spec.name, weights=recipe.model_spec.weights,
            kwargs=_builder_kwargs(recipe), mean=tuple(info.mean), std=tuple(info.std), size=info.size,
            batch=plan.batch, noise_seed=step_seed(plan.seed, init.index), noise_shape=bound[init.index].size,
            noise_uniform=init.params.distribution == "uniform", scale=init.params.scale, offset=init.params.offset,
            blur=blur, targets=plan.per_image(loss.params.target), C=loss.params.C, lam=loss.params.lam,
            lr=update.params.lr, normalize=update.params.normalize, clamp=update.params.clamp,
            precision=perf.precision, channels_last=perf.channels_last, compile=perf.compile,
            cudnn_benchmark=perf.cudnn_benchmark and not perf.deterministic,
        )


def _builder_kwargs(recipe: Recipe) -> dict[str, Any]:
    """The torchvision builder's arguments for a local state dict (as the model plugin passes them)."""
    kwargs = dict(recipe.model_spec.kwargs)
    if recipe.model_spec.categories is not None:
        kwargs.setdefault("num_classes", len(recipe.model_spec.categories))
    if recipe.model_spec.name in ("inception_v3", "googlenet"):  # keep the auxiliary heads so the file loads
        kwargs.setdefault("aux_logits", True)
        kwargs.setdefault("init_weights", False)
    return kwargs


def hand_written_loop(recipe: Recipe, registry: Registry, device: str | None = None) -> tuple[Measurement, np.ndarray]:
    """Plain PyTorch: the loop a researcher writes, with the recipe's numbers. Timed like the bare loop."""
    spec = LoopSpec.of(recipe)
    dev = pick_device(device or recipe.model.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = spec.cudnn_benchmark
    model = torchvision.models.get_model(spec.arch, weights=None, **spec.kwargs)
    model.load_state_dict(torch.load(spec.weights, map_location="cpu", weights_only=True))
    model = model.to(dev).eval().requires_grad_(False)
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if spec.compile else model

    g = torch.Generator().manual_seed(spec.noise_seed)
    shape = (spec.batch, 3, *spec.noise_shape)
    noise = torch.rand(shape, generator=g) if spec.noise_uniform else torch.randn(shape, generator=g)
    x = (noise * spec.scale + spec.offset).to(dev, torch.float32).requires_grad_(True)
    mean = torch.tensor(spec.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=dev).view(1, 3, 1, 1)
    target = torch.tensor(spec.targets, device=dev).view(-1, 1)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.precision]
    resize = spec.size is not None and tuple(spec.noise_shape) != (spec.size, spec.size)
    iterations = recipe.plan.iterations

    with MemoryWatch(dev) as mem:
        synchronize(dev)
        t0, cpu0 = time.perf_counter(), time.process_time()
        for it in range(iterations):
            if spec.blur is not None:
                k, sigma, start, stop, every = spec.blur
                if start <= it < stop and (it - start) % every == 0:
                    with torch.no_grad():
                        x.copy_(TF.gaussian_blur(x.detach(), [k, k], [sigma, sigma]))
            v = F.interpolate(x, size=(spec.size, spec.size), mode="bilinear", align_corners=False) if resize else x
            v = (v - mean) / std
            if spec.channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
                logits = forward(v)
            logits = logits.float()
            loss = (spec.C - logits.gather(1, target).squeeze(1)).abs()
            if spec.lam:
                loss = loss + spec.lam * x.abs().flatten(1).sum(1)
            (grad,) = torch.autograd.grad(loss.sum(), [x])
            with torch.no_grad():
                if spec.normalize != "none":
                    flat = grad.flatten(1)
                    s = flat.std(dim=1) if spec.normalize == "std" else flat.abs().amax(dim=1)
                    grad = grad / (s.view(-1, 1, 1, 1) + 1e-12)
                x.sub_(grad, alpha=spec.lr)
                if spec.clamp:
                    x.clamp_(0, 1)
        synchronize(dev)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    final = to_uint8(x.detach().float().clamp(0, 1))
    return (Measurement(kind="bare", iterations=iterations, batch=spec.batch, seconds=seconds, cpu_seconds=round(cpu, 3),
                        peak_rss_bytes=mem.peak, rss_before_bytes=mem.before, rss_exact=mem.exact,
                        cuda_max_allocated_bytes=mem.cuda_peak), final)


# -- suites ---------------------------------------------------------------------------------------


def registry() -> Registry:
    from pipeline_core.host.manager import build_registry

    return build_registry()


def cpu_suite(args: argparse.Namespace) -> dict[str, Any]:
    reg = registry()
    report = bench(args.recipe, reg, args.set, iterations=args.iterations, warmup=args.warmup, rounds=args.rounds,
                   device=args.device, bare=hand_written_loop, bare_label="hand-written loop", echo=print)
    print()
    print("\n".join(report.lines()))
    return report.to_dict()


def _inception_weights(folder: Path) -> Path:
    """A random-weights InceptionV3 state dict (seeded): speed does not depend on the weights' values."""
    path = folder / "inception_v3_random.pth"
    torch.manual_seed(0)
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(model.state_dict(), path)
    return path


def gpu_recipe(folder: Path, weights: Path, batch: int, precision: str, iterations: int, frame_every: int,
               tile: int, device: str = "cuda") -> Path:
    fast = precision != "fp32"
    recipe = {
        "description": f"InceptionV3 299 px, random weights, batch {batch}, {precision} (speed benchmark)",
        "iterations": iterations, "seed": 0, "device": device, "batch": batch,
        "model": {"name": "inception_v3", "weights": str(weights), "size": 299},
        "steps": [
            {"step": "init-noise", "scale": 0.04, "offset": 0.5, "size": 299},
            {"step": "blur", "kernel": 3, "sigma": 0.8, "until": 0.75},
            {"step": "L1-loss", "target": 1, "C": 200, "lambda": 0.001},
            {"step": "gradient-step", "lr": 0.15, "normalize": "std"},
        ],
        "output": {"video": True, "frame_every": frame_every, "fps": 25, "tile": tile},
        # the article's code is plain fp32; the fast rows add what a modern GPU wants
        "performance": {"precision": precision, "channels_last": fast, "cudnn_benchmark": fast},
    }
    path = folder / f"inception_b{batch}_{precision}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def gpu_suite(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device or "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--suite gpu needs a CUDA GPU (torch.cuda.is_available() is False here); "
                         "--device cpu runs the same configuration on the CPU, as a smoke test")
    reg = registry()
    peak = args.peak_tflops * 1e12
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pipeline-gpu-bench-") as tmp:
        folder = Path(tmp)
        weights = _inception_weights(folder)
        for batch in args.batches:
            for precision in args.precisions:
                recipe = gpu_recipe(folder, weights, batch, precision, args.iterations, args.frame_every, args.tile,
                                    device)
                print(f"== batch {batch}, {precision}", flush=True)
                report: BenchReport = bench(recipe, reg, args.set, iterations=None, warmup=args.warmup,
                                            rounds=args.rounds, device=device, bare=hand_written_loop,
                                            bare_label="hand-written loop", echo=print)
                print("\n".join(report.lines()), flush=True)
                d = report.to_dict()
                d.update(batch=batch, precision=precision)
                rows.append(d)
    base = next((r["bare_image_iterations_per_second"] for r in rows if r["batch"] == 1 and r["precision"] == "fp32"), None)
    gflop = INCEPTION_GFLOP_PER_IMAGE_ITERATION * 1e9
    print()
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
    print(f"InceptionV3 299 px on {where}; peak taken as {args.peak_tflops} TFLOP/s; "
          f"{INCEPTION_GFLOP_PER_IMAGE_ITERATION} GFLOP per image-iteration; video a frame every {args.frame_every} "
          f"iterations at tile {args.tile} px")
    print(f"{'batch':>5} {'prec':>5} {'hand img-it/s':>14} {'engine img-it/s':>16} {'ratio':>6} "
          f"{'engine % peak':>13} {'x fp32 b1 loop':>15} {'CUDA MiB eng/hand':>18}")
    for r in rows:
        e, b = r["engine_image_iterations_per_second"], r["bare_image_iterations_per_second"]
        r["engine_fraction_of_peak"] = e * gflop / peak
        r["bare_fraction_of_peak"] = b * gflop / peak
        r["engine_speedup_over_fp32_batch1_loop"] = e / base if base else None
        mem = [m for m in (r["rounds_detail"]["engine"][0]["cuda_max_allocated_bytes"],
                           r["rounds_detail"]["bare"][0]["cuda_max_allocated_bytes"])]
        print(f"{r['batch']:>5} {r['precision']:>5} {b:>14.1f} {e:>16.1f} {r['ratio']:>6.3f} "
              f"{100 * r['engine_fraction_of_peak']:>12.1f}% "
              f"{(r['engine_speedup_over_fp32_batch1_loop'] or 0):>14.1f}x "
              f"{(mem[0] or 0) / 2**20:>8.0f}/{(mem[1] or 0) / 2**20:<8.0f}")
    return {"suite": "gpu", "peak_tflops": args.peak_tflops, "gflop_per_image_iteration": INCEPTION_GFLOP_PER_IMAGE_ITERATION,
            "frame_every": args.frame_every, "tile": args.tile, "rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See docs/performance.md for the figures and what limits them.")
    p.add_argument("--suite", choices=("cpu", "gpu"), default="cpu", help="cpu: the MobileNetV2 recipe (default); "
                   "gpu: InceptionV3 299 px, random weights, batch 1/16/64 x fp32/bf16")
    p.add_argument("--recipe", default=str(CPU_RECIPE), help="cpu suite: the recipe (default benchmarks/mobilenet_cpu.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    p.add_argument("--iterations", type=int, default=None,
                   help="iterations per measured run (cpu default: the recipe's; gpu default 50)")
    p.add_argument("--warmup", type=int, default=None, help="iterations of an uncounted first run of each loop "
                   "(cpu default 2, gpu default 10: cuDNN's kernel search)")
    p.add_argument("--rounds", type=int, default=3, help="alternating runs of each loop; medians reported (default 3)")
    p.add_argument("--device", help="override the recipe's device")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64], help="gpu suite: batch sizes")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16", "fp16"),
                   help="gpu suite: precisions (bf16/fp16 rows also use channels_last and cuDNN benchmark)")
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_PEAK_TFLOPS,
                   help=f"gpu suite: the GPU's peak, for the fraction reached (default {H100_BF16_PEAK_TFLOPS}: "
                        "H100 SXM dense bf16; H100 PCIe: 756)")
    p.add_argument("--frame-every", type=int, default=10, help="gpu suite: a video frame every N iterations (default 10)")
    p.add_argument("--tile", type=int, default=128, help="gpu suite: side of each image in the video grid (default 128)")
    p.add_argument("--threads", type=int, help="PyTorch CPU threads (default: PyTorch's, one per core)")
    p.add_argument("--json", metavar="FILE", help="write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.suite == "gpu":
        args.iterations = args.iterations or 50
        args.warmup = 10 if args.warmup is None else args.warmup
        data = gpu_suite(args)
    else:
        args.warmup = 2 if args.warmup is None else args.warmup
        data = cpu_suite(args)
    if args.json:
        Path(args.json).write_text(json.dumps(provenance() | data, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
