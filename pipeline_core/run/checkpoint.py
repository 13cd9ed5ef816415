"""Checkpoints: everything needed to continue a run and end with the same bytes.

A checkpoint holds the image's parameters, every step's own state (an optimiser's moments),
every random generator, the iteration reached and which video segment comes next. It is
written atomically, so a crash while writing leaves the previous checkpoint intact. A resumed
run writes its frames to a new segment; when it ends, the segments are joined into
video.mp4 without re-encoding.

A checkpoint carries the run id of the record it was written with: ``--resume`` continues only
a checkpoint whose id is the run.json's, so a checkpoint left over from another run (or a
file copied in from elsewhere) never continues under a different recipe. Whatever is read
back is checked field by field before it is used: a foreign or tampered file is one clear
error, not a crash in the middle of a run.
"""

from __future__ import annotations

import io
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import imageio_ffmpeg
import numpy as np
import torch

from pipeline_core.errors import RecipeError
from pipeline_core.run.record import atomic_write_bytes

if TYPE_CHECKING:
    from pipeline_core.context import RunContext
    from pipeline_core.step import Step

FILE = "checkpoint.pt"


@dataclass
class Checkpoint:
    iteration: int
    image: torch.Tensor
    param: dict[str, torch.Tensor]
    steps: dict[int, Any]
    generators: dict[int, torch.Tensor]
    segment: int
    wall_seconds: float = 0.0
    state: dict[str, Any] = field(default_factory=dict)
    #: the run id of the record this checkpoint belongs to
    run_id: str = ""

    @classmethod
    def capture(cls, ctx: "RunContext", steps: "list[Step]", iteration: int, segment: int,
                wall_seconds: float, run_id: str = "") -> "Checkpoint":
        assert ctx.param is not None
        step_states = {}
        for step in steps:
            getter = getattr(step, "state_dict", None)
            if getter is not None:
                step_states[step.index] = _to_cpu(getter())
        return cls(
            iteration=iteration,
            image=ctx.param.image().detach().cpu().clone(),
            param=_to_cpu(ctx.param.state_dict()),
            steps=step_states,
            generators={i: g.get_state() for i, g in ctx.generators.items()},
            segment=segment,
            wall_seconds=wall_seconds,
            state=_to_cpu(dict(ctx.state)),
            run_id=run_id,
        )

    def restore(self, ctx: "RunContext", steps: "list[Step]") -> None:
        assert ctx.param is not None
        ctx.param.load_state_dict({k: v.to(ctx.device) for k, v in self.param.items()})
        for step in steps:
            if step.index in self.steps and hasattr(step, "load_state_dict"):
                step.load_state_dict(_to_device(self.steps[step.index], ctx.device))
        for index, state in self.generators.items():
            ctx.generators[index] = torch.Generator().manual_seed(0)
            ctx.generators[index].set_state(state)
        ctx.state.update(_to_device(self.state, ctx.device))


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> None:
    buf = io.BytesIO()
    torch.save(checkpoint.__dict__, buf)
    atomic_write_bytes(run_dir / FILE, buf.getvalue())


