"""Numerical faults, running out of memory, and the run folder's disk.

Faults come from small test plugins registered in process (a loss that turns NaN at a chosen
iteration, a transform that breaks the image) or from real settings (an absurd step size, an
image too large to allocate). CUDA's out-of-memory error cannot happen without a GPU, so its
message is tested with PyTorch's CUDA queries replaced.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

import pipeline_core.commands.cli as cli
import pipeline_core.run.record as record_module
from pipeline_core.run.engine import Run
from pipeline_core.run.faults import oom_advice
from pipeline_core.hookspecs import hookimpl
from pipeline_core.objectives import ClassObjective, ClassParams
from pipeline_core.run.progress import Progress
from pipeline_core.recipe.loader import load_recipe
from pipeline_core.run.record import atomic_write_json, prepare_run_dir
from pipeline_core.step import Step, StepKind, TransformParams
from pipeline_core.testing import tiny_recipe
from test_interrupt import read_frames
from test_resume import SelfSignalPlugin, one_thread, pngs, resume  # noqa: F401


class BreakParams(ClassParams):
    at: int = 2


class NanLoss(ClassObjective):
    """Adds nothing to the loss until iteration ``at``, then NaN."""

    name = "test-nan-loss"
    Params = BreakParams

    def loss(self, ctx, out, image):
        zero = out.logits[:, 0] * 0
        return zero + float("nan") if ctx.iteration >= self.params.at else zero


class BreakImageParams(TransformParams):
    at: int = 2


class InfImage(Step):
    """Puts an Inf pixel into the stored image at iteration ``at``."""

    name = "test-inf-image"
    kind = StepKind.TRANSFORM
    Params = BreakImageParams

    def apply(self, ctx, x):
        if ctx.iteration == self.params.at:
            x = x.clone()
            x[0, 0, 0, 0] = float("inf")
        return x


class NanUpdate(Step):
    """A plain gradient step that writes NaN into the image at iteration ``at``."""

    name = "test-nan-update"
    kind = StepKind.UPDATE
    Params = BreakImageParams

    def update(self, ctx, params, grads):
        for p, g in zip(params, grads):
            p.sub_(g, alpha=0.01)
            if ctx.iteration == self.params.at:
                p[0, 1, 2, 3] = float("nan")


class OomParams(TransformParams):
    at: int = 1


class CudaOom(Step):
    """Raises CUDA's out-of-memory error at iteration ``at``, as a real GPU would."""

    name = "test-cuda-oom"
    kind = StepKind.TRANSFORM
    Params = OomParams

    def apply(self, ctx, x):
        if ctx.iteration == self.params.at:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 80.00 GiB")
        return x


class FaultPlugin:
    @hookimpl
    def register_steps(self, registry):
        for step in (NanLoss, InfImage, NanUpdate, CudaOom):
            registry.add_step(step)


pytestmark = pytest.mark.plugins(FaultPlugin(), SelfSignalPlugin())


def run(recipe: dict, run_dir: Path, registry):
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    run_dir.mkdir(parents=True, exist_ok=True)
    return Run(load_recipe(path, registry), registry, run_dir, Progress(), device="cpu").execute()


def video_recipe(iterations: int, *extra: dict) -> dict:
    recipe = tiny_recipe(iterations=iterations, batch=2, output={"video": True})
    recipe["steps"][0].update(scale=0.3, offset=0.35)
    recipe["steps"][1:1] = list(extra)
    return recipe


# -- NaN and Inf ---------------------------------------------------------------------------


