"""The step contract: what a step plugin writes.

A step is a class with a ``name``, a ``kind``, a pydantic ``Params`` model (unknown keys are
rejected; field descriptions are the help ``pipeline steps`` prints) and the one method its
kind needs. The loop places a step by its kind and calls it only while its schedule says so;
a step never looks at the iteration to decide whether to run.

Kinds, in the order one iteration runs them:

``init``
    ``init(ctx, image) -> Tensor``: once, before the loop; gets the image so far (``None``
    for the first init step) and returns the (B, 3, H, W) image in [0, 1].
``param``
    ``build(ctx, image) -> Parameterization``: once, after the init steps; decides which
    tensors the update changes (pixels by default, or e.g. a spectrum).
``transform``
    ``apply(ctx, x) -> Tensor``: with ``on: image`` it replaces the stored image before the
    forward pass (the article's blur, resize cycle, colour jitter); with ``on: view`` it
    builds what the model sees, differentiably, leaving the stored image untouched (Lucid).
    A transform that makes sense in one place only says so once, in ``places`` (``crops``:
    ``("view",)``); the host refuses any other ``on:`` with the recipe's file and line.
``objective``
    ``loss(ctx, out, image) -> Tensor``: a loss per image, shape (B,); the loop sums every
    active objective and back-propagates once to the image's parameters.
``update``
    ``update(ctx, params, grads)``: changes the parameters in place (no autograd).

Every step may also define ``bind(plan)`` (check parameters against the run's shape and the
model's classes before anything is loaded; raise ``RecipeError``) and ``setup(ctx)`` (once on
the run's device, before the loop).
"""

from __future__ import annotations

import functools
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pipeline_core.errors import Location, RecipeError

if TYPE_CHECKING:
    import torch
    from pipeline_core.context import RunContext
    from pipeline_core.model import ModelOutput
    from pipeline_core.parameterization import Parameterization
    from pipeline_core.plan import Plan
    from pipeline_core.schedule import Schedule

__all__ = [
    "MAX_SIDE",
    "KIND_METHOD",
    "PLACES",
    "StepKind",
    "StepParams",
    "TransformParams",
    "Step",
    "ramp_range",
]

#: the values a transform's ``on:`` may take (``Step.places``), and what each means in an error
PLACES = ("image", "view")
_MEANING = {"image": "the stored image", "view": "what the model sees"}

#: the largest image side (and model input side) a run accepts; steps that take sizes check against it
MAX_SIDE = 4096


class StepKind(str, Enum):
    INIT = "init"
    PARAM = "param"
    TRANSFORM = "transform"
    OBJECTIVE = "objective"
    UPDATE = "update"

    @property
    def per_iteration(self) -> bool:
        return self in (StepKind.TRANSFORM, StepKind.OBJECTIVE, StepKind.UPDATE)


