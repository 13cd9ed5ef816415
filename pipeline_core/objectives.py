"""Helpers for objectives; plugin authors may subclass them.

:class:`ClassObjective` resolves ``target`` (a class name or index, or a list: one per image,
repeated to fill the batch) against the model's own class list at validation time, picks the
model head to read (``logits`` or e.g. InceptionV3's ``aux``), and reports the targets for
run.json and the video's red dots.

:class:`LayerObjective` is the base of objectives on the inside of the model (a channel, a
neuron, a direction, a whole layer): it declares the ``layer:`` heads its layers need, so only
those are hooked; it gives every such objective a ``weight``, a ``sign`` (maximise or minimise)
and the ``images`` of the batch it acts on; and it checks channel numbers against the layer's
real size before the first iteration. A subclass writes :meth:`LayerObjective.value`: the
quantity per image, shape (B,), that ``sign`` raises or lowers.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Sequence, Union

from pydantic import Field, StrictInt

from pipeline_core.errors import Location, RecipeError
from pipeline_core.model import layer_head
from pipeline_core.plan import Plan
from pipeline_core.step import Step, StepKind, StepParams

if TYPE_CHECKING:  # torch is imported where tensors are made, so the host lists and validates without it
    import torch

    from pipeline_core.context import RunContext
    from pipeline_core.model import ModelOutput

__all__ = [
    "ClassRef",
    "Targets",
    "TargetParams",
    "ClassParams",
    "ClassObjective",
    "resolve_classes",
    "list_len",
    "l1_image",
    "Indices",
    "index_list",
    "LayerParams",
    "LayerObjective",
]

ClassRef = Union[StrictInt, str]  # strict: 'target: true' must not mean class 1
Targets = Union[ClassRef, list[ClassRef]]


class TargetParams(StepParams):
    """The ``target`` key alone: for a class objective that reads no head by name (``class-map``)."""

    target: Targets = Field(..., description="Class name or index, or a list (one per image, repeated to fill the batch).")


class ClassParams(TargetParams):
    head: str = Field("logits", description="Model output to read: logits, or a head such as 'aux' (InceptionV3).")


def resolve_classes(plan: Plan, refs: Targets, key: str) -> list[int]:
    try:
        return plan.per_image(refs)
    except RecipeError as exc:
        raise RecipeError(exc.message, Location(key=key)) from None


def list_len(refs: Any) -> int | None:
    return len(refs) if isinstance(refs, list) else None


class ClassObjective(Step):
    kind: ClassVar[StepKind] = StepKind.OBJECTIVE
    Params: ClassVar[type[StepParams]] = ClassParams

    @classmethod
    def batch_hint(cls, params: StepParams) -> int | None:
        return list_len(params.target)

    @property
    def heads(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({self.params.head})

    def bind(self, plan: Plan) -> None:
        self.classes = resolve_classes(plan, self.params.target, "target")
        self.names = [plan.class_name(i) for i in self.classes]

    def setup(self, ctx) -> None:
        import torch

        self.class_tensor = torch.tensor(self.classes, device=ctx.device, dtype=torch.long)

    def picked(self, logits: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Each image's logit of its own class: shape (B,)."""
        classes = self.class_tensor if classes is None else classes
        return logits.gather(1, classes.view(-1, 1)).squeeze(1)

    def targets(self) -> list[list[dict[str, Any]]]:
        return [[{"index": i, "name": n, "weight": 1.0}] for i, n in zip(self.classes, self.names)]


def l1_image(image: torch.Tensor) -> torch.Tensor:
    """Sum of |a| over each image: the article's L1 prior on the input, shape (B,)."""
    return image.abs().flatten(1).sum(1)


# -- objectives on the model's layers -------------------------------------------------------

#: one index, a list of them, or an inclusive range written ``"A-B"`` (``0-15``: sixteen)
Indices = Union[StrictInt, str, list[StrictInt]]

_MAX_RANGE = 4096  #: the largest batch a recipe may have
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def index_list(value: Indices, key: str) -> list[int]:
    """``value`` as a list of indices: ``3`` is ``[3]``, ``"0-3"`` is ``[0, 1, 2, 3]``."""
    if isinstance(value, bool):
        raise RecipeError(f"expected an index, a list or a range like 0-15, got {value!r}", Location(key=key))
    if isinstance(value, int):
        out = [value]
    elif isinstance(value, str):
        m = _RANGE.match(value)
        if not m:
            raise RecipeError(f"'{value}' is not an index range; write it as FIRST-LAST, like 0-15",
                              Location(key=key))
        first, last = int(m.group(1)), int(m.group(2))
        if last < first:
            raise RecipeError(f"the range {value} runs backwards; write {last}-{first}", Location(key=key))
        if last - first >= _MAX_RANGE:  # one index per image: no batch is that large
            raise RecipeError(f"the range {value} holds {last - first + 1} indices, more than the {_MAX_RANGE} "
                              "images a batch may have", Location(key=key))
        out = list(range(first, last + 1))
    else:
        out = list(value)
    if not out:
        raise RecipeError("the list is empty", Location(key=key))
    if any(i < 0 for i in out):
        raise RecipeError(f"indices cannot be negative, got {min(out)}", Location(key=key))
    return out