def test_a_nan_loss_stops_at_that_iteration_naming_the_step_and_keeps_the_last_good_image(registry, tmp_path):
    nan = {"step": "test-nan-loss", "target": 1, "at": 3}
    failed = run(video_recipe(8, nan), tmp_path / "run", registry)
    good = run(video_recipe(3, nan), tmp_path / "good", registry)  # stops before the loss turns NaN

    assert failed.status == "failed" and failed.exit_code == 1
    assert failed.message.startswith("step 1 (test-nan-loss) produced a NaN or Inf loss at iteration 3")
    assert "last good image and frame were kept" in failed.message
    assert failed.iterations_done == 3
    assert pngs(tmp_path / "run") == pngs(tmp_path / "good")  # the image after iteration 2, exactly
    assert len(read_frames(tmp_path / "run" / "video.mp4")) == 4  # frames 0..3, none of a broken image
    data = json.loads((tmp_path / "run" / "run.json").read_text())
    assert data["status"] == "failed" and data["iterations_done"] == 3 and "traceback" not in data
    assert good.status == "completed"


def test_an_update_that_makes_the_image_nan_is_named_and_undone(registry, tmp_path):
    recipe = tiny_recipe(iterations=6)
    recipe["steps"][-1] = {"step": "test-nan-update", "at": 2}
    failed = run(recipe, tmp_path / "run", registry)
    reference = tiny_recipe(iterations=2)
    reference["steps"][-1] = {"step": "test-nan-update", "at": 2}
    run(reference, tmp_path / "reference", registry)

    assert failed.status == "failed" and failed.iterations_done == 2
    assert failed.message.startswith("step 2 (test-nan-update) made the image NaN or Inf at iteration 2")
    assert pngs(tmp_path / "run") == pngs(tmp_path / "reference")  # the image before the broken update


def test_an_absurd_step_size_stops_the_run_and_names_the_step(registry, tmp_path):
    """1e38 is a float32, so validation lets it through (1e39 is refused there); the image grows
    huge, then the loss overflows: the message blames the step size."""
    recipe = tiny_recipe(iterations=8)
    recipe["steps"].append({"step": "gradient-step", "lr": 1e38, "from": 2})
    failed = run(recipe, tmp_path / "run", registry)

    assert failed.status == "failed" and failed.iterations_done in (2, 3)
    assert "step 3 (gradient-step)" in failed.message and "\n" not in failed.message
    assert "NaN or Inf" in failed.message and "lower the step size of step 2 (gradient-step), step 3 " \
        "(gradient-step)" in failed.message and "the image's values reach " in failed.message
    assert all((tmp_path / "run" / "images" / f).is_file() for f in ("000_class-3.png", "grid.png"))


def test_a_transform_that_breaks_the_image_is_named(registry, tmp_path):
    failed = run(video_recipe(6, {"step": "test-inf-image", "at": 4}), tmp_path / "run", registry)
    assert failed.status == "failed" and failed.iterations_done == 4
    assert failed.message.startswith("step 1 (test-inf-image) turned the image into NaN or Inf at iteration 4")
    assert len(read_frames(tmp_path / "run" / "video.mp4")) == 5


def test_a_starting_image_with_inf_is_refused_before_the_loop(registry, tmp_path):
    recipe = tiny_recipe()
    recipe["steps"][0].update(scale=3e38, offset=3e38)  # each a float32, their sum infinite
    failed = run(recipe, tmp_path / "run", registry)
    assert failed.status == "failed" and failed.iterations_done == 0
    assert "step 0 (init-noise) made a starting image with NaN or Inf" in failed.message


