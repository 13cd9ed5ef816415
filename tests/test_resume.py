"""Checkpoints and ``--resume``: an interrupted run, continued, ends with the same bytes.

The subprocess test resumes the Ctrl-C'd run of test_interrupt.py with the real command. The
in-process tests interrupt with a real SIGINT too (a step signals its own process), which is
fast enough to do for a recipe around every built-in step.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline_core.run.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from pipeline_core.run.engine import Run, load_resume
from pipeline_core.errors import RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.run.progress import Progress
from pipeline_core.recipe.loader import load_recipe
from pipeline_core.step import Step, StepKind, TransformParams
from pipeline_core.testing import tiny_recipe
from test_interrupt import finish, plugin_env, read_frames, record, reference_run, sigint_run, start  # noqa: F401

PHOTO = Path(__file__).resolve().parents[1] / "recipes" / "images" / "flower.jpg"


# -- the real command -------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_after_ctrl_c_is_byte_identical_to_an_uninterrupted_run(sigint_run, reference_run, plugin_env,
                                                                       tmp_path):
    interrupted, rc, err = sigint_run
    assert rc == 130, err
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted, run_dir)

    rc, out, err = finish(start(["run", "--resume", str(run_dir)], plugin_env))

    assert rc == 0, err
    assert "Traceback" not in err
    for name in ("000_class-3.png", "001_class-7.png", "grid.png"):
        assert (run_dir / "images" / name).read_bytes() == (reference_run / "images" / name).read_bytes(), name
    data = record(run_dir)
    assert data["status"] == "completed" and data["iterations_done"] == 20
    assert data["resumed"][0]["from_iteration"] == 8
    assert data["recipe_file"].endswith("gated.yaml")  # the original recipe, not the run.json it resumed from
    assert not (run_dir / "checkpoint.pt").exists() and "checkpoint" not in data
    assert not list(run_dir.glob(".video*"))  # the segments were joined and removed
    joined, straight = read_frames(run_dir / "video.mp4"), read_frames(reference_run / "video.mp4")
    assert len(joined) == len(straight) == 21
    # two encodes of the same pictures: equal up to the codec's loss
    assert np.abs(joined[-1].astype(int) - straight[-1].astype(int)).mean() < 3


# -- in process: a real SIGINT from a step, at a chosen iteration -----------------------------


class SelfSignalParams(TransformParams):
    at: int = -1


class SelfSignal(Step):
    """Sends SIGINT to its own process at iteration ``at``, as a user's Ctrl-C would arrive."""

    name = "test-self-signal"
    kind = StepKind.TRANSFORM
    Params = SelfSignalParams
    armed = True

    def apply(self, ctx, x):
        if SelfSignal.armed and ctx.iteration == self.params.at:
            os.kill(os.getpid(), signal.SIGINT)
        return x


class SelfSignalPlugin:
    @hookimpl
    def register_steps(self, registry):
        registry.add_step(SelfSignal)


pytestmark = pytest.mark.plugins(SelfSignalPlugin())


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions on a shared CPU run far faster on one thread than fighting over two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write(recipe: dict, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def run(recipe: dict, run_dir: Path, registry, armed: bool = False):
    SelfSignal.armed = armed
    try:
        loaded = load_recipe(_write(recipe, run_dir.parent, run_dir.name), registry)
        run_dir.mkdir(parents=True, exist_ok=True)
        return Run(loaded, registry, run_dir, Progress(), device="cpu").execute()
    finally:
        SelfSignal.armed = True


def resume(run_dir: Path, registry):
    loaded = load_recipe(run_dir / "run.json", registry)
    return Run(loaded, registry, run_dir, Progress(), device="cpu", resume=load_resume(run_dir)).execute()


def pngs(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "images").glob("*.png"))}


def with_signal(recipe: dict, at: int) -> dict:
    recipe = copy.deepcopy(recipe)
    first_loop = next(i for i, s in enumerate(recipe["steps"]) if s["step"] not in ("init-noise", "init-image",
                                                                                    "fourier-image", "phase-image", "deep-prior"))
    recipe["steps"].insert(first_loop, {"step": "test-self-signal", "at": at, "on": "view"})
    return recipe


#: One small recipe around each built-in step (the step under test is what varies).
def _recipe(step: dict | None = None, iterations: int = 8, **changes) -> dict:
    recipe = tiny_recipe(iterations=iterations, seed=11, batch=2, **changes)
    recipe["steps"][0].update(scale=0.3, offset=0.35)
    recipe["steps"][1]["target"] = [3, 8]
    if step is None:
        return recipe
    kind = step["step"]
    if kind in ("init-noise", "init-image"):
        recipe["steps"][0] = step
    elif kind in ("fourier-image", "phase-image", "deep-prior"):
        recipe["steps"].insert(1, step)
    elif kind in ("gradient-step", "sign-step", "adam", "nadam"):
        recipe["steps"][-1] = step
    elif kind in ("L1-loss", "cross-entropy", "target-blend", "class-map"):
        recipe["steps"][1] = step
    else:
        recipe["steps"].insert(1, step)
    return recipe