def _indices_len(value: Any) -> int | None:
    if isinstance(value, (list, str)) and not isinstance(value, bool):
        try:
            return len(index_list(value, ""))
        except RecipeError:
            return None
    return None


class LayerParams(StepParams):
    layer: str = Field(..., description="Path of the module whose output is read, e.g. features.14 or Mixed_5b "
                                        "('pipeline layers MODEL' lists them).")
    weight: float = Field(1.0, ge=0, description="Multiplies the objective.")
    sign: Literal["maximize", "minimize"] = Field("maximize", description="Raise the objective or lower it.")
    images: Indices | None = Field(None, description="The images of the batch it acts on: an index, a list or a "
                                                     "range like 0-3 (default: all of them).")


class LayerObjective(Step):
    """Base of objectives on a layer's activations: ``loss = -+ weight * value`` on its images."""

    kind: ClassVar[StepKind] = StepKind.OBJECTIVE
    Params: ClassVar[type[StepParams]] = LayerParams

    def layers(self) -> list[str]:
        """The module paths this objective reads (default: the ``layer`` parameter)."""
        return [self.params.layer]

    @property
    def heads(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(layer_head(p) for p in self.layers())

    def head_key(self, head: str) -> str:
        """The recipe key that names ``head``'s layer, so a wrong path is reported on its line."""
        return "layer"

    @classmethod
    def batch_hint(cls, params: StepParams) -> int | None:
        images = getattr(params, "images", None)
        if images is None:
            return None
        try:
            return max(index_list(images, "images")) + 1
        except RecipeError:
            return None

    def bind(self, plan: Plan) -> None:
        self.batch = plan.batch
        if self.params.images is None:
            self.image_indices = list(range(plan.batch))
        else:
            self.image_indices = index_list(self.params.images, "images")
            over = [i for i in self.image_indices if i >= plan.batch]
            if over:
                raise RecipeError(f"image {over[0]} is out of range: the batch has images 0..{plan.batch - 1}",
                                  Location(key="images"))
            if len(set(self.image_indices)) != len(self.image_indices):
                raise RecipeError("an image is listed twice", Location(key="images"))

    def per_image(self, value: Indices, key: str) -> list[int]:
        """A parameter given per image (one value for all, or a list repeated to fill the images
        this step acts on) as one index for each of them; call it from ``bind``."""
        items = index_list(value, key)
        n = len(self.image_indices)
        if len(items) > 1 and n % len(items):
            raise RecipeError(f"{len(items)} values do not divide the {n} images this step acts on; "
                              f"give one value, or {n}, or set 'batch' to a multiple of {len(items)}",
                              Location(key=key))
        return [items[i % len(items)] for i in range(n)]

    def setup(self, ctx: "RunContext") -> None:
        import torch

        mask = torch.zeros(self.batch, device=ctx.device)
        mask[self.image_indices] = 1.0
        self.mask = mask
        self.rows = torch.tensor(self.image_indices, device=ctx.device, dtype=torch.long)

    def image_labels(self) -> dict[int, str] | None:
        return {i: f"{self.name} {' '.join(self.layers())}" for i in self.image_indices}

    def channels(self, ctx: "RunContext", path: str) -> int:
        """How many channels the layer at ``path`` has (its activations' second dimension)."""
        return ctx.model.layer_shapes()[path][0]

    def check_channels(self, ctx: "RunContext", path: str, channels: Sequence[int], key: str) -> None:
        """Refuse, before the first iteration, a channel the layer does not have."""
        n = self.channels(ctx, path)
        bad = [c for c in channels if c >= n]
        if bad:
            raise RecipeError(f"channel {bad[0]} is out of range: layer '{path}' has {n} channels (0..{n - 1})",
                              self.where(key))

    def value(self, ctx: "RunContext", out: "ModelOutput") -> torch.Tensor:
        """The quantity ``sign`` acts on, for the images this step acts on: shape (len(images),)."""
        raise NotImplementedError

    def loss(self, ctx: "RunContext", out: "ModelOutput", image: torch.Tensor) -> torch.Tensor:
        value = self.value(ctx, out)
        sign = -1.0 if self.params.sign == "maximize" else 1.0
        import torch

        loss = torch.zeros(self.batch, device=value.device, dtype=value.dtype)
        return loss.index_add(0, self.rows, sign * self.params.weight * value)

    def targets(self) -> None:
        return None
