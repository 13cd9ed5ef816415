"""The real CLI in a subprocess, on the real MobileNetV2, with the MP4 read back."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from conftest import MOBILENET_SETS, RECIPES, ROOT

#: an empty torch hub cache and an unreachable proxy: a download fails at once, as offline
def offline_env(tmp_path) -> dict[str, str]:
    return {"TORCH_HOME": str(tmp_path / "hub"), "https_proxy": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}


def _sets(*extra: str) -> list[str]:
    out: list[str] = []
    for s in [*MOBILENET_SETS, *extra]:
        out += ["--set", s]
    return out


def read_video(path):
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
    return meta, frames


@pytest.mark.slow
def test_castle_recipe_runs_offline_and_writes_video_images_and_record(cli, mobilenet_path, tmp_path):
    out = tmp_path / "run"
    proc = cli("run", str(RECIPES / "castle_from_flowers.yaml"), *_sets("iterations=6"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

    meta, frames = read_video(out / "video.mp4")
    assert len(frames) == 7  # the initial image and one per iteration
    w, h = meta["size"]
    assert h >= 256 and w >= 2 * 256  # a 256 px tile with its logits panel beside it
    assert frames[0].std() > 10  # a real picture, not a blank frame

    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["iterations_done"] == 6
    assert record["device"] == "cpu" and record["seed"] == 0
    assert set(record["versions"]) >= {"python", "torch", "torchvision", "pipeline"}
    assert record["recipe"]["model"]["name"] == "mobilenet_v2"
    assert len(record["images"]) == 2
    for image in record["images"]:
        assert image["targets"] == [{"index": 483, "name": "castle", "weight": 1.0}]
        assert len(image["top5"]) == 5 and 0 < image["top5"][0]["probability"] <= 1
        png = Image.open(out / "images" / image["file"])
        assert png.mode == "RGB" and png.size[0] >= 160
    assert (out / "images" / "grid.png").is_file()
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.slow
def test_same_seed_gives_identical_pngs_and_another_seed_does_not(cli, mobilenet_path, tmp_path):
    recipe = RECIPES / "castle_from_flowers.yaml"
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        proc = cli("run", str(recipe), *_sets("iterations=3"), "--seed", str(seed), "--out", str(tmp_path / name),
                   "--quiet")
        assert proc.returncode == 0, proc.stderr
        runs[name] = (tmp_path / name / "images" / "000_castle.png").read_bytes()
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]  # colour jitter draws differ


@pytest.mark.slow
def test_existing_run_folder_is_not_overwritten_without_force(cli, mobilenet_path, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    proc = cli("run", str(RECIPES / "castle_from_flowers.yaml"), *_sets("iterations=1"), "--out", str(out))
    assert proc.returncode == 2
    assert "--force" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "keep.txt").read_text() == "precious"


@pytest.mark.slow
def test_missing_inception_weights_give_an_actionable_one_line_error(cli, tmp_path):
    recipe = RECIPES / "castle_from_flowers.yaml"
    proc = cli("run", str(recipe), "--set", "iterations=1", "--out", str(tmp_path / "run"), "--quiet",
               env=offline_env(tmp_path))
    assert proc.returncode == 1  # a failed download is a failed run, not a bad recipe
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "inception_v3" in lines[0] and "model.weights" in lines[0]
    assert str(tmp_path / "hub") in lines[0]  # where to put the file
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and "model.weights" in record["message"]


@pytest.mark.slow
def test_validate_and_steps_and_schema(cli, tmp_path):
    proc = cli("validate", str(RECIPES / "castle_from_flowers.yaml"))
    assert proc.returncode == 0 and "valid" in proc.stdout
    proc = cli("steps")
    assert proc.returncode == 0
    for name in ("init-noise", "init-image", "blur", "interpolate", "color-jitter", "rotate", "L1-loss",
                 "target-blend", "octave", "gradient-step", "sign-step", "cross-entropy", "adam"):
        assert name in proc.stdout
    assert "pipeline_plugins.transform.blur" in proc.stdout
    proc = cli("schema")
    schema = json.loads(proc.stdout)
    assert "steps" in schema["properties"]


# -- the command line for newcomers ------------------------------------------------------------------


@pytest.mark.slow
def test_run_with_model_in_one_option_from_the_shells_folder(cli, mobilenet_path, tmp_path):
    """The README's first command: --model in evaluate's syntax, the weights relative to the shell."""
    weights = os.path.relpath(mobilenet_path, ROOT)
    out = tmp_path / "run"
    proc = cli("run", "recipes/castle_from_flowers.yaml", "--model",
               f"mobilenet_v2,weights={weights},mean=0.5,std=0.5,size=224", "--set", "iterations=2", "--out", str(out),
               "--quiet", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "run.json").read_text())
    model = record["model"]
    assert Path(model.pop("weights")).resolve() == mobilenet_path.resolve()
    assert model == {"name": "mobilenet_v2", "mean": [0.5] * 3, "std": [0.5] * 3, "size": 224}
    assert record["images"][0]["targets"][0]["name"] == "castle"


def test_model_option_is_the_same_recipe_as_the_set_lines(mobilenet_path, monkeypatch, registry):
    from pipeline_core.commands.evaluate import model_overrides
    from pipeline_core.recipe.loader import load_recipe

    monkeypatch.chdir(ROOT)
    recipe = RECIPES / "castle_from_flowers.yaml"
    weights = os.path.relpath(mobilenet_path, ROOT)
    short = load_recipe(recipe, registry, model_overrides(f"mobilenet_v2,weights={weights},mean=0.5,std=0.5,size=224"))
    long = load_recipe(recipe, registry, [f"model.weights={weights}" if s.startswith("model.weights=") else s
                                          for s in MOBILENET_SETS])
    assert short.resolved() == long.resolved()
    assert short.download is None  # local weights: nothing to fetch


@pytest.mark.slow
def test_validate_says_when_a_run_will_download(cli, tmp_path):
    proc = cli("validate", str(RECIPES / "castle_from_flowers.yaml"), env=offline_env(tmp_path))
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    (line,) = proc.stdout.strip().splitlines()
    assert "valid" in line and "downloads the weights of inception_v3" in line
    assert f"into {tmp_path / 'hub'}" in line and "checkpoints" in line and "model.weights" in line


@pytest.mark.slow
def test_validate_takes_several_files_one_line_each(cli, mobilenet_path, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "castle_from_flowers.yaml").read_text().replace("step: crops", "step: cropz"))
    good = [RECIPES / "castle_from_flowers.yaml", RECIPES / "octaves.yaml"]
    sets = [a for s in MOBILENET_SETS for a in ("--set", s)]
    proc = cli("validate", str(good[0]), str(bad), str(good[1]), *sets)
    assert proc.returncode == 2
    out = proc.stdout.strip().splitlines()
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert [ln.split(":")[0] for ln in out] == [str(g) for g in good] and all(": valid (" in ln for ln in out)
    assert len(err) == 1 and err[0].startswith(f"error: {bad}:") and "unknown step 'cropz'" in err[0]
    proc = cli("validate", *map(str, good), *sets)
    assert proc.returncode == 0 and len(proc.stdout.strip().splitlines()) == 2


def test_version(cli):
    from pipeline_core import __version__

    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"pipeline {__version__}"


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


REST = re.compile(r"``|:[a-z]+:`|`[^`]+`_")


def test_help_shows_no_rest_markup(cli):
    from pipeline_core.commands.cli import build_parser

    parser = build_parser()
    texts = {"pipeline": parser.format_help()}
    texts.update({f"pipeline {name}": sp.format_help() for name, sp in _subparsers(parser).items()})
    assert set(texts) >= {"pipeline run", "pipeline validate", "pipeline bench", "pipeline evaluate"}
    for name, text in texts.items():
        assert not REST.search(text), f"{name} --help: {REST.search(text).group(0)!r} in\n{text}"
    proc = cli("--help")
    assert proc.returncode == 0 and "run image classifiers in reverse" in proc.stdout and not REST.search(proc.stdout)
    proc = cli("run", "--help")
    assert proc.returncode == 0 and "--model" in proc.stdout and not REST.search(proc.stdout)


def test_bench_takes_model_too(tmp_path, monkeypatch, capsys, registry):
    """--model replaces a model that would need a download (no weights here) by the tiny one."""
    import yaml

    import pipeline_core.commands.cli as cli
    from pipeline_core.testing import tiny_recipe

    monkeypatch.setattr(cli, "_registry", lambda quiet=False: registry)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(model={"name": "inception_v3", "mean": [0.1, 0.2, 0.3]})))
    out = tmp_path / "bench.json"
    code = cli.main(["bench", str(recipe), "--model", "tiny-test-model,size=32", "--iterations", "1", "--rounds", "1",
                     "--warmup", "0", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["batch"] == 1
