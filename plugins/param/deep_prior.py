"""deep-prior: the image is the output of a small, randomly initialised convolutional network.

Ulyanov et al. 2018 ("Deep Image Prior") found that the *structure* of an untrained
encoder-decoder network is itself a prior for natural images: fitted by gradient descent, such
a network produces smooth regions, edges and repeated structure long before it produces noise.
Used for activation maximisation (their section 4) it gave pictures with more coherent,
object-like structure than hand-written regularisers. Here it is one more parameterisation:
the optimiser moves the network's weights; the network maps a fixed noise code to the image.

Each render, per image ``b``::

    h      = net_b(z_b)                           (encoder-decoder with skip connections)
    image  = sigmoid(M @ (gain * h) + offset_b)   (M: colour_mixing_matrix)

Choices:

- **One network per image.** The batch's networks are one set of grouped convolutions (``groups
  = batch``), so the images stay independent (as with pixels or a spectrum) and the batch costs
  one call per layer. Adam's moments are per element, so they are per image too.
- **The offset** makes the map exact for any starting image: ``set_image`` sets ``offset =
  logit(image) - M @ (gain * h)``, so a photograph start (transfiguration), an ``on: image``
  transform or a resumed run shows exactly the pixels it gave, and the network parameterises
  the *change* from there. A new size draws a new code at that size; the weights are kept
  (the network is convolutional).
- **Instance normalisation** after each convolution (DIP used batch norm on a batch of one,
  which is the same thing) keeps every layer's scale fixed whatever the weights do.
- **Use it with ``adam``** (or ``nadam``): ``gradient-step``'s ``normalize`` treats each tensor's
  first dimension as the image, which here is one filter of one image's network.
- **On a GPU** the padding's and the upsampling's backward passes have no deterministic
  kernels: with ``performance.deterministic`` a run is repeatable on the CPU, not bit for bit on
  a GPU (the run lists them under ``determinism_warnings``).
- **Costs** far more than a spectrum: at 224 px, width 32, about 1 G multiply-adds per image forward;
  ``best_class.yaml`` with it in place of ``fourier-image`` took 2.8 times as long on one CPU
  thread (MobileNetV2, 12 images, 256 iterations).
"""

from __future__ import annotations

import math

from pydantic import Field

from pipeline_core.hookspecs import hookimpl
from pipeline_core.parameterization import Parameterization, colour_mixing_matrix
from pipeline_core.step import Step, StepKind, StepParams

from ..lazy_imports import torch


