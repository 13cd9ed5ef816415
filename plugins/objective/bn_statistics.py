"""bn-statistics: the image's inner statistics held at those of the photos the model learned from.

A batch-norm layer keeps, from training, the mean and variance of every channel over
ImageNet's photographs. An image made by gradient descent on a class drives a few channels far
outside that range (that is how it gets its logit up) and leaves the picture with a texture no
photo has, which other models do not recognise. DeepInversion (Yin et al. 2020) penalises the
distance between the image's statistics at every batch-norm layer and the stored ones, so the
class has to grow out of features photographs also have; its images are recognised by models
that took no part in making them, which is what a picture needs.

The statistics are read at each batch-norm layer's output: in eval mode that is the layer's
input standardised by the stored mean and variance, then scaled by the layer's ``weight`` and
shifted by its ``bias``, so a photo-like input gives, per channel, mean ``bias`` and variance
``weight**2`` (less the layer's epsilon). The penalty is, per layer, the Euclidean distance of
the channels' means to that and of their variances to that, averaged over the layers.

``over: batch`` takes the statistics over all the images and views at once, as DeepInversion
does: a channel may be high in one image if it is low in another, as in a batch of photos of
many classes; the images then affect one another (the penalty is shared among them equally).
``over: image`` takes them over each image's own views and positions: independent images,
each held to the average photo.

``source: photos`` takes the statistics from photographs instead of the stored ones (the ten
ordinary photos shipped in this package's ``photos/`` folder, or those ``photos:`` names; naming
photos implies the source): each photo is
resized to the model's input size and cut into ten views (four corners, the centre and their
mirror images, torchvision's ``ten_crop``), and the mean and variance of every channel of the
chosen layers over all of them become the target. That gives the prior to models whose batch
norms keep no statistics (folded into the convolutions, as in the shared MobileNetV2) or that
have none, and to any layer (``layers:``); no class labels are needed, only ordinary photos of
varied things. A handful of photos estimates the early layers' statistics (colour, contrast,
edges) well and the late, class-specific ones poorly, so ``layers`` can leave those out.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline_core.errors import RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, StepParams

from ..lazy_imports import TF, nn, torch
from ..photo_files import BUILTIN_PHOTOS, expand_images, load_photo


class BNStatisticsParams(StepParams):
    weight: float = Field(1.0, ge=0, description="Multiplies the penalty (the mean over the layers of the distance "
                                                 "of the channels' means plus that of their variances).")
    over: Literal["batch", "image"] = Field(
        "batch", description="batch: statistics over all the images and views together, as DeepInversion (the "
                             "images share the penalty); image: over each image's own views and positions.")
    first: float = Field(1.0, ge=0, description="Multiplies the first batch-norm layer's term: the one nearest "
                                                "the pixels, which decides colour and contrast.")
    layers: list[str] | None = Field(None, description="Paths of the layers to read (default: all batch-norm layers, "
                                                       "'pipeline layers MODEL --match bn' lists them); with photos any "
                                                       "layer.")
    source: Literal["stored", "photos"] = Field(
        "stored", description="stored: the batch-norm layers' running statistics; photos: the channels' statistics "
                              "over photographs (the ten shipped with the package, or 'photos'), for models with "
                              "folded or no batch norms, on any layer.")
    photos: str | list[str] | None = Field(
        None, description="Photos (paths or globs, relative to the recipe file) for source: photos (giving them "
                          "implies it); default: the ten ordinary photos shipped with the package.")
    required: bool = Field(True, description="false: on a model without batch-norm layers (and no 'layers' named) "
                                             "the step adds nothing and run.json says so, instead of refusing it.")

    @model_validator(mode="before")
    @classmethod
    def _photos_imply_source(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("photos") is not None and "source" not in data:
            data = {**data, "source": "photos"}
        return data

    @model_validator(mode="after")
    def _photos_need_their_source(self) -> "BNStatisticsParams":
        if self.photos is not None and self.source == "stored":
            raise ValueError("'photos' are read only with source: photos; remove 'source: stored' or the photos")
        return self


def batchnorm_layers(module: nn.Module) -> list[str]:
    """Paths of the model's 2-d batch-norm layers that keep running statistics, in order."""
    return [name for name, m in module.named_modules()
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_var is not None]


def _folded(bn: nn.BatchNorm2d) -> bool:
    """True for a layer whose statistics were folded away (an identity standardisation)."""
    with torch.no_grad():
        return bool((bn.running_mean == 0).all() and torch.allclose(bn.running_var + bn.eps, torch.ones(()),
                                                                      atol=1e-6)
                    and (bn.weight is None or (bn.weight == 1).all()))