STEP_EXAMPLES: dict[str, dict] = {
    "init-noise": {"step": "init-noise", "distribution": "normal", "scale": 0.1, "offset": 0.5, "size": 32},
    "init-image": {"step": "init-image", "images": [str(PHOTO)], "size": 32},
    "blur": {"step": "blur", "kernel": 3, "sigma": 0.8, "until": 0.5},
    "interpolate": {"step": "interpolate", "sizes": [32, 24, 28], "mode": "bilinear"},
    "color-jitter": {"step": "color-jitter", "brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.05},
    "rotate": {"step": "rotate", "degrees": 20, "translate": 0.1, "scale": [0.9, 1.1]},
    "jitter": {"step": "jitter", "pixels": 3, "on": "view"},
    "random-scale": {"step": "random-scale", "scale": [0.8, 1.2], "on": "view"},
    "octave": {"step": "octave", "scales": [0.5, 1.0]},
    "L1-loss": {"step": "L1-loss", "target": [3, 8], "lambda": 0.01},
    "cross-entropy": {"step": "cross-entropy", "target": [2, 5]},
    "target-blend": {"step": "target-blend", "start": 1, "end": [2, 6]},
    "class-map": {"step": "class-map", "target": [3, 8], "sigma": 0.3},
    "shape-contrast": {"step": "shape-contrast", "target": [3, 8], "grid": 2, "weight": 0.3},
    "gradient-step": {"step": "gradient-step", "lr": 0.02, "normalize": "std"},
    "sign-step": {"step": "sign-step", "epsilon": 0.01},
    "adam": {"step": "adam", "lr": 0.03},
    "fourier-image": {"step": "fourier-image", "noise": 0.1},
    "phase-image": {"step": "phase-image", "noise": 0.1},
    "deep-prior": {"step": "deep-prior", "width": 8, "depth": 2},
    "crops": {"step": "crops", "views": 2, "size": 24},
    "nadam": {"step": "nadam", "lr": 0.03},
    "keep-photo": {"step": "keep-photo", "weight": 50.0, "sigma": 1.0},
    "keep-photo hold": {"step": "keep-photo", "hold": 1.0, "sigma": 1.0},  # its weights chosen at iteration 0
    "noise": {"step": "noise", "std": 0.1},
    "spectrum-jitter": {"step": "spectrum-jitter", "strength": [0.5, 0.2]},
    "tone": {"step": "tone", "weight": 50.0, "std": [0.2, 0.25]},
    "backdrop": {"step": "backdrop", "weight": 20.0, "radius": [0.4, 1.1], "colour": [0.2, 0.2, 0.2]},
    "bn-statistics": {"step": "bn-statistics", "weight": 0.5, "over": "image", "first": 3.0},
    "skip-gradient": {"step": "skip-gradient", "gamma": 0.5, "erosion": 0.3, "layers": ["features.3"],
                      "until": 0.6},
    "channel": {"step": "channel", "layer": "features.3", "channel": [4, 9]},
    "neuron": {"step": "neuron", "layer": "features.3", "channel": 2, "x": 3},
    "direction": {"step": "direction", "layer": "features.2", "direction": [1, -1, 0, 0, 2, 0, 0, 1]},
    "layer": {"step": "layer", "layer": {"features.2": 1.0, "features.4": 0.5}},
    "channel-interpolate": {"step": "channel-interpolate", "layer": "features.3", "start": 1, "end": 6},
    "diversity": {"step": "diversity", "layer": "features.2", "weight": 0.5},
}


def builtin_steps(registry) -> list[str]:
    return sorted(n for n, e in registry.steps.items() if e.plugin.startswith("pipeline_plugins"))


def test_every_builtin_step_has_an_example_here(registry):
    missing = set(builtin_steps(registry)) - set(STEP_EXAMPLES)
    assert not missing, f"add an example of {sorted(missing)} to STEP_EXAMPLES so resume and replay cover it"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STEP_EXAMPLES))
def test_resume_is_byte_identical_around_every_builtin_step(name, registry, tmp_path):
    # the same steps in both runs (each step's generator is seeded by its position)
    recipe = with_signal(_recipe(STEP_EXAMPLES[name], iterations=8), at=3)
    reference = run(recipe, tmp_path / "reference", registry)
    assert reference.status == "completed", reference.message

    stopped = run(recipe, tmp_path / "run", registry, armed=True)
    assert stopped.status == "interrupted" and stopped.iterations_done == 4, stopped.message
    assert load_checkpoint(tmp_path / "run").iteration == 4
    resumed = resume(tmp_path / "run", registry)

    assert resumed.status == "completed" and resumed.iterations_done == 8, resumed.message
    assert pngs(tmp_path / "run") == pngs(tmp_path / "reference")
    # what the steps report (octave's sizes, say) covers the whole run, not the part since the resume
    facts = [json.loads((tmp_path / d / "run.json").read_text()).get("step_facts") for d in ("run", "reference")]
    assert facts[0] == facts[1]


