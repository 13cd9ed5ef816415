"""skip-gradient: less of the gradient through residual branches, more through the skips.

In a residual network every block adds a branch to its input, ``x + f(x)``; the gradient
reaching the image is the sum over every path through the blocks, skipping or entering each
branch. Wu et al. (2020, "Skip connections matter: on the transferability of adversarial
examples generated with ResNets") found that images made with the gradient of the skip paths
weighted more (each branch's gradient multiplied by a factor below one, the forward pass
unchanged) fool *other* models far more often: the skips carry the low-level features all
ImageNet classifiers share, the branches the model's own idiosyncrasies. For a picture that
independent models should recognise, that is the same goal.

The model's outputs and logits are untouched; only the backward pass changes. The factor
applies while the step is scheduled (``from``/``until``) and is 1 otherwise.

``erosion`` changes the forward pass as well, on purpose: each branch's output is multiplied
by a random factor near 1, drawn afresh per image (per view, where a view step shows the
model several) and iteration (Li et al. 2020, "Learning transferable adversarial examples via
ghost networks"). Every iteration then optimises for a slightly different member of a family
of models around the real one, an ensemble for the price of one, and what grows must please
them all rather than exploit one model's exact weights. The draws come from the step's seeded
generator, so runs replay and resume exactly.

Blocks are found by their structure: torchvision's MobileNetV2/V3 and EfficientNet blocks
(``use_res_connect``), ResNet blocks (``BasicBlock``/``Bottleneck``, their last batch norm; timm's
too), timm's vision-transformer blocks (the attention and MLP branches, at ``ls1``/``ls2``) and
timm's ConvNeXt blocks (at ``drop_path``);
``layers`` names the branch modules of any other model. InceptionV3 and GoogLeNet have no skip
connections, and the step refuses them with a one-line reason, or with ``required: false``
leaves their gradient alone and says so in run.json (``step_facts``).
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field

from pipeline_core.errors import RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams

from ..lazy_imports import nn, torch


class SkipGradientParams(TransformParams):
    on: Literal["image", "view"] = Field("view", description="view only: the step changes how the model's "
                                                               "gradient reaches the view, never the image.")
    gamma: float = Field(0.5, gt=0, le=1, description="Multiplies the gradient through every residual branch "
                                                      "(1: the plain gradient; the paper used 0.2 to 0.5).")
    erosion: float = Field(0.0, ge=0, lt=1, description="Forward pass too: each residual branch's output "
                           "multiplied by a factor drawn from [1 - erosion, 1 + erosion] per image (or view), "
                           "branch and iteration (Li et al. 2020, 'ghost networks'): every iteration sees a "
                           "slightly different model; 0: the forward pass is unchanged.")
    layers: list[str] | None = Field(None, description="Paths of the residual branch modules (default: found "
                                                       "by structure; 'pipeline layers MODEL' lists the paths).")
    required: bool = Field(True, description="false: on a model without residual blocks (InceptionV3, GoogLeNet) "
                                             "do nothing and say so in run.json, instead of refusing the run; for "
                                             "recipes meant for any model.")


def residual_branches(module: nn.Module) -> list[str]:
    """Paths of the modules whose output is added to a skip connection, found by structure."""
    found = []
    for name, m in module.named_modules():
        prefix = f"{name}." if name else ""
        if getattr(m, "use_res_connect", False):
            for branch in ("conv", "block"):
                if isinstance(getattr(m, branch, None), nn.Module):
                    found.append(prefix + branch)
                    break
        elif all(isinstance(getattr(m, a, None), nn.Module) for a in ("attn", "mlp", "ls1", "ls2")):
            found += [prefix + "ls1", prefix + "ls2"]  # a timm transformer block: x + ls1(attn), x + ls2(mlp)
        elif type(m).__name__ == "ConvNeXtBlock" and isinstance(getattr(m, "drop_path", None), nn.Module):
            found.append(prefix + "drop_path")  # timm's ConvNeXt: the branch ends in drop_path, then + shortcut
        elif type(m).__name__ == "BasicBlock" and isinstance(getattr(m, "bn2", None), nn.Module):
            found.append(prefix + "bn2")
        elif type(m).__name__ == "Bottleneck" and isinstance(getattr(m, "bn3", None), nn.Module):
            found.append(prefix + "bn3")
    return found


@functools.cache
def _scale_grad() -> type:
    """The autograd function, defined on first use: its base class is torch's, and the module
    loads without torch (``lazy_imports``)."""

    class _ScaleGrad(torch.autograd.Function):
        """Identity forward; the gradient multiplied by ``gamma``."""

        @staticmethod
        def forward(ctx, x, gamma):
            ctx.gamma = gamma
            return x.clone()  # a new tensor, not a view: ResNet blocks add the skip to it in place

        @staticmethod
        def backward(ctx, grad):
            return grad * ctx.gamma, None

    return _ScaleGrad


class SkipGradient(Step):
    """Scale the gradient through the model's residual branches by gamma (and, with erosion, their outputs)."""

    name = "skip-gradient"
    kind = StepKind.TRANSFORM
    Params = SkipGradientParams
    places = ("view",)  # it changes the model's backward pass, never the stored image

    def setup(self, ctx) -> None:
        module = ctx.model.module
        where = self.where("layers")
        if self.params.layers is not None:
            paths = list(self.params.layers)
            for p in paths:
                try:
                    module.get_submodule(p)
                except AttributeError:
                    raise RecipeError(f"the model has no module '{p}'; 'pipeline layers MODEL' lists them",
                                      where) from None
        else:
            paths = residual_branches(module)
        self.paths = paths
        self.active_iteration = -1
        if not paths:
            if self.params.required:
                raise RecipeError("the model has no residual blocks this step recognises, so there is no skip "
                                  "connection to favour; remove this step, name the branch modules in 'layers', "
                                  "or set 'required: false'", where)
            return
        gamma, erosion = self.params.gamma, self.params.erosion

        def hook(_module, _inputs, output):
            # the loop calls apply() in the iterations the step's schedule allows, before the model
            if self.active_iteration != ctx.iteration or not torch.is_grad_enabled():
                return output
            if erosion:
                shape = (output.shape[0],) + (1,) * (output.dim() - 1)
                # asked for each time: a resumed run restores the generators after setup
                u = torch.rand(shape, generator=ctx.generator(self), dtype=torch.float64)
                output = output * (1 - erosion + 2 * erosion * u).to(output.device, output.dtype)
            return _scale_grad().apply(output, gamma)

        for p in paths:  # the model is built for this run alone, so the hooks need no removing
            module.get_submodule(p).register_forward_hook(hook)

    def apply(self, ctx, x):
        self.active_iteration = ctx.iteration
        return x

    def record(self) -> dict:
        if not hasattr(self, "paths"):
            return {}
        if not self.paths:
            return {"branches": 0, "note": "the model has no residual blocks: its gradient is the plain one"}
        facts = {"branches": len(self.paths)}
        if self.params.erosion:
            facts["erosion"] = self.params.erosion
        return facts


@hookimpl
def register_steps(registry):
    registry.add_step(SkipGradient)