def test_the_command_line_reports_a_numerical_fault_in_one_line(registry, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_registry", lambda quiet=False: registry)
    recipe = tiny_recipe(iterations=5)
    recipe["steps"].insert(1, {"step": "test-nan-loss", "target": 1, "at": 1})
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")

    code = cli.main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"])

    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1
    assert len(err) == 1 and "step 1 (test-nan-loss)" in err[0] and "iteration 1" in err[0]
    assert "Traceback" not in err[0]


# -- out of memory --------------------------------------------------------------------------


def test_cuda_out_of_memory_says_which_batch_would_fit(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 78 * 2**30)
    recipe = tiny_recipe(iterations=4, batch=8)
    recipe["steps"].insert(1, {"step": "test-cuda-oom", "at": 1})

    failed = run(recipe, tmp_path / "run", registry)

    assert failed.status == "failed" and failed.exit_code == 1 and failed.iterations_done == 1
    # needed at least 78 + 2 GiB for 8 images; 80% of 80 GiB holds 6 of them
    assert failed.message == ("out of memory on NVIDIA H100 80GB HBM3 (80.0 GiB) with a batch of 8; a batch of about 6 "
                              "should fit (set batch: 6), or try performance.precision: bf16")
    assert len(pngs(tmp_path / "run")) == 9  # the images reached so far are still written


def _scoring_runs_out_of_memory_above(monkeypatch, limit: int) -> list[int]:
    """The final scoring (no autograd) of more than ``limit`` images raises CUDA's OOM error."""
    from pipeline_core.model import ModelAdapter

    seen: list[int] = []
    real = ModelAdapter.__call__

    def call(self, x, *args, **kwargs):
        if not torch.is_grad_enabled():
            seen.append(x.shape[0])
            if x.shape[0] > limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB.")
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(ModelAdapter, "__call__", call)
    return seen


def test_final_images_too_many_to_score_at_once_are_scored_in_pieces(registry, tmp_path, monkeypatch):
    seen = _scoring_runs_out_of_memory_above(monkeypatch, 2)
    done = run(tiny_recipe(iterations=2, batch=8), tmp_path / "run", registry)
    assert done.status == "completed" and not done.message
    assert seen[0] == 8 and max(seen[1:]) <= 2 and sum(seen[1:]) == 8
    images = json.loads((tmp_path / "run" / "run.json").read_text())["images"]
    assert len(images) == 8 and all(len(i["top5"]) == 5 for i in images)


def test_final_images_that_cannot_be_scored_are_still_written(registry, tmp_path, monkeypatch):
    _scoring_runs_out_of_memory_above(monkeypatch, 0)
    done = run(tiny_recipe(iterations=2, batch=4), tmp_path / "run", registry)
    assert done.status == "completed"
    assert "the final images were saved but not scored: OutOfMemoryError" in done.message
    assert len(pngs(tmp_path / "run")) == 5  # four images and the grid
    images = json.loads((tmp_path / "run" / "run.json").read_text())["images"]
    assert [i["top5"] for i in images] == [[]] * 4


def test_out_of_memory_advice_for_small_batches():
    assert "a batch of about 1 should fit" in oom_advice(2, 30 * 2**30, 2**30, 32 * 2**30, "on X")
    one = oom_advice(1, 30 * 2**30, 2**30, 32 * 2**30, "on X")
    assert "even with a batch of 1" in one and "smaller" in one
    assert "a batch of about 4 should fit" in oom_advice(8, 0, 0, 0, "on X")  # nothing measured: halve it


def _overcommit_refuses_huge_allocations() -> bool:
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip() in ("0", "2")
    except OSError:
        return False


@pytest.mark.skipif(not _overcommit_refuses_huge_allocations(),
                    reason="only where the kernel refuses an allocation larger than memory (overcommit 0 or 2)")
def test_an_image_too_large_for_memory_is_a_clear_error(registry, tmp_path):
    recipe = tiny_recipe(batch=4096)
    recipe["steps"][0]["size"] = 4096  # 4096 images of 4096x4096: 768 GiB
    failed = run(recipe, tmp_path / "run", registry)
    assert failed.status == "failed" and failed.iterations_done == 0
    assert failed.message.startswith("out of memory on the CPU with a batch of 4096 (an allocation of 768.0 GiB failed)")


# -- the run folder ---------------------------------------------------------------------------


def test_too_little_free_space_stops_the_run_before_the_first_iteration(registry, tmp_path, monkeypatch):
    real = record_module.shutil.disk_usage
    monkeypatch.setattr(record_module.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=200_000))  # 0.2 MiB left
    failed = run(video_recipe(50), tmp_path / "run", registry)
    assert failed.status == "failed" and failed.exit_code == 2 and failed.iterations_done == 0
    assert "has 0.2 MiB free but this run needs about" in failed.message and "--out another disk" in failed.message
    assert not (tmp_path / "run" / "video.mp4").exists()  # nothing was started