class StepParams(BaseModel):
    """Base of every step's parameters: unknown keys are an error, never ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


class TransformParams(StepParams):
    """Parameters every transform has: where it acts."""

    on: Literal["image", "view"] = Field(
        "image", description="image: change the stored image (the article); view: only what the model sees (Lucid)."
    )


def ramp_range(low: float, high: float, *, what: str, high_open: bool = False, why: str = "") -> Any:
    """The type of a parameter that is one number or a ``[start, end]`` pair (read with
    :meth:`Step.ramp`), each value within ``[low, high]`` (``[low, high)`` with ``high_open``;
    ``high=float("inf")`` for no upper bound).

    One check for every ramped parameter, with one wording: ``what`` names the value in the
    error ("a standard deviation must lie in [0, 1], not 2.0"), ``why`` adds the reason."""
    bounds = f"be at least {low:g}" if high == float("inf") else f"lie in [{low:g}, {high:g}{')' if high_open else ']'}"
    tail = f": {why}" if why else ""

    def check(v: "float | tuple[float, float]") -> "float | tuple[float, float]":
        for x in v if isinstance(v, tuple) else (v,):
            if not (low <= x < high if high_open else low <= x <= high):
                raise ValueError(f"{what} must {bounds}, not {x}{tail}")
        return v

    return Annotated[Union[float, tuple[float, float]], AfterValidator(check)]


class Step:
    """Base class for steps. Subclasses set the class attributes and one kind method."""

    name: ClassVar[str]
    kind: ClassVar[StepKind]
    Params: ClassVar[type[StepParams]] = StepParams
    #: Heads of the model this step reads besides the logits (e.g. ``{"aux"}``).
    heads: ClassVar[frozenset[str]] = frozenset()
    #: Transforms: the places ``on:`` may name, ``("image", "view")`` or one of them. The host
    #: checks a recipe's ``on:`` against it before ``bind``, so a step never refuses ``on`` itself.
    places: ClassVar[tuple[str, ...]] = PLACES

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_declaration(cls)
        own = cls.__dict__.get("bind")
        if own is not None:  # the host's check runs before the step's own bind, whoever calls it
            cls.bind = _checking_place(own)  # type: ignore[method-assign]

    def __init__(self, params: StepParams, index: int = 0, schedule: "Schedule | None" = None):
        self.params = params
        self.index = index
        #: when the loop runs this step (per-iteration kinds); set before ``bind``
        self.schedule = schedule

    def __repr__(self) -> str:
        return f"<step {self.index} {self.name}>"

    def where(self, key: str | None = None) -> Location:
        """This step's place in the recipe, for a RecipeError: the host adds the file and line."""
        return Location(step_index=self.index, step_name=self.name, key=key)

    def ramp(self, value: "float | tuple[float, float]", iteration: int) -> float:
        """A parameter given as one number or as ``[start, end]``, at ``iteration``: the pair moves
        linearly over the step's active iterations (its start value where there is no schedule)."""
        if not isinstance(value, tuple):
            return float(value)
        t = self.schedule.progress(iteration) if self.schedule is not None else 0.0
        return float(value[0] + (value[1] - value[0]) * t)

    # -- optional hooks -----------------------------------------------------------------
    @classmethod
    def batch_hint(cls, params: StepParams) -> int | None:
        """How many images this step implies (photos, a list of targets), if any."""
        return None

    def bind(self, plan: "Plan") -> None:
        """Check parameters against the run (batch, iterations, classes); before any loading.

        The host has checked ``on:`` against :attr:`places` by then (see ``__init_subclass__``)."""
        _check_place(self)

    def setup(self, ctx: "RunContext") -> None:
        """Prepare on the run's device (buffers, generators), once before the loop."""

    def record(self) -> dict[str, Any]:
        """What the step found while setting up (an octave's sizes, the layers it hooked), for
        run.json's ``step_facts`` under "step N (name)"; called once, after the run."""
        return {}

    # -- the kind methods; a step implements the one its kind needs -------------------
    def init(self, ctx: "RunContext", image: "torch.Tensor | None") -> "torch.Tensor":
        raise NotImplementedError

    def build(self, ctx: "RunContext", image: "torch.Tensor") -> "Parameterization":
        raise NotImplementedError

    def apply(self, ctx: "RunContext", x: "torch.Tensor") -> "torch.Tensor":
        raise NotImplementedError

    def loss(self, ctx: "RunContext", out: "ModelOutput", image: "torch.Tensor") -> "torch.Tensor":
        raise NotImplementedError

    def update(self, ctx: "RunContext", params: "list[torch.Tensor]", grads: "list[torch.Tensor]") -> None:
        raise NotImplementedError

    # -- objectives that aim at classes describe them for run.json and the progress bar --
    def targets(self) -> "list[list[dict[str, Any]]] | None":
        """Per image, the classes this objective pulls toward: ``[{index, name, weight}]``."""
        return None

    def image_labels(self) -> "dict[int, str] | None":
        """Per image index, a few words for what this objective makes of it (``features.14 ch 5``),
        which name the final PNGs of images no class is aimed at; called after ``bind``."""
        return None


def _checking_place(bind: Callable[["Step", "Plan"], None]) -> Callable[["Step", "Plan"], None]:
    """A step's own ``bind``, preceded by the host's check of ``on:`` (RecipeError, key ``on``)."""

    @functools.wraps(bind)
    def checked(self: "Step", plan: "Plan") -> None:
        _check_place(self)
        bind(self, plan)

    return checked


KIND_METHOD = {
    StepKind.INIT: "init",
    StepKind.PARAM: "build",
    StepKind.TRANSFORM: "apply",
    StepKind.OBJECTIVE: "loss",
    StepKind.UPDATE: "update",
}


# -- where a transform acts: the host's check of a recipe's ``on:`` against ``Step.places`` -------
# A transform declares once, on its class, the places it supports; a recipe asking for another
# gets the usual one-line error (file, line, step, key ``on``), so no step refuses ``on:`` in its
# own ``bind``. ``Step`` runs _check_place before every bind and _check_declaration when a step
# class is defined.


def _is_transform(step_cls: type) -> bool:
    return getattr(step_cls, "kind", None) is StepKind.TRANSFORM


def _check_declaration(step_cls: type[Step]) -> None:
    """TypeError unless ``step_cls.places`` is a non-empty tuple of :data:`PLACES` that holds
    its Params' default ``on`` (a default the step refuses would fail every recipe that
    leaves ``on:`` out). Raised when the class is defined, so a plugin with such a step fails
    to import and the host reports it in one line."""
    if not _is_transform(step_cls):
        return
    places: Any = getattr(step_cls, "places", None)
    name = getattr(step_cls, "name", step_cls.__name__)
    if not isinstance(places, tuple) or not places or not set(places) <= set(PLACES):
        raise TypeError(f"step '{name}': places must be a non-empty tuple of {PLACES}, got {places!r}")
    field = getattr(getattr(step_cls, "Params", None), "model_fields", {}).get("on")
    default = getattr(field, "default", None)
    if default is not None and default not in places:
        raise TypeError(f"step '{name}': the default 'on: {default}' of its Params is not among its places "
                        f"{places}; give 'on' a default it supports")


def _check_place(step: Step) -> None:
    """RecipeError (key ``on``) when a transform is asked to act where its class says it cannot."""
    if not _is_transform(type(step)):
        return
    asked = getattr(step.params, "on", None)
    places = type(step).places
    if asked is None or asked in places:
        return
    where = " or ".join(f"{_MEANING[p]} (on: {p})" for p in places)
    raise RecipeError(f"{step.name} acts only on {where}, not on {_MEANING.get(asked, asked)}: "
                      f"use on: {places[0]}", Location(key="on"))
