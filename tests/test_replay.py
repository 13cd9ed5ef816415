"""Exact replay: run.json holds everything a run needs, and the same seed gives the same bytes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from pipeline_core.run.engine import Run
from pipeline_core.run.progress import Progress
from pipeline_core.recipe.loader import load_recipe
from pipeline_core.testing import tiny_recipe
from test_interrupt import finish, plugin_env, record, reference_run, start  # noqa: F401
from test_resume import STEP_EXAMPLES, _recipe, one_thread, pngs  # noqa: F401


def run_file(path: Path, run_dir: Path, registry, overrides: tuple[str, ...] = ()):
    run_dir.mkdir(parents=True, exist_ok=True)
    result = Run(load_recipe(path, registry, overrides), registry, run_dir, Progress(), device="cpu").execute()
    assert result.status == "completed", result.message
    return result


def run_dict(recipe: dict, run_dir: Path, registry, overrides: tuple[str, ...] = ()):
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return run_file(path, run_dir, registry, overrides)


@pytest.mark.slow
def test_replaying_run_json_with_the_real_command_gives_the_same_bytes(reference_run, plugin_env, tmp_path):
    replay = tmp_path / "replay"
    # from another folder, with the run.json copied away from the recipe it came from
    copied = tmp_path / "elsewhere" / "run.json"
    copied.parent.mkdir()
    shutil.copy(reference_run / "run.json", copied)
    rc, _out, err = finish(start(["run", str(copied), "--out", str(replay), "--quiet"], plugin_env, cwd=tmp_path))

    assert rc == 0, err
    assert pngs(replay) == pngs(reference_run)
    assert record(replay)["recipe"] == record(reference_run)["recipe"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STEP_EXAMPLES))
def test_same_seed_same_bytes_and_replay_for_every_builtin_step(name, registry, tmp_path):
    recipe = _recipe(STEP_EXAMPLES[name], iterations=5)
    first = run_dict(recipe, tmp_path / "first", registry)
    run_dict(recipe, tmp_path / "second", registry)
    run_file(tmp_path / "first" / "run.json", tmp_path / "replay", registry)

    assert pngs(tmp_path / "first") == pngs(tmp_path / "second") == pngs(tmp_path / "replay")
    assert first.record["deterministic"] is True
    assert first.record["recipe"]["seed"] == 11 and first.record["recipe"]["performance"]["threads"] >= 1


@pytest.mark.parametrize("name", ["init-noise", "color-jitter", "rotate", "jitter", "random-scale", "fourier-image"])
def test_another_seed_changes_the_random_steps(name, registry, tmp_path):
    recipe = _recipe(STEP_EXAMPLES[name], iterations=3)
    if name != "init-noise":  # start from a photo: only the step under test draws random numbers
        recipe["steps"][0] = STEP_EXAMPLES["init-image"]
    run_dict(recipe, tmp_path / "a", registry)
    run_dict(recipe, tmp_path / "b", registry, overrides=("seed=12",))
    assert pngs(tmp_path / "a") != pngs(tmp_path / "b")


def test_replay_finds_relative_files_from_anywhere(registry, tmp_path, monkeypatch):
    """Photos, weights and class names named relative to the recipe are absolute in run.json."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(Path(STEP_EXAMPLES["init-image"]["images"][0]), project / "photo.jpg")
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1(num_classes=4).state_dict(), project / "net.pth")
    (project / "classes.txt").write_text("apple\npear\nplum\nfig\n", encoding="utf-8")
    recipe = {
        "iterations": 3, "seed": 2, "device": "cpu",
        "model": {"name": "squeezenet1_1", "weights": "net.pth", "categories": "classes.txt",
                  "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "size": 64},
        "steps": [{"step": "init-image", "images": ["photo.jpg"], "size": 48},
                  {"step": "color-jitter", "brightness": 0.1},
                  {"step": "L1-loss", "target": "plum"},
                  {"step": "gradient-step", "lr": 0.01, "normalize": "std"}],
        "output": {"video": False},
    }
    (project / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    first = run_file(project / "recipe.yaml", tmp_path / "first", registry)

    saved = first.record["recipe"]
    assert saved["model"]["weights"] == str(project / "net.pth")
    assert saved["model"]["categories"] == ["apple", "pear", "plum", "fig"]
    assert saved["steps"][0]["images"] == [str(project / "photo.jpg")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tmp_path / "first" / "run.json", elsewhere / "run.json")
    monkeypatch.chdir(elsewhere)
    run_file(Path("run.json"), tmp_path / "replay", registry)
    assert pngs(tmp_path / "replay") == pngs(tmp_path / "first")


def test_the_thread_count_is_recorded_and_replayed(registry, tmp_path):
    recipe = tiny_recipe(iterations=2)
    recipe["performance"] = {"threads": 1}
    before = torch.get_num_threads()
    result = run_dict(recipe, tmp_path / "run", registry)
    assert result.record["threads"] == 1 and result.record["recipe"]["performance"]["threads"] == 1
    assert torch.get_num_threads() == before  # the process's own setting is given back


def _gpu_run(registry, tmp_path, deterministic: bool) -> Run:
    recipe = tiny_recipe(iterations=1)
    recipe["performance"] = {"deterministic": deterministic}
    path = tmp_path / f"gpu-{deterministic}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    run = Run(load_recipe(path, registry), registry, tmp_path / "run", Progress(), device="cpu")
    run.device = torch.device("cuda", 0)  # only the record and the backend set-up look at it here
    return run


def _gpu_record(run: Run) -> dict:
    from pipeline_core.run.folder import RunFolder

    return RunFolder(run.recipe, run.run_dir, run.device, run.targets).record.data


def test_the_record_says_when_a_gpu_run_is_not_bitwise_repeatable(registry, tmp_path):
    loose = _gpu_record(_gpu_run(registry, tmp_path, deterministic=False))
    assert loose["deterministic"] is False
    assert "performance.deterministic: true" in loose["determinism_note"]
    strict = _gpu_record(_gpu_run(registry, tmp_path, deterministic=True))
    assert strict["deterministic"] is True and "determinism_warnings" in strict["determinism_note"]
    assert strict["recipe"]["performance"]["deterministic"] is True  # a replay asks for it again


def test_deterministic_mode_sets_up_pytorch_for_repeatable_gpu_kernels(registry, tmp_path, monkeypatch):
    calls: list[tuple] = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    _gpu_run(registry, tmp_path, deterministic=True).setup_backend()
    assert calls == [((True,), {"warn_only": True})]
    assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"

