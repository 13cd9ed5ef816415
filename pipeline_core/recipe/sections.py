"""The recipe format: the typed top level of a recipe file.

These names are fixed because other tools rely on them: ``iterations``, ``seed``, ``device``,
``model`` (``name``, ``weights``, ``mean``, ``std``, ``size``, ``categories``), ``steps`` and
``output``. Each step's own keys are defined by the step's ``Params`` model.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from pipeline_core.step import MAX_SIDE

MAX_BATCH = 4096
#: the normalisation a model may ask for: (x - mean) / std stays far inside float32 within these
MAX_MEAN = 1e4
MIN_STD, MAX_STD = 1e-6, 1e4
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


class Section(BaseModel):
    # NaN or infinity in a recipe is always a typo (.nan, .inf) and would only surface mid-run
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelSection(Section):
    """Which classifier to run in reverse, and how it wants its input."""

    name: str = Field("inception_v3", description="A torchvision classifier name, or a model a plugin adds.")
    weights: str | None = Field(
        None, description="A local state-dict file for the architecture 'name' (offline use, fine-tuned models)."
    )
    mean: tuple[float, float, float] | None = Field(None, description="Per-channel mean the model was trained with.")
    std: tuple[float, float, float] | None = Field(None, description="Per-channel std the model was trained with.")
    size: int | None = Field(None, ge=8, le=MAX_SIDE, description="Side in pixels the model sees; the view is resized.")
    categories: Union[list[str], str, None] = Field(
        None, description="Class names in output order, or a text file with one name per line."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for the model builder.")
    ensemble: list[str] = Field(
        default_factory=list, max_length=8,
        description="More classifiers, each NAME[,KEY=VALUE...] as --model takes it: every view goes through "
                    "them too, at their own size and normalisation, and their logits are averaged with this "
                    "model's (a prior borrowed from other models: plausible mode). They need the same classes.")

    @field_validator("std")
    @classmethod
    def _positive(cls, value):
        if value is not None and any(v <= 0 for v in value):
            raise ValueError("every std must be positive")
        if value is not None and any(not MIN_STD <= v <= MAX_STD for v in value):
            raise ValueError(f"every std must lie in {MIN_STD:g}..{MAX_STD:g} (beyond, the normalised image "
                             f"overflows 32-bit floats), got {list(value)}")
        return value

    @field_validator("mean")
    @classmethod
    def _bounded(cls, value):
        if value is not None and any(abs(v) > MAX_MEAN for v in value):
            raise ValueError(f"every mean must lie in -{MAX_MEAN:g}..{MAX_MEAN:g}, got {list(value)}")
        return value


class OutputSection(Section):
    """What the run folder gets besides the final PNGs and run.json."""

    video: bool = Field(True, description="Write video.mp4 of the evolving batch.")
    frame_every: int = Field(1, ge=1, description="A video frame every N iterations (the last one always).")
    fps: int = Field(25, ge=1, le=240, description="Frames per second of the video.")
    logits_panel: bool = Field(True, description="Plot each image's logits beside it, targets in red.")
    tile: int | None = Field(None, ge=16, le=MAX_SIDE, description="Side of each image in the video grid.")
    columns: int | None = Field(None, ge=1, description="Images per row in the grid (default: about square).")
    checkpoint_every: int = Field(0, ge=0, description="Save a resumable checkpoint every N iterations (0: at the end only).")
    writers: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra outputs from writer plugins: [{writer: NAME, ...options}]."
    )


class PerformanceSection(Section):
    """Speed settings; none of them changes the maths beyond floating-point rounding."""

    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Autocast dtype for the model.")
    channels_last: bool = Field(False, description="NHWC memory format for the model (faster on GPUs).")
    compile: bool = Field(False, description="torch.compile the model.")
    cudnn_benchmark: bool = Field(False, description="Let cuDNN pick the fastest kernels (non-deterministic).")
    deterministic: bool = Field(False, description="Ask PyTorch for deterministic kernels on the GPU.")
    max_rows: Union[Annotated[StrictInt, Field(ge=1, le=1_000_000)], Literal["auto"], None] = Field(
        None,
        description="The most rows (images x views) the model takes in one pass; a bigger batch goes through in "
                    "chunks, each a gradient checkpoint (its activations recomputed in the backward pass), so "
                    "memory holds one chunk's. 'auto': one pass until the device runs out of memory, then halved "
                    "until it fits (GPUs; run.json records what it became). Default: one pass.",
    )
    threads: int | None = Field(
        None, ge=1, le=1024,
        description="CPU threads for PyTorch (default: the cores not busy with other work when the run starts, "
                    "at least 1, or OMP_NUM_THREADS where set; --threads N sets it). The thread count changes how "
                    "sums are split, hence the last bits: run.json records it so a replay uses the same.",
    )


class RecipeModel(Section):
    """A recipe: the run's shape, the model, the steps and the outputs."""

    description: str | None = Field(None, description="Free text: what this recipe shows.")
    iterations: int = Field(100, ge=1, le=1_000_000, description="Iterations of the optimisation loop.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seeds every random generator of the run.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.",
                        json_schema_extra={"pattern": f"^({DEVICE_PATTERN})$"})
    batch: int | None = Field(
        None, ge=1, le=MAX_BATCH, description="Images optimised together (default: from the photos or target lists)."
    )
    model: ModelSection = Field(default_factory=ModelSection)
    steps: list[Any] = Field(..., min_length=1, description="The steps, each a mapping with a 'step' key.")
    output: OutputSection = Field(default_factory=OutputSection)
    performance: PerformanceSection = Field(default_factory=PerformanceSection)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        name = value.strip().lower()
        if not re.fullmatch(DEVICE_PATTERN, name):
            raise ValueError(f"unknown device '{value}': use auto, cpu, cuda, cuda:N or mps")
        return name