def test_a_full_disk_when_the_folder_is_prepared_is_one_clear_error(tmp_path, monkeypatch):
    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record_module.os, "fsync", full)
    with pytest.raises(record_module.OutputError) as info:
        prepare_run_dir(tmp_path / "run", force=False)
    assert str(info.value) == f"cannot write to the run folder {tmp_path / 'run'}: the disk is full"
    assert list((tmp_path / "run").iterdir()) == []  # the probe file is gone


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A real 512 KiB file system, where the test may mount one (root in a container); else skip."""
    where = tmp_path / "small"
    if os.geteuid() != 0 or not _mount_tmpfs(where, "size=512k"):
        pytest.skip("mounting a small tmpfs needs root and the permission to mount")
    yield where
    subprocess.run(["umount", str(where)], capture_output=True)


@pytest.fixture
def read_only_disk(tmp_path):
    where = tmp_path / "ro"
    if os.geteuid() != 0 or not _mount_tmpfs(where, "ro,size=64k"):
        pytest.skip("mounting a read-only tmpfs needs root and the permission to mount")
    yield where
    subprocess.run(["umount", str(where)], capture_output=True)


def test_a_real_small_disk_is_refused_before_the_optimisation_starts(registry, small_disk, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_registry", lambda quiet=False: registry)
    recipe = tiny_recipe(iterations=400, batch=8, output={"video": True})
    recipe["steps"][0]["size"] = 96
    path = small_disk.parent / "big.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")

    code = cli.main(["run", str(path), "--out", str(small_disk / "run"), "--quiet"])

    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "MiB free but this run needs about" in err[0]
    data = json.loads((small_disk / "run" / "run.json").read_text())
    assert data["status"] == "failed" and data["iterations_done"] == 0


def test_a_read_only_folder_is_refused_before_anything_loads(registry, read_only_disk, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_registry", lambda quiet=False: registry)
    path = read_only_disk.parent / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe()), encoding="utf-8")
    code = cli.main(["run", str(path), "--out", str(read_only_disk / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"error: cannot write to the run folder {read_only_disk / 'run'}: the file system is read-only"


def test_atomic_writes_leave_the_old_file_whole_when_the_new_one_fails(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    atomic_write_json(path, {"status": "running", "iterations_done": 4})
    before = path.read_bytes()

    def crash(_src, _dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(record_module.os, "replace", crash)  # as if killed between write and rename
    with pytest.raises(OSError):
        atomic_write_json(path, {"status": "completed", "iterations_done": 8})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_run_writes_nothing_outside_its_run_folder(registry, tmp_path, monkeypatch):
    """Video, images, run.json, checkpoints, video segments and their joining: all inside."""
    cwd, scratch, runs = tmp_path / "cwd", tmp_path / "tmp", tmp_path / "runs"
    for folder in (cwd, scratch, runs):
        folder.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    recipe = video_recipe(6, {"step": "test-self-signal", "at": 2, "on": "view"})
    recipe["output"]["checkpoint_every"] = 2
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    before = {p for p in tmp_path.rglob("*")}

    loaded = load_recipe(recipe_file, registry)
    assert Run(loaded, registry, runs / "one", Progress(), device="cpu").execute().status == "interrupted"
    assert resume(runs / "one", registry).status == "completed"

    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(runs / "one" in p.parents or p == runs / "one" for p in new), sorted(map(str, new))
    assert not any(scratch.iterdir()) and not any(cwd.iterdir())


def test_an_existing_run_folder_is_kept_without_force_and_replaced_with_it(registry, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_registry", lambda quiet=False: registry)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe()), encoding="utf-8")
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")

    assert cli.main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert cli.main(["run", str(path), "--out", str(out), "--quiet", "--force"]) == 0
    assert (out / "run.json").is_file()
