"""class-map: the target class's evidence at the centre of the last feature map, not everywhere.

A classifier's logit is its linear layer applied to the last feature map averaged over the
positions (global average pooling). Raising it rewards the class's parts wherever they appear,
so gradient ascent paints many partial copies side by side: the collage of class pictures. It
is the difference between a channel objective and a neuron objective in feature visualisation
(Olah et al. 2017): a channel's mean tiles the image with its pattern, one neuron at the centre
draws one instance with its surround.

This objective applies the linear layer at every position of the feature map it pools (the
class activation map of Zhou et al. 2016) and raises a centre-weighted average of the target's
map: a Gaussian over the grid, ``sigma`` a fraction of the grid's side. The centre position's
receptive field covers most of the image, so the class still has the whole picture to grow
in, but its evidence counts only where one object would stand. ``sigma: null`` weights every
position equally, which is exactly the logit.

The linear layer is the model's last ``nn.Linear`` with one output per class, and the feature
map is the last module output, in the order the forward pass produces them, with that layer's
number of input channels (``classifier`` and ``layer`` name them where the guess is wrong; the
step says which it took in run.json). It fits the usual CNN classifiers (torchvision's ResNet,
MobileNetV2, EfficientNet, Inception; timm's), not a model whose head is no single linear layer
(MobileNetV3, ConvNeXt, VGG are refused in one line), and not with ``model.ensemble``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipeline_core.errors import RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.objectives import ClassObjective, TargetParams

from ..lazy_imports import F, nn, torch


class ClassMapParams(TargetParams):
    sigma: float | None = Field(0.2, gt=0, description="Width of the Gaussian weight over the feature map's grid, "
                                                       "as a fraction of its side (null: every position alike, "
                                                       "which is the logit).")
    weight: float = Field(1.0, ge=0, description="Multiplies the objective.")
    classifier: str | None = Field(None, description="Path of the linear layer that gives the logits (default: the "
                                                     "model's last nn.Linear with one output per class).")
    layer: str | None = Field(None, description="Path of the module whose output the classifier pools (default: "
                                                "the last output, in forward order, whose average over positions "
                                                "the classifier turns into the logits; checked either way).")


def find_classifier(module: nn.Module, classes: int) -> str | None:
    """Path of the last ``nn.Linear`` with ``classes`` outputs."""
    found = [name for name, m in module.named_modules() if isinstance(m, nn.Linear) and m.out_features == classes]
    return found[-1] if found else None


def pooled_layer(module: nn.Module, linear_path: str, side: int, device: torch.device,
                 layer: str | None = None) -> str | None:
    """Path of the feature map whose average over positions the linear layer reads, checked.

    One forward pass of a random image: among the module outputs with the linear layer's number
    of channels on a grid of more than one position (or only ``layer``, when named), the last,
    in forward order, for which the linear layer applied to its average gives the linear layer's
    own output. None when no output does (the head does more than average: a norm, a ReLU)."""
    linear = module.get_submodule(linear_path)
    seen: dict[str, torch.Tensor] = {}
    order: list[str] = []
    handles = []
    for name, m in module.named_modules():
        if not name or (layer is not None and name not in (layer, linear_path)):
            continue

        def keep(_m, _i, out, name=name):
            if isinstance(out, torch.Tensor):
                seen[name] = out
                order.append(name)

        handles.append(m.register_forward_hook(keep))
    generator = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            module(torch.rand(1, 3, side, side, generator=generator).to(device))
    finally:
        for h in handles:
            h.remove()
    logits = seen.get(linear_path)
    if logits is None:
        return None
    for name in reversed(order):
        out = seen[name]
        if name == linear_path or out.dim() != 4 or out.shape[1] != linear.in_features or out.shape[2] * out.shape[3] < 2:
            continue
        rebuilt = F.linear(out.mean((2, 3)), linear.weight, linear.bias)
        if torch.allclose(rebuilt, logits.reshape(rebuilt.shape), rtol=1e-3, atol=1e-3 * float(logits.abs().max())):
            return name
    return None


class ClassMap(ClassObjective):
    """Raise the target's class activation map, weighted toward the centre of the grid."""

    name = "class-map"
    Params = ClassMapParams

    @property
    def heads(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset()  # the layer is found in the built model and captured from setup

    def setup(self, ctx) -> None:
        super().setup(ctx)
        module = ctx.model.module
        where = self.where()
        n = len(ctx.model.categories)
        if isinstance(getattr(module, "ensemble", None), nn.ModuleList):
            raise RecipeError("class-map reads the main model's classifier only, so model.ensemble's members would "
                              "cost their passes and add nothing; use L1-loss with model.ensemble", where)
        path = self.params.classifier or find_classifier(module, n)
        if path is None:
            raise RecipeError(f"the model has no nn.Linear with {n} outputs (one per class); name its classifier "
                              "in 'classifier', or use L1-loss", where)
        try:
            linear = module.get_submodule(path)
        except AttributeError:
            raise RecipeError(f"the model has no module '{path}' ('pipeline layers' lists them)",
                              self.where("classifier")) from None
        if not isinstance(linear, nn.Linear) or linear.out_features != n:
            raise RecipeError(f"'{path}' is not a linear layer with {n} outputs",
                              self.where("classifier"))
        try:
            layer = pooled_layer(module, path, ctx.model.size or 224, ctx.device, self.params.layer)
        except AttributeError:
            layer = None
        if layer is None and self.params.layer:
            raise RecipeError(f"layer '{self.params.layer}' is not the map whose average over positions '{path}' "
                              "turns into the logits; leave 'layer' out to find it ('pipeline layers' lists them)",
                              self.where("layer"))
        if layer is None:
            raise RecipeError(f"no module output is a map of {linear.in_features} channels whose average over "
                              f"positions '{path}' turns into the logits (this model's head does more than average "
                              "and a linear layer); use L1-loss", where)
        ctx.model.add_layers([layer])
        shape = ctx.model.layer_shapes()[layer]
        if len(shape) != 3 or shape[0] != linear.in_features:
            raise RecipeError(f"layer '{layer}' gives {tuple(shape)} per image, not a map of {linear.in_features} "
                              f"channels", self.where("layer"))
        self.classifier_path, self.layer_path = path, layer
        self.w = linear.weight.detach().float()[self.class_tensor]  # (B, C)
        self.b = (linear.bias.detach().float()[self.class_tensor] if linear.bias is not None
                  else torch.zeros(len(self.classes), device=ctx.device))
        self._weights: dict[tuple[int, int], torch.Tensor] = {}

    def grid_weights(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """The (h, w) Gaussian weight over the grid, summing to one (made once per grid size)."""
        key = (h, w)
        if key not in self._weights:
            if self.params.sigma is None:
                g = torch.full((h, w), 1.0 / (h * w), device=device)
            else:
                s = self.params.sigma * max(h, w)
                ys = torch.arange(h, device=device, dtype=torch.float32) - (h - 1) / 2
                xs = torch.arange(w, device=device, dtype=torch.float32) - (w - 1) / 2
                g = torch.exp(-(ys.view(-1, 1).square() + xs.view(1, -1).square()) / (2 * s * s))
                g = g / g.sum()
            self._weights[key] = g
        return self._weights[key]

    def value(self, out) -> torch.Tensor:
        """Each image's centre-weighted class evidence: shape (B,)."""
        act = out.layer(self.layer_path)  # (B, C, H, W)
        g = self.grid_weights(act.shape[2], act.shape[3], act.device)
        pooled = (act * g).sum((2, 3))  # the weighted pooling, then the linear layer (it is linear)
        return (pooled * self.w).sum(1) + self.b

    def loss(self, ctx, out, image: torch.Tensor) -> torch.Tensor:
        return -self.params.weight * self.value(out)

    def record(self) -> dict[str, Any]:
        if not hasattr(self, "layer_path"):
            return {}
        return {"classifier": self.classifier_path, "layer": self.layer_path, "sigma": self.params.sigma}


@hookimpl
def register_steps(registry):
    registry.add_step(ClassMap)
