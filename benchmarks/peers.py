"""Class images from other feature-visualisation tools, saved as a run folder `pipeline evaluate` reads.

Peers are never dependencies of the product: this file runs in a separate environment
(see benchmarks/README.md) and is called by benchmarks/quality.py with ``--peer``. It makes the
same images as a `pipeline run` of a class recipe would, for comparison on the same generator
(the MobileNetV2 state dict from ../shared/models, preprocessing mean = std = 0.5, 224 px), the
same classes, seeds and budget, and writes::

    OUT/images/NNN_<class>.png    one final image per target, as the tool returns it
    OUT/run.json                  {"images": [{"file", "targets": [{"index", "name", "weight"}]}], ...}

Methods:

lucent   Lucent 0.1.8's ``render_vis`` with its own defaults: a 128 px Fourier-parameterised,
         colour-decorrelated image (``param.image(128)``), its standard transforms (pad 12 with grey,
         jitter 8, random scale 0.9-1.1, random rotation -10..10 degrees, jitter 4, then upsampling
         to 224; one random draw per step for the whole batch),
         Adam at lr 0.05; the objective is the target logit (the output of the classifier's last
         layer, Lucent's "labels"). ``thresholds`` is set to the budget and ``preprocess`` off,
         because the model here does its own normalisation (mean = std = 0.5; Lucent's would be
         ImageNet's mean/std). One model pass per image and step, so a budget of N
         image-iterations is N steps. Lucent 0.1.8 calls ``kornia.get_rotation_matrix2d`` and
         ``kornia.warp_affine``, which current kornia keeps only under ``kornia.geometry.transform``;
         the two names are aliased before Lucent is imported (the functions are unchanged).
maco     Horama 0.3.0's ``maco`` with its defaults (a 1280 px image, phase-only optimisation with a
         fixed magnitude spectrum, NAdam at lr 1.0, 6 random crops of 25-30 % of the side per step,
         noise), one image per target. Each step costs 6 model passes, so for a budget of N
         image-iterations it runs round(N / 6) steps (``--maco-steps`` overrides). Two things
         differ from a plain call: ``values_range=(0, 1)`` so the image is in pixels and the model
         normalises it itself, with ``noise`` scaled to match (0.01 here is Horama's 0.05 in its
         default range of width 5); and the magnitude spectrum, which Horama downloads at run time
         (impossible offline), is made here: the mean |rfft2| of the real photos in
         ../shared/images, each centre-cropped to a square, resized to 512 px, minus its own mean
         colour and turned into Horama's decorrelated colour space (the inverse of its
         ``recorrelate_colors`` matrix), stored as float32 of shape (3, 512, 257) in the file
         name Horama looks for (``spectrum_decorrelated.npy`` in the working directory, which is
         OUT). The final image is the one ``maco`` returns; its transparency map is not used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "models" / "mobilenet_v2_imagenet.pth"
PHOTOS = ROOT.parent / "shared" / "images"
MACO_CROPS = 6  # Horama's default crops_per_iteration


class Normalised(torch.nn.Module):
    """The generator as the pipeline runs it: pixels in [0, 1], normalised with mean = std = 0.5."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.5) / 0.5)


