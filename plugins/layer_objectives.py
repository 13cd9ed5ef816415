"""Objectives on the inside of the model: a channel, a neuron, a direction, a whole layer.

Feature visualisation asks what a unit of a hidden layer responds to. Each objective here
reads one or more layers by their module path (``pipeline layers MODEL`` lists them), and each
has the same ``weight``, ``sign`` and ``images`` keys (see
:class:`pipeline_core.objectives.LayerObjective`), so one batch can show channels 0-15 of a
layer side by side, or one image can be dreamed while its neighbour stays untouched.

With a view step such as ``crops`` the model sees several views of each image; the objectives
receive each image's activations averaged over its views (``ModelOutput.per_image``), which
for a channel mean is exactly the mean of the per-view objective.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch
from pydantic import Field, field_validator

from pipeline_core.errors import Location, RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.objectives import Indices, LayerObjective, LayerParams, index_list


def _spatial_mean(act: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) -> (B, C): the mean over every position (nothing to average for a (B, C) layer)."""
    return act.flatten(2).mean(2) if act.dim() > 2 else act


class ChannelParams(LayerParams):
    channel: Indices = Field(..., description="Channel index, a list (one per image, repeated to fill them) or a "
                                              "range like 0-15 (one channel per image).")


class Channel(LayerObjective):
    """The mean activation of one channel of a layer (a different channel per image if listed)."""

    name = "channel"
    Params = ChannelParams

    @classmethod
    def batch_hint(cls, params) -> int | None:
        try:
            n = len(index_list(params.channel, "channel"))
        except RecipeError:  # reported by bind, on its line
            n = 0
        return max(n if n > 1 else 0, super().batch_hint(params) or 0) or None

    def bind(self, plan) -> None:
        super().bind(plan)
        self.channel_list = self.per_image(self.params.channel, "channel")

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.check_channels(ctx, self.params.layer, self.channel_list, "channel")
        self.channel_tensor = torch.tensor(self.channel_list, device=ctx.device, dtype=torch.long)

    def value(self, ctx, out):
        means = _spatial_mean(out.layer(self.params.layer))[self.rows]
        return means.gather(1, self.channel_tensor.view(-1, 1)).squeeze(1)

    def record(self) -> dict[str, Any]:
        return {"layer": self.params.layer, "channels": self.channel_list, "images": self.image_indices}

    def image_labels(self) -> dict[int, str]:
        unit = "ch" if self.name == "channel" else self.name
        return {i: f"{self.params.layer} {unit} {c}" for i, c in zip(self.image_indices, self.channel_list)}


class NeuronParams(ChannelParams):
    x: int | None = Field(None, ge=0, description="Column of the neuron in the layer's grid (default: the centre).")
    y: int | None = Field(None, ge=0, description="Row of the neuron in the layer's grid (default: the centre).")


class Neuron(Channel):
    """One neuron: a channel's activation at one position of the layer's grid (default the centre)."""

    name = "neuron"
    Params = NeuronParams

    def setup(self, ctx) -> None:
        super().setup(ctx)
        shape = ctx.model.layer_shapes()[self.params.layer]
        if len(shape) != 3:
            raise RecipeError(f"layer '{self.params.layer}' has no spatial grid (its output is {tuple(shape)} per "
                              "image); use the channel objective", Location(step_index=self.index,
                                                                            step_name=self.name, key="layer"))
        h, w = shape[1], shape[2]
        self.pos = (h // 2 if self.params.y is None else self.params.y, w // 2 if self.params.x is None else self.params.x)
        for key, v, n in (("y", self.pos[0], h), ("x", self.pos[1], w)):
            if v >= n:
                raise RecipeError(f"{key}={v} is outside layer '{self.params.layer}', whose grid is {h}x{w} "
                                  f"(rows 0..{h - 1}, columns 0..{w - 1}) at the model's input size",
                                  Location(step_index=self.index, step_name=self.name, key=key))

    def value(self, ctx, out):
        act = out.layer(self.params.layer)
        if act.dim() != 4 or act.shape[2] <= self.pos[0] or act.shape[3] <= self.pos[1]:
            raise RecipeError(f"layer '{self.params.layer}' gave a {tuple(act.shape[2:])} grid this iteration, too "
                              f"small for the neuron at row {self.pos[0]}, column {self.pos[1]}")
        picked = act[self.rows, :, self.pos[0], self.pos[1]]
        return picked.gather(1, self.channel_tensor.view(-1, 1)).squeeze(1)

    def record(self) -> dict[str, Any]:
        return {**super().record(), "y": self.pos[0], "x": self.pos[1]} if hasattr(self, "pos") else super().record()


class DirectionParams(LayerParams):
    direction: Union[str, list[float]] = Field(
        ..., description="The direction in the layer's channel space: a list of numbers, or a file (.npy, .pt "
                         "or .txt; relative to the recipe) holding one vector of one number per channel.")
    power: float = Field(1.0, ge=0, description="Exponent of the cosine similarity that multiplies the dot "
                                                "product (0: the plain dot product).")
    cos_floor: float = Field(0.1, ge=0, le=1, description="The cosine is raised to the power only after being "
                                                          "floored at this, so opposite directions still pull.")


def _read_vector(path: Path) -> torch.Tensor:
    import numpy as np

    suffix = path.suffix.lower()
    if suffix == ".npy":
        data = torch.from_numpy(np.load(path, allow_pickle=False))
    elif suffix == ".pt":
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"it holds a {type(data).__name__}, not a tensor")
    elif suffix == ".txt":
        data = torch.from_numpy(np.loadtxt(path, dtype=np.float64, ndmin=1))
    else:
        raise ValueError("the file must end in .npy, .pt or .txt")
    return data