@pytest.mark.slow
def test_resume_twice_with_a_sparse_video_keeps_bytes_and_frame_count(registry, tmp_path):
    recipe = _recipe(STEP_EXAMPLES["color-jitter"], iterations=14, output={"video": True, "frame_every": 3})
    recipe["steps"].insert(2, STEP_EXAMPLES["rotate"])
    recipe["steps"][-1] = STEP_EXAMPLES["adam"]
    signalled = with_signal(recipe, at=4)
    signalled["steps"].insert(2, {"step": "test-self-signal", "at": 9, "on": "view"})
    assert run(signalled, tmp_path / "reference", registry).status == "completed"

    assert run(signalled, tmp_path / "run", registry, armed=True).iterations_done == 5
    second = resume(tmp_path / "run", registry)  # the step at iteration 9 stops it again
    assert second.status == "interrupted" and second.iterations_done == 10
    third = resume(tmp_path / "run", registry)

    assert third.status == "completed"
    assert pngs(tmp_path / "run") == pngs(tmp_path / "reference")
    # frames at 0, 3, 6, 9, 12 and the last (14), interrupted or not
    assert len(read_frames(tmp_path / "run" / "video.mp4")) == len(read_frames(tmp_path / "reference" / "video.mp4")) == 6
    assert [r["from_iteration"] for r in json.loads((tmp_path / "run" / "run.json").read_text())["resumed"]] == [5, 10]


def test_interrupted_before_the_first_iteration_resumes_without_a_repeated_first_frame(registry, tmp_path,
                                                                                      monkeypatch):
    recipe = _recipe(iterations=4, output={"video": True})
    assert run(recipe, tmp_path / "reference", registry).status == "completed"
    # a signal during set-up (here: while the init step draws its noise) stops before iteration 0
    cls = registry.steps["init-noise"].obj
    original = cls.init

    def init_then_signal(self, ctx, image):
        os.kill(os.getpid(), signal.SIGINT)
        return original(self, ctx, image)

    monkeypatch.setattr(cls, "init", init_then_signal)
    stopped = run(recipe, tmp_path / "run", registry)
    monkeypatch.undo()
    assert stopped.status == "interrupted" and stopped.iterations_done == 0
    assert resume(tmp_path / "run", registry).status == "completed"
    assert pngs(tmp_path / "run") == pngs(tmp_path / "reference")
    assert len(read_frames(tmp_path / "run" / "video.mp4")) == 5


# -- the checkpoint file --------------------------------------------------------------------


def test_checkpoints_come_at_the_recipe_interval_and_go_when_the_run_completes(registry, tmp_path, monkeypatch):
    import pipeline_core.run.folder as folder

    written: list[int] = []
    real = folder.save_checkpoint

    def spy(run_dir, checkpoint):
        written.append(checkpoint.iteration)
        real(run_dir, checkpoint)
        assert json.loads((run_dir / "run.json").read_text())["status"] == "running"

    monkeypatch.setattr(folder, "save_checkpoint", spy)
    result = run(_recipe(iterations=10, output={"video": False, "checkpoint_every": 4}), tmp_path / "run", registry)

    assert result.status == "completed"
    assert written == [4, 8]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_failed_checkpoint_write_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    first = Checkpoint(iteration=4, image=torch.rand(1, 3, 8, 8), param={"p0": torch.rand(1, 3, 8, 8)}, steps={},
                       generators={1: torch.Generator().manual_seed(1).get_state()}, segment=0)
    save_checkpoint(tmp_path, first)
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def disk_full(_fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the write of the new file fails before its rename
    second = Checkpoint(**{**first.__dict__, "iteration": 8, "image": torch.zeros(1, 3, 8, 8)})
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, second)
    monkeypatch.undo()

    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(tmp_path).iteration == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary file left


def test_a_truncated_checkpoint_is_one_clear_error(tmp_path):
    save_checkpoint(tmp_path, Checkpoint(iteration=2, image=torch.rand(1, 3, 8, 8), param={}, steps={},
                                         generators={}, segment=0))
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RecipeError) as info:
        load_checkpoint(tmp_path)
    assert "cannot be read" in str(info.value) and "\n" not in str(info.value)


def test_resume_cuts_whole_photos_of_other_shapes_back_to_their_frames(registry, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    files = []
    for name, (h, w) in {"wide": (40, 60), "tall": (60, 40)}.items():
        pixels = (rng.random((h, w, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        files.append(str(tmp_path / f"{name}.png"))
    recipe = with_signal(_recipe({"step": "init-image", "images": files, "size": 24}, iterations=8), at=3)
    reference = run(recipe, tmp_path / "reference", registry)
    assert reference.status == "completed", reference.message
    stopped = run(recipe, tmp_path / "run", registry, armed=True)
    assert stopped.status == "interrupted", stopped.message
    resumed = resume(tmp_path / "run", registry)
    assert resumed.status == "completed", resumed.message
    assert pngs(tmp_path / "run") == pngs(tmp_path / "reference")
    sizes = [Image.open(tmp_path / "run" / "images" / i["file"]).size for i in resumed.record["images"]]
    assert sizes == [(36, 24), (24, 36)]
