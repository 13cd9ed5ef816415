"""layer: DeepDream, the mean square of a whole layer's activations (or several layers', weighted).

Whatever the layer already sees in the image is amplified, so a photo grows the patterns the
layer detects in it. With a view step such as ``crops`` the model sees several views of each
image; the objective receives each image's activations averaged over its views
(``ModelOutput.per_image``).
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import Field, field_validator

from pipeline_core.hookspecs import hookimpl
from pipeline_core.objectives import LayerObjective, LayerParams


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


@hookimpl
def register_steps(registry):
    registry.add_step(DeepDream)
