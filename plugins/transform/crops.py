"""crops: show the model many random, antialiased crops of each image at once (MACO's views).

Jitter and zoom make a class image robust to small changes of view. MACO (Fel et al. 2023)
and xplique go further: every iteration the model sees K crops of each image, each a box
whose side is a fraction of the image's, scattered around the middle, resized to the model's
input and sprinkled with noise. The gradient then asks every part of the image to look like
the class at the scale of the box, so objects appear whole in the middle and again as parts
at smaller scales, and no pixel-exact pattern survives the averaging.

The step returns ``K * B`` views ordered view-major (view ``k`` of image ``b`` at row
``k * B + b``); the loop averages the model's outputs over each image's views, so every
objective works unchanged. The views go through the model in one batched pass; when their
activations do not fit, ``performance.max_rows`` (a number, or ``auto`` on a GPU) sends them
in chunks, each recomputed in the backward pass, with the same result.

How:

- **Box size** ``box``: a fraction of the image's shorter side; two numbers ``[start, end]``
  move linearly from the first to the second over the step's active iterations (xplique
  shrinks 0.5 to 0.05), one number holds still. Boxes are square and always inside the image.
- **Centres**: the image's centre plus a Gaussian offset of ``spread`` image sides (per axis),
  clamped so that the box stays inside. The default 0.3 reaches the borders often: with 0.15
  (MACO's "around the middle") the borders were rarely seen, kept their random start as a
  haze, and an independent model recognised fewer of the images (65% top-1 against 85% on
  twenty classes with MobileNetV2; see ``recipes/best_class_maco.yaml``).
- **Antialiasing**: all crops of an iteration have the same size, so when they are larger than
  the output the whole image is first shrunk once (bilinear with antialiasing, a triangle
  filter as wide as the shrink factor) to the scale at which a box is exactly the output's
  size; one ``grid_sample`` with an affine grid per crop then cuts every crop at once, at
  about one pixel per pixel (a smaller box is upsampled, where no antialiasing is needed).
  The image is not copied K times: the K crops of an image are one tall sampling grid.
- **Noise** after resizing: Gaussian, ``noise`` standard deviation in the [0, 1] input range.
- Every draw comes from the step's own seeded generator (on a GPU the noise from a device
  generator seeded by it), so runs replay and resume exactly.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import Field, field_validator

from pipeline_core.context import seeded_draw, to_device
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import MAX_SIDE, Step, StepKind, TransformParams

from ..lazy_imports import F, torch

Box = Union[float, tuple[float, float]]


class CropsParams(TransformParams):
    on: Literal["image", "view"] = Field("view", description="view only: the model sees K crops of every image.")
    views: int = Field(4, ge=1, le=256, description="Crops of each image per iteration (K); the cost of an "
                                                    "iteration grows with it.")
    box: Box = Field((0.9, 0.4), description="Crop side as a fraction of the image's shorter side: one number, or "
                                               "[start, end] moving linearly over the step's active iterations.")
    spread: float = Field(0.3, ge=0, le=2, description="Standard deviation of a crop centre's offset from the image "
                                                        "centre, in image sides (clamped to keep the box inside).")
    noise: float = Field(0.05, ge=0, le=1, description="Standard deviation of Gaussian noise added to each crop after "
                                                       "resizing, in the [0, 1] range.")
    flip: bool = Field(False, description="Also mirror each crop left-right with probability one half.")
    size: int | None = Field(None, ge=1, le=MAX_SIDE, description="Side of the crops handed to the model; default: "
                                                                  "the model's input size.")

    @field_validator("box")
    @classmethod
    def _box(cls, box: Box) -> Box:
        values = box if isinstance(box, tuple) else (box,)
        if not all(0 < v <= 1 for v in values):
            raise ValueError(f"box sides are fractions of the image side in (0, 1], got {list(values)}")
        return box


class Crops(Step):
    """Show the model K random antialiased crops of each image (MACO), with noise; views average per image."""

    name = "crops"
    kind = StepKind.TRANSFORM
    Params = CropsParams
    places = ("view",)  # K views of every image for the model cannot replace the stored image

    def bind(self, plan) -> None:
        self.out_size = self.params.size or plan.model_size

    def box_fraction(self, iteration: int, fraction: float) -> float:
        """The crop side (a fraction of the image's shorter side) at ``iteration``."""
        box = self.params.box
        if not isinstance(box, tuple):
            return float(box)
        start, end = box
        s = self.schedule
        if s is not None and s.stop > s.start + 1:
            t = (iteration - s.start) / (s.stop - 1 - s.start)
        else:
            t = fraction
        t = min(max(t, 0.0), 1.0)
        return float(start + (end - start) * t)

    def apply(self, ctx, x):
        p = self.params
        b, c, h, w = x.shape
        k = p.views
        out = getattr(self, "out_size", None) or ctx.model.size or min(h, w)
        g = ctx.generator(self)
        side = self.box_fraction(ctx.iteration, ctx.fraction) * min(h, w)  # in the image's pixels
        sx, sy = side / w, side / h  # the box's half-extent in normalised coordinates [-1, 1]
        offsets = torch.randn(k * b, 2, generator=g, dtype=torch.float64) * p.spread
        flips = torch.rand(k * b, generator=g, dtype=torch.float64) < 0.5
        theta = torch.zeros(k * b, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = sx * (torch.where(flips, -1.0, 1.0) if p.flip else 1.0)
        theta[:, 1, 1] = sy
        theta[:, 0, 2] = (2 * offsets[:, 0]).clamp(-(1 - sx), 1 - sx)
        theta[:, 1, 2] = (2 * offsets[:, 1]).clamp(-(1 - sy), 1 - sy)
        src = x
        if side > out:  # shrink once so that a box is `out` pixels wide: antialiased, the same for every crop
            shrunk = (max(1, round(h * out / side)), max(1, round(w * out / side)))
            src = F.interpolate(x, size=shrunk, mode="bilinear", antialias=True, align_corners=False)
        grid = F.affine_grid(to_device(theta, x.device, x.dtype), [k * b, c, out, out], align_corners=False)
        # view-major rows (k * B + b) -> per image, its K grids stacked into one tall grid
        grid = grid.view(k, b, out, out, 2).transpose(0, 1).reshape(b, k * out, out, 2)
        views = F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        views = views.view(b, c, k, out, out).permute(2, 0, 1, 3, 4).reshape(k * b, c, out, out)
        if p.noise:
            views = views + p.noise * seeded_draw(torch.randn, tuple(views.shape), g, views)
        return views


@hookimpl
def register_steps(registry):
    registry.add_step(Crops)
