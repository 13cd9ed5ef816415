#!/usr/bin/env python
"""Fit the Fourier magnitude of natural photographs: the constants of ``phase-image``.

MACO (Fel et al. 2023) optimises only the phase of an image's spectrum and holds its
magnitude at that of natural images. Rather than shipping a measured spectrum, this script
estimates it from the real photographs in ``../shared/images`` (or the folder given) and
fits, per decorrelated colour channel ``c``, a power law

    |F_c(f)| = A_c / f ** alpha_c        (f in cycles per pixel, orthonormal 2-D FFT)

to their mean |rfft2|. Ten photographs are too few for a trustworthy measured spectrum at
every frequency and size; a two-number law per channel is robust, smooth and valid at any
image size (with the orthonormal FFT, the expected |F|^2 at a frequency in cycles per pixel
does not depend on the image's size for a scale-invariant image).

Method:

- each photograph in [0, 1], minus its own mean colour, is mapped into the decorrelated colour
  space of ``pipeline_core.parameterization.colour_mixing_matrix`` (d = M^-1 rgb);
- square windows of ``--crop`` pixels (the centre and four corners, overlapping, at the
  photograph's own resolution: no resampling, whose filter would bend the high frequencies)
  are multiplied by a Hann window (so the crop's edges do not add a spurious cross of energy)
  and transformed with ``rfft2(norm="ortho")``;
- |F| is averaged over all windows, then over logarithmically spaced rings of frequency
  between ``--fmin`` and ``--fmax`` (cycles per pixel), and ``log|F| = log A - alpha log f``
  is fitted by least squares over the rings (each ring counts once, so the many high-
  frequency coefficients do not outweigh the few low ones);
- finally the contrast: the standard deviation of the photographs' pixels (about each
  photograph's mean colour) is matched by ``phase-image``'s own rendering (random phase,
  fitted magnitude, standardised, recorrelated, times ``contrast``, sigmoid), solving for
  ``contrast`` by bisection.

Run it (about ten seconds) and paste the printed constants into ``plugins/param/phase_image.py``::

    python benchmarks/natural_spectrum.py [--images DIR] [--crop 256] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline_core.parameterization import colour_mixing_matrix

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by its path (the tests), not run as a script
    sys.path.append(str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "images"
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def load(path: Path) -> torch.Tensor:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()  # (3, H, W)


def windows(image: torch.Tensor, crop: int) -> list[torch.Tensor]:
    """The centre and four corner crops (fewer when the photograph is barely larger)."""
    _, h, w = image.shape
    if min(h, w) < crop:
        return []
    spots = {((h - crop) // 2, (w - crop) // 2), (0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop)}
    return [image[:, y:y + crop, x:x + crop] for y, x in sorted(spots)]


def frequencies(n: int) -> torch.Tensor:
    fy = torch.fft.fftfreq(n, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.rfftfreq(n, dtype=torch.float64).view(1, -1)
    return (fy**2 + fx**2).sqrt()


def mean_magnitude(photos: list[torch.Tensor], crop: int) -> tuple[torch.Tensor, int]:
    unmix = torch.linalg.inv(colour_mixing_matrix().double())
    hann = torch.hann_window(crop, periodic=False, dtype=torch.float64)
    window = hann.view(-1, 1) * hann.view(1, -1)
    window = window / window.pow(2).mean().sqrt()  # keeps the mean power of a white image
    total, count = torch.zeros(3, crop, crop // 2 + 1, dtype=torch.float64), 0
    for photo in photos:
        centred = photo - photo.mean(dim=(1, 2), keepdim=True)
        decorrelated = torch.einsum("ij,jhw->ihw", unmix, centred)
        for win in windows(decorrelated, crop):
            total += torch.fft.rfft2(win * window, norm="ortho").abs()
            count += 1
    return total / max(count, 1), count


def fit(magnitude: torch.Tensor, fmin: float, fmax: float, rings: int) -> list[dict]:
    f = frequencies(magnitude.shape[-2])
    edges = np.geomspace(fmin, fmax, rings + 1)
    out = []
    for c in range(magnitude.shape[0]):
        xs, ys = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            ring = (f >= lo) & (f < hi)
            if ring.any():
                xs.append(math.log(float(f[ring].mean())))
                ys.append(math.log(float(magnitude[c][ring].mean())))
        slope, intercept = np.polyfit(xs, ys, 1)
        resid = np.asarray(ys) - (slope * np.asarray(xs) + intercept)
        out.append({"amplitude": math.exp(intercept), "exponent": -slope,
                    "rms_log_residual": float(np.sqrt(np.mean(resid**2))), "rings": len(xs)})
    return out


def pixel_contrast(photos: list[torch.Tensor]) -> float:
    """The photographs' mean per-channel pixel standard deviation, about each one's mean colour."""
    return float(np.mean([float(p.std(dim=(1, 2)).mean()) for p in photos]))


def solve_contrast(amplitude: tuple, exponent: tuple, target: float, size: int = 256, samples: int = 16) -> float:
    """The ``contrast`` at which phase-image's rendering of random phases has the photos' pixel std."""
    from pipeline_plugins.param.phase_image import PhaseImage

    g = torch.Generator().manual_seed(0)
    grey = torch.full((samples, 3, size, size), 0.5)

    def std_at(contrast: float) -> float:
        param = PhaseImage(grey, contrast=contrast, amplitude=amplitude, exponent=exponent, generator=g)
        with torch.no_grad():
            return float(param.image().std(dim=(2, 3)).mean())

    lo, hi = 0.1, 10.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if std_at(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of real photographs")
    ap.add_argument("--crop", type=int, default=256, help="side of the square windows, in pixels")
    ap.add_argument("--fmin", type=float, default=2 / 256, help="lowest frequency fitted, cycles per pixel")
    ap.add_argument("--fmax", type=float, default=0.25, help="highest frequency fitted (above it JPEG and "
                                                            "camera filtering bend the spectrum)")
    ap.add_argument("--rings", type=int, default=24, help="logarithmic frequency rings in the fit")
    ap.add_argument("--json", type=Path, help="also write every figure to this file")
    args = ap.parse_args(argv)

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in SUFFIXES)
    if not paths:
        print(f"no photographs in {args.images}", file=sys.stderr)
        return 2
    photos = [load(p) for p in paths]
    magnitude, count = mean_magnitude(photos, args.crop)
    if not count:
        print(f"no photograph is {args.crop} px on its shorter side", file=sys.stderr)
        return 2
    fits = fit(magnitude, args.fmin, args.fmax, args.rings)
    amplitude = tuple(round(float(r["amplitude"]), 6) for r in fits)
    exponent = tuple(round(float(r["exponent"]), 4) for r in fits)
    target = pixel_contrast(photos)
    contrast = solve_contrast(amplitude, exponent, target)

    print(f"{len(photos)} photographs, {count} windows of {args.crop} px, "
          f"fit over {args.fmin:.4f}..{args.fmax:.3f} cycles/pixel")
    for c, r in enumerate(fits):
        print(f"  channel {c}: A = {r['amplitude']:.6f}  alpha = {r['exponent']:.4f}  "
              f"rms log residual {r['rms_log_residual']:.3f} over {r['rings']} rings")
    print(f"photographs' pixel std {target:.4f} -> contrast {contrast:.3f}")
    print("\n# paste into plugins/param/phase_image.py")
    print(f"NATURAL_AMPLITUDE = {amplitude}")
    print(f"NATURAL_EXPONENT = {exponent}")
    print(f"NATURAL_CONTRAST = {round(contrast, 3)}")
    if args.json:
        args.json.write_text(json.dumps(provenance() | {
            "images": [p.name for p in paths], "windows": count, "crop": args.crop,
            "fmin": args.fmin, "fmax": args.fmax, "channels": fits,
            "pixel_std": target, "contrast": contrast,
        }, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