class BNStatistics(Step):
    """Penalise the distance of the image's per-channel statistics to the model's batch-norm statistics."""

    name = "bn-statistics"
    kind = StepKind.OBJECTIVE
    Params = BNStatisticsParams
    paths = ("photos",)

    def bind(self, plan) -> None:
        self.batch = plan.batch

    def setup(self, ctx) -> None:
        module = ctx.model.module
        found = batchnorm_layers(module)
        paths = list(self.params.layers) if self.params.layers is not None else found
        where = self.where("layers")
        self.layer_paths: list[str] = []
        if not paths and not self.params.required:
            self.scale = torch.zeros(0, device=ctx.device)
            self.targets_ = []
            return
        if not paths:
            fix = "name the layers to read in 'layers'" if self.params.source == "photos" else "use a model with " \
                "BatchNorm2d layers, or give 'source: photos' and 'layers' to match statistics of photographs"
            raise RecipeError(f"the model has no batch-norm layer with running statistics; {fix}", where)
        if self.params.source == "stored":
            bad = [p for p in paths if p not in found]
            if bad:
                raise RecipeError(f"'{bad[0]}' is not a batch-norm layer of the model; "
                                  f"the model has {len(found)} ({', '.join(found[:3])}, ...)", where)
            if all(_folded(module.get_submodule(p)) for p in paths):
                raise RecipeError("the model's batch-norm layers are folded into its convolutions (weight 1, mean 0, "
                                  "variance 1): they keep no statistics of photographs to match; give 'source: photos' "
                                  "to take them from photographs, or use weights with real batch-norm statistics "
                                  "(torchvision's)", where)
        ctx.model.add_layers(paths)
        self.layer_paths = paths
        if self.params.source == "photos":
            self.targets_ = self._photo_statistics(ctx, paths)
        else:
            self.targets_ = [self._stored(module.get_submodule(p), ctx.device) for p in paths]
        scale = torch.ones(len(paths), device=ctx.device)
        scale[0] = self.params.first
        self.scale = scale / len(paths)

    @staticmethod
    def _stored(bn: nn.BatchNorm2d, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch-norm layer's output mean and variance for a photo-like input."""
        gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(bn.running_var)
        beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(bn.running_mean)
        var = bn.running_var.detach().float()
        return beta.to(device), (gamma.square() * var / (var + bn.eps)).to(device)

    def _photo_statistics(self, ctx, paths: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the channels' mean and variance over ten views of every photo (float64 sums)."""
        photos = self.params.photos
        if photos is None:
            photos = [str(BUILTIN_PHOTOS / "*.png"), str(BUILTIN_PHOTOS / "*.jpg")]
        files = expand_images([photos] if isinstance(photos, str) else photos)
        if not files:
            raise RecipeError(f"no photo matches {photos!r}", self.where("photos"))
        side = ctx.model.size or 224
        total: dict[str, torch.Tensor] = {}
        squares: dict[str, torch.Tensor] = {}
        count: dict[str, int] = {}
        for file in files:
            try:
                photo = load_photo(file)
            except RecipeError as exc:
                raise RecipeError(exc.message, self.where("photos")) from None
            photo = TF.resize(photo, [round(side * 1.25)], antialias=True)
            views = torch.stack(TF.ten_crop(photo, [side, side])).to(ctx.device)
            with torch.no_grad():
                out = ctx.model(views)
            for p in paths:
                act = out.layer(p).double().transpose(0, 1).flatten(1)  # (C, views * positions)
                total[p] = total.get(p, 0) + act.sum(1)
                squares[p] = squares.get(p, 0) + act.square().sum(1)
                count[p] = count.get(p, 0) + act.shape[1]
        targets = []
        for p in paths:
            mean = total[p] / count[p]
            targets.append((mean.float(), (squares[p] / count[p] - mean.square()).clamp_min(0).float()))
        return targets

    def record(self) -> dict:
        if not hasattr(self, "layer_paths"):
            return {}
        if not self.layer_paths:
            return {"layers": 0, "note": "the model has no batch-norm layers: nothing to match, the step added nothing"}
        return {"layers": len(self.layer_paths), "source": self.params.source}

    def loss(self, ctx, out, image: torch.Tensor) -> torch.Tensor:
        if not self.layer_paths:
            return torch.zeros(self.batch, device=image.device)
        views = out.per_view()
        batch = self.batch
        total = torch.zeros(batch, device=image.device)
        for (mean_t, var_t), path, s in zip(self.targets_, self.layer_paths, self.scale):
            act = views.layer(path)  # (views * batch, C, H, W)
            if self.params.over == "batch":
                dims = (0, *range(2, act.dim()))
                mean, var = act.mean(dims), act.var(dims, unbiased=False)
                term = (mean - mean_t).norm() + (var - var_t).norm()
                total = total + s * term / batch
            else:
                act = act.view(-1, batch, *act.shape[1:])  # (views, batch, C, H, W)
                dims = (0, *range(3, act.dim()))
                mean, var = act.mean(dims), act.var(dims, unbiased=False)  # (batch, C)
                term = (mean - mean_t).norm(dim=1) + (var - var_t).norm(dim=1)
                total = total + s * term
        return self.params.weight * total



@hookimpl
def register_steps(registry):
    registry.add_step(BNStatistics)
