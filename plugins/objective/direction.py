"""direction: a direction in a layer's channel space (a mix of channels, e.g. one found by a probe).

The objective is the dot product of each position's activations with the direction, times their
cosine raised to ``power`` (so the angle counts, not only the length), averaged over positions.
With a view step such as ``crops`` the model sees several views of each image; the objective
receives each image's activations averaged over its views (``ModelOutput.per_image``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from pydantic import Field

from pipeline_core.errors import Location, RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.objectives import LayerObjective, LayerParams

from ..lazy_imports import torch


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
                              f"{n} channels", self.where("direction"))
        self.unit = self.vector.to(ctx.device)

    def value(self, ctx, out):
        act = out.layer(self.params.layer)[self.rows]
        act = act.flatten(2).transpose(1, 2) if act.dim() > 2 else act.unsqueeze(1)  # (N, positions, C)
        dot = act @ self.unit
        if self.params.power:
            cos = dot / (act.norm(dim=2) * self.unit.norm() + 1e-8)
            dot = dot * cos.clamp(min=self.params.cos_floor) ** self.params.power
        return dot.mean(1)


@hookimpl
def register_steps(registry):
    registry.add_step(Direction)
