"""The parameters every built-in update rule shares."""

from __future__ import annotations

from pydantic import Field

from pipeline_core.step import StepParams


class UpdateParams(StepParams):
    clamp: bool = Field(False, description="Clamp the image parameters to [0, 1] after each update.")