class DeepPrior(Parameterization):
    """sigmoid(M @ gain * net(z) + offset), net a grouped encoder-decoder, one per image."""

    name = "deep-prior"

    def __init__(self, image: torch.Tensor, width: int = 32, depth: int = 4, code: int = 16,
                 skip: int = 4, gain: float = 1.0, decorrelate: bool = True, eps: float = 1e-3,
                 generator: torch.Generator | None = None):
        self.width, self.depth, self.code, self.skip = int(width), int(depth), int(code), int(skip)
        self.gain, self.eps = float(gain), float(eps)
        self.device = image.device
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        # one draw from the step's generator; every later draw (weights for a new batch, the code
        # for a new size) is seeded from it and the shape, so a resumed run draws the same
        self.seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        mix = colour_mixing_matrix() if decorrelate else torch.eye(3)
        self.mix = mix.to(self.device)
        self.batch = 0
        self.weights: list[torch.Tensor] = []
        self.z: torch.Tensor | None = None
        self.set_image(image)

    # -- the network ------------------------------------------------------------------------
    def _draws(self, *shape: int) -> torch.Generator:
        """A generator for one draw, seeded by the step's seed and what the draw is for."""
        seed = self.seed
        for n in shape:
            seed = (seed * 1_000_003 + n) % (2**63 - 1)
        return torch.Generator().manual_seed(seed)

    def _conv_weight(self, c_out: int, c_in: int, k: int, generator: torch.Generator) -> torch.Tensor:
        fan_in = c_in * k * k
        draw = torch.randn((self.batch * c_out, c_in, k, k), generator=generator)
        return (draw * math.sqrt(2.0 / fan_in)).to(self.device).requires_grad_(True)

    def _build(self, batch: int) -> None:
        """Draw the weights of ``batch`` networks: per level down, conv, skip; then up, conv."""
        self.batch = batch
        w, s, d = self.width, self.skip, self.depth
        shapes: list[tuple[int, int, int]] = []  # (out, in, kernel), in the order _net takes them
        c_in = self.code
        for _ in range(d):
            shapes += [(w, c_in, 3), (w, w, 3), (s, c_in, 1)]  # down (stride 2), conv, skip
            c_in = w
        for _ in range(d):
            shapes += [(w, w + s, 3), (w, w, 1)]  # up (after upsampling and the skip), conv
        shapes.append((3, w, 1))  # out
        generator = self._draws(1, batch)
        self.weights = [self._conv_weight(c_out, c, k, generator) for c_out, c, k in shapes]

    def _norm_act(self, x: torch.Tensor) -> torch.Tensor:
        # per image and channel over the positions (instance norm), written out so that a level
        # of one pixel gives 0 instead of group_norm's error
        x = (x - x.mean((-2, -1), keepdim=True)) * torch.rsqrt(x.var((-2, -1), unbiased=False, keepdim=True) + 1e-5)
        return torch.nn.functional.leaky_relu(x, 0.2)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
        pad = weight.shape[-1] // 2
        if pad:  # reflected borders (as DIP), repeated where a level is too small to reflect
            mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
            x = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode=mode)
        return torch.nn.functional.conv2d(x, weight, stride=stride, groups=self.batch)

    def _net(self) -> torch.Tensor:
        x = self.z
        weights = iter(self.weights)
        skips = []
        for _ in range(self.depth):
            down, conv, skip = next(weights), next(weights), next(weights)
            skips.append(self._norm_act(self._conv(x, skip)))
            x = self._norm_act(self._conv(x, down, stride=2))
            x = self._norm_act(self._conv(x, conv))
        for level in reversed(range(self.depth)):
            up, conv1 = next(weights), next(weights)
            s = skips[level]
            x = torch.nn.functional.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x.view(self.batch, -1, *x.shape[-2:]), s.view(self.batch, -1, *s.shape[-2:])], 1)
            x = self._norm_act(self._conv(x.view(1, -1, *x.shape[-2:]), up))
            x = self._norm_act(self._conv(x, conv1))
        out = self._conv(x, next(weights))
        return out.view(self.batch, 3, *out.shape[-2:])

    def _code(self, batch: int, h: int, w: int) -> torch.Tensor:
        """The fixed input for this shape, redrawn from the seed (a checkpoint keeps no code)."""
        draw = torch.rand((1, batch * self.code, h, w), generator=self._draws(2, batch, h, w))
        return (draw * 0.1).to(self.device)

    def _logits(self) -> torch.Tensor:
        return torch.einsum("ij,bjhw->bihw", self.mix, self.gain * self._net())

    # -- the parameterisation ---------------------------------------------------------------
    def image(self) -> torch.Tensor:
        return torch.sigmoid(self._logits() + self.offset)

    def set_image(self, image: torch.Tensor) -> None:
        image = image.detach().float().to(self.device)
        b, _, h, w = image.shape
        if b != self.batch:
            self._build(b)
        if self.z is None or self.z.shape != (1, b * self.code, h, w):
            self.z = self._code(b, h, w)
        with torch.no_grad():
            self.offset = torch.logit(image.clamp(self.eps, 1 - self.eps)) - self._logits()

    def parameters(self) -> list[torch.Tensor]:
        return self.weights

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"p{i}": p.detach().clone() for i, p in enumerate(self.weights)}
        state.update(offset=self.offset.clone(), seed=torch.tensor(self.seed))
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.offset = state["offset"].to(self.device)
        self.seed = int(state["seed"])
        b, _, h, w = self.offset.shape
        if b != self.batch:  # otherwise the same tensors take the values (an optimiser keeps them)
            self._build(b)
        self.z = self._code(b, h, w)
        with torch.no_grad():
            for i, p in enumerate(self.weights):
                p.copy_(state[f"p{i}"])


class DeepPriorParams(StepParams):
    width: int = Field(32, ge=4, le=256, description="Channels of every layer of the network.")
    depth: int = Field(4, ge=1, le=6, description="Levels of the encoder-decoder (each halves the size).")
    code: int = Field(16, ge=1, le=64, description="Channels of the fixed noise code the network maps to the image.")
    skip: int = Field(4, ge=1, le=64, description="Channels each level passes across to the decoder.")
    gain: float = Field(1.0, gt=0, description="Scale of the network's output, in sigmoid logits.")
    decorrelate: bool = Field(True, description="The network's output moves ImageNet's principal colour axes, not raw R, G, B.")


class DeepPriorStep(Step):
    """Make the image the output of a small random encoder-decoder network (Ulyanov et al.'s prior)."""

    name = "deep-prior"
    kind = StepKind.PARAM
    Params = DeepPriorParams

    def build(self, ctx, image):
        p = self.params
        return DeepPrior(image, width=p.width, depth=p.depth, code=p.code, skip=p.skip, gain=p.gain,
                         decorrelate=p.decorrelate, generator=ctx.generator(self))


@hookimpl
def register_steps(registry):
    registry.add_step(DeepPriorStep)