#: a checkpoint larger than this is no checkpoint of a run this tool accepts (4096 images of 4096 px)
MAX_BYTES = 64 * 2**30


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensors_only(value: Any, depth: int = 0) -> bool:
    """Plain data and CPU tensors (what a step's state_dict holds), nothing deeper than 32."""
    if depth > 32:
        return False
    if isinstance(value, (torch.Tensor, str, bool, int, float, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(_tensors_only(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _tensors_only(v, depth + 1) for k, v in value.items())
    return False


_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "iteration": ("a whole number", lambda v: _is_int(v) and 0 <= v <= 10**9),
    "image": ("a (batch, 3, height, width) float tensor",
              lambda v: isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[1] == 3 and v.numel() > 0
              and v.is_floating_point()),
    "param": ("a mapping of names to tensors",
              lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                    for k, t in v.items())),
    "steps": ("a mapping of step indices to states",
              lambda v: isinstance(v, dict) and all(_is_int(k) for k in v) and _tensors_only(v)),
    "generators": ("a mapping of step indices to generator states",
                   lambda v: isinstance(v, dict) and all(_is_int(k) and isinstance(t, torch.Tensor)
                                                         and t.dtype == torch.uint8 and t.dim() == 1
                                                         for k, t in v.items())),
    "segment": ("a whole number", lambda v: _is_int(v) and 0 <= v <= 10**6),
    "wall_seconds": ("a number of seconds",
                     lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e12),
    "state": ("a mapping", lambda v: isinstance(v, dict) and _tensors_only(v)),
    "run_id": ("a run id", lambda v: isinstance(v, str) and len(v) <= 200),
}


def _checked(path: Path, data: Any) -> Checkpoint:
    """The checkpoint's fields, each of the type a run writes; RecipeError naming the first that is not."""
    def refuse(why: str) -> RecipeError:
        return RecipeError(f"the checkpoint {path} is not a checkpoint of this tool ({why}); start the run again")

    if not isinstance(data, dict):
        raise refuse(f"it holds a {type(data).__name__}, not a mapping")
    missing = [k for k in ("iteration", "image", "param", "steps", "generators", "segment") if k not in data]
    if missing:
        raise refuse(f"no {', '.join(missing)}")
    unknown = sorted(str(k)[:40] for k in data if k not in _FIELDS)
    if unknown:
        raise refuse(f"unknown field {unknown[0]!r}")
    for key, value in data.items():
        what, ok = _FIELDS[key]
        if not ok(value):
            raise refuse(f"'{key}' is not {what}")
    if not bool(torch.isfinite(data["image"]).all()):
        raise refuse("its image holds NaN or Inf")
    return Checkpoint(**data)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    path = run_dir / FILE
    if not path.is_file():
        raise RecipeError(f"{run_dir} has no {FILE} to resume from (was the run interrupted, or already complete?)")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise RecipeError(f"the checkpoint {path} is {path.stat().st_size / 2**30:.0f} GiB: not a checkpoint of "
                              "this tool; start the run again")
        with warnings.catch_warnings():  # a foreign pickle's protocol warning would be a second line
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except RecipeError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated, foreign (a pickle, not a zip) or from an incompatible version
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise RecipeError(f"the checkpoint {path} cannot be read ({first}); start the run again") from None
    return _checked(path, data)


def segments(run_dir: Path) -> list[Path]:
    parts = sorted(run_dir.glob(".video.part*.mp4"), key=lambda p: int(p.stem.split("part")[1]))
    return parts


def join_segments(run_dir: Path) -> bool:
    """Append every resumed segment to video.mp4 (stream copy). True when video.mp4 exists."""
    video = run_dir / "video.mp4"
    parts = segments(run_dir)
    if not parts:
        return video.is_file()
    inputs = [p for p in [video, *parts] if p.is_file() and p.stat().st_size > 0]
    listing = run_dir / ".video.concat.txt"
    listing.write_text("".join(f"file '{p.resolve()}'\n" for p in inputs), encoding="utf-8")
    joined = run_dir / ".video.joined.mp4"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0",
           "-i", str(listing), "-c", "copy", "-movflags", "+frag_keyframe+empty_moov+default_base_moof", str(joined)]
    # its own session: a Ctrl-C at the terminal while the run finishes must not kill the join
    done = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True)
    listing.unlink(missing_ok=True)
    if done.returncode != 0:
        return video.is_file()
    joined.replace(video)
    for p in parts:
        p.unlink(missing_ok=True)
    return True


def count_frames(video: Path) -> int:
    """Frames in an MP4 (decoded, so a file cut short by a kill counts what it really holds)."""
    if not video.is_file() or video.stat().st_size == 0:
        return 0
    try:
        return int(imageio_ffmpeg.count_frames_and_secs(str(video))[0])
    except Exception:  # noqa: BLE001 - an unreadable video holds no frames worth keeping
        return 0


def trim_video(video: Path, frames: int, fps: int) -> int:
    """Keep only the first ``frames`` frames of ``video`` (re-encoded); returns the frames found.

    Only a run killed without a chance to finish leaves frames past its checkpoint, so the
    re-encoding (slightly lossy) happens only then.
    """
    from pipeline_core.output.video import H264Pipe, VideoWriter

    found = count_frames(video)
    if found <= frames:
        return found
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    w, h = meta["size"]
    tmp = video.with_name(f".{video.name}.trim.mp4")
    # the video writer's encoder and settings: the segments are later joined without
    # re-encoding, which needs every part to share them
    try:
        writer = H264Pipe(tmp, (w, h), fps, VideoWriter.preset)
        try:
            for i, frame in enumerate(reader):
                if i >= frames:
                    break
                writer.write(np.frombuffer(frame, dtype=np.uint8).reshape(h, w, 3))
        finally:
            writer.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        reader.close()
    tmp.replace(video)
    return found