class Direction(LayerObjective):
    """A direction in a layer's channel space: dot product times the cosine to a power, averaged over positions."""

    name = "direction"
    Params = DirectionParams

    def bind(self, plan) -> None:
        super().bind(plan)
        given = self.params.direction
        if isinstance(given, str):
            path = Path(given).expanduser()
            path = path if path.is_absolute() else plan.base_dir / path
            if not path.is_file():
                raise RecipeError(f"no direction file at {path}", Location(key="direction"))
            try:
                vector = _read_vector(path)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is the same fix
                raise RecipeError(f"cannot read the direction from {path}: {exc}", Location(key="direction")) from None
        else:
            vector = torch.tensor(given, dtype=torch.float64)
        vector = vector.squeeze()
        if vector.dim() != 1 or vector.numel() == 0:
            raise RecipeError(f"the direction must be one vector (one number per channel), got shape "
                              f"{tuple(vector.shape)}", Location(key="direction"))
        if not torch.isfinite(vector).all() or not bool(vector.abs().sum() > 0):
            raise RecipeError("the direction must be finite and not all zero", Location(key="direction"))
        self.vector = vector.float()

    def setup(self, ctx) -> None:
        super().setup(ctx)
        n = self.channels(ctx, self.params.layer)
        if self.vector.numel() != n:
            raise RecipeError(f"the direction has {self.vector.numel()} numbers but layer '{self.params.layer}' has "
                              f"{n} channels", Location(step_index=self.index, step_name=self.name, key="direction"))
        self.unit = self.vector.to(ctx.device)

    def value(self, ctx, out):
        act = out.layer(self.params.layer)[self.rows]
        act = act.flatten(2).transpose(1, 2) if act.dim() > 2 else act.unsqueeze(1)  # (N, positions, C)
        dot = act @ self.unit
        if self.params.power:
            cos = dot / (act.norm(dim=2) * self.unit.norm() + 1e-8)
            dot = dot * cos.clamp(min=self.params.cos_floor) ** self.params.power
        return dot.mean(1)


class DeepDreamParams(LayerParams):
    layer: Union[str, dict[str, float]] = Field(  # type: ignore[assignment]
        ..., description="A layer's path, or several as {path: weight} (each layer's mean square is weighted).")

    @field_validator("layer")
    @classmethod
    def _layers(cls, layer: Union[str, dict[str, float]]) -> Union[str, dict[str, float]]:
        if isinstance(layer, dict):
            if not layer:
                raise ValueError("give at least one layer")
            if any(w < 0 for w in layer.values()):
                raise ValueError("layer weights cannot be negative")
        return layer


class DeepDream(LayerObjective):
    """DeepDream: the mean square of a layer's activations (or a weighted sum over several layers)."""

    name = "layer"
    Params = DeepDreamParams

    def weighted(self) -> dict[str, float]:
        layer = self.params.layer
        return dict(layer) if isinstance(layer, dict) else {layer: 1.0}

    def layers(self) -> list[str]:
        return list(self.weighted())

    def value(self, ctx, out):
        total = None
        for path, w in self.weighted().items():
            term = w * out.layer(path)[self.rows].pow(2).flatten(1).mean(1)
            total = term if total is None else total + term
        assert total is not None
        return total

    def record(self) -> dict[str, Any]:
        return {"layers": self.weighted(), "images": self.image_indices}


class InterpolateParams(LayerParams):
    start: int = Field(..., ge=0, description="The channel the first image shows.")
    end: int = Field(..., ge=0, description="The channel the last image shows.")
    end_layer: str | None = Field(None, description="The layer of 'end', if not 'layer'.")


class ChannelInterpolate(LayerObjective):
    """The batch walks from one channel to another: image i of n weighs them (n-1-i)/(n-1) and i/(n-1)."""

    name = "channel-interpolate"
    Params = InterpolateParams

    def layers(self) -> list[str]:
        return list(dict.fromkeys([self.params.layer, self.params.end_layer or self.params.layer]))

    def head_key(self, head: str) -> str:
        end = self.params.end_layer
        return "end_layer" if end and head.endswith(":" + end) and end != self.params.layer else "layer"

    @classmethod
    def batch_hint(cls, params) -> int | None:
        return max(super().batch_hint(params) or 0, 2)  # without 'batch', at least two images to compare

    def bind(self, plan) -> None:
        super().bind(plan)
        n = len(self.image_indices)
        if n < 2:
            raise RecipeError("channel-interpolate needs at least two images to walk between channels; "
                              "set 'batch' (or 'images') to 2 or more", Location(key="images"))
        self.mix = [i / (n - 1) for i in range(n)]

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.check_channels(ctx, self.params.layer, [self.params.start], "start")
        self.check_channels(ctx, self.params.end_layer or self.params.layer, [self.params.end], "end")
        self.t = torch.tensor(self.mix, device=ctx.device)

    def value(self, ctx, out):
        a = _spatial_mean(out.layer(self.params.layer))[self.rows, self.params.start]
        b = _spatial_mean(out.layer(self.params.end_layer or self.params.layer))[self.rows, self.params.end]
        return (1 - self.t) * a + self.t * b

    def record(self) -> dict[str, Any]:
        return {"start": self.params.start, "end": self.params.end, "end_weights": self.mix}

    def image_labels(self) -> dict[int, str]:
        walk = f"{self.params.layer} ch {self.params.start} to {self.params.end}"
        return {i: f"{walk} {t:.2f}" for i, t in zip(self.image_indices, self.mix)}


@hookimpl
def register_steps(registry):
    for step in (Channel, Neuron, Direction, DeepDream, ChannelInterpolate):
        registry.add_step(step)