def generator(weights: Path) -> torch.nn.Module:
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    model = Normalised(net).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def categories() -> list[str]:
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def save_png(array: np.ndarray, path: Path) -> None:
    """(H, W, 3) floats in [0, 1] to an 8-bit PNG."""
    pixels = np.clip(np.rint(np.asarray(array, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")


# -- Lucent ----------------------------------------------------------------------------------------


def run_lucent(model, targets: list[int], iterations: int, seed: int) -> list[np.ndarray]:
    import kornia
    import kornia.geometry.transform as kgt

    for name in ("get_rotation_matrix2d", "warp_affine"):
        if not hasattr(kornia, name):
            setattr(kornia, name, getattr(kgt, name))
    from lucent.optvis import objectives, param, render

    torch.manual_seed(seed)
    np.random.seed(seed)
    objective = objectives.Objective.sum([objectives.channel("labels", t, batch=i) for i, t in enumerate(targets)])
    images = render.render_vis(model, objective, param_f=lambda: param.image(128, batch=len(targets)),
                               thresholds=(iterations,), preprocess=False, show_image=False, progress=False)
    return list(images[-1])


# -- MACO ------------------------------------------------------------------------------------------


def maco_spectrum(path: Path, side: int = 512) -> None:
    """Horama's magnitude template from the local photos (see the module docstring)."""
    from horama.common import get_color_correlation_svd_sqrt

    inverse = torch.linalg.inv(get_color_correlation_svd_sqrt("cpu")).numpy()
    spectra = []
    for photo in sorted(PHOTOS.iterdir()):
        if photo.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        with Image.open(photo) as im:
            im = im.convert("RGB")
            s = min(im.size)
            left, top = (im.width - s) // 2, (im.height - s) // 2
            im = im.crop((left, top, left + s, top + s)).resize((side, side), Image.BICUBIC)
            rgb = np.asarray(im, dtype=np.float64) / 255.0
        rgb = rgb - rgb.reshape(-1, 3).mean(axis=0)
        decorrelated = (rgb.reshape(-1, 3) @ inverse).reshape(side, side, 3).transpose(2, 0, 1)
        spectra.append(np.abs(np.fft.rfft2(decorrelated)))
    np.save(path, np.mean(spectra, axis=0).astype(np.float32))


def run_maco(model, targets: list[int], steps: int, seed: int, out: Path) -> list[np.ndarray]:
    from horama import maco
    from horama.maco_fv import MACO_SPECTRUM_FILENAME

    here = os.getcwd()
    os.chdir(out)
    try:
        if not Path(MACO_SPECTRUM_FILENAME).is_file():
            maco_spectrum(Path(MACO_SPECTRUM_FILENAME))
        images = []
        for i, t in enumerate(targets):
            torch.manual_seed(seed * 100003 + i)
            objective = lambda x, t=t: torch.mean(model(x)[:, t])  # noqa: E731
            image, _alpha = maco(objective, total_steps=steps, values_range=(0.0, 1.0), noise=0.01, device="cpu")
            images.append(image.detach().permute(1, 2, 0).numpy())
            print(f"maco {i + 1}/{len(targets)} done", file=sys.stderr, flush=True)
    finally:
        os.chdir(here)
    return images


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=("lucent", "maco"), required=True)
    ap.add_argument("--targets", required=True, help="comma-separated ImageNet indices, one image each")
    ap.add_argument("--iterations", type=int, default=256, help="budget: model passes (image-iterations) per image")
    ap.add_argument("--maco-steps", type=int, default=None, help="MACO steps (default: iterations / 6 crops)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    targets = [int(t) for t in args.targets.split(",") if t.strip()]
    names = categories()
    out = args.out.resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    model = generator(args.weights)
    start = time.perf_counter()
    if args.method == "lucent":
        steps, passes = args.iterations, args.iterations
        images = run_lucent(model, targets, steps, args.seed)
        detail = {"package": "torch-lucent", "version": "0.1.8", "call": "render_vis(param.image(128), "
                  "standard_transforms, Adam lr 0.05, preprocess=False)", "image_side": 128}
    else:
        steps = args.maco_steps or max(1, round(args.iterations / MACO_CROPS))
        passes = steps * MACO_CROPS
        images = run_maco(model, targets, steps, args.seed, out)
        detail = {"package": "horama", "version": "0.3.0", "call": "maco(values_range=(0, 1), noise=0.01, "
                  "other arguments default)", "image_side": 1280, "crops_per_step": MACO_CROPS,
                  "magnitude": "mean |rfft2| of ../shared/images photos (decorrelated), spectrum_decorrelated.npy"}
    loop = time.perf_counter() - start
    entries = []
    for i, (t, image) in enumerate(zip(targets, images)):
        file = f"{i:03d}_{slug(names[t])}.png"
        save_png(image, out / "images" / file)
        entries.append({"file": file, "targets": [{"index": t, "name": names[t], "weight": 1.0}]})
    record = {
        "status": "completed",
        "recipe_file": None,
        "peer": {"method": args.method, **detail},
        "seed": args.seed,
        "threads": args.threads,
        "iterations": steps,
        "iterations_done": steps,
        "model_passes_per_image": passes,
        "batch": len(targets),
        "model": {"name": "mobilenet_v2", "weights": str(args.weights), "mean": [0.5] * 3, "std": [0.5] * 3,
                  "size": 224},
        "timings": {"loop_seconds": round(loop, 3),
                    "image_iterations_per_second": round(passes * len(targets) / max(loop, 1e-9), 3)},
        "images": entries,
    }
    (out / "run.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
