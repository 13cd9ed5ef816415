"""The real CLI in a subprocess, on the real MobileNetV2, with the MP4 read back."""

from __future__ import annotations

import json

import imageio_ffmpeg
import numpy as np
from PIL import Image

from conftest import MOBILENET_SETS, RECIPES


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


def test_existing_run_folder_is_not_overwritten_without_force(cli, mobilenet_path, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    proc = cli("run", str(RECIPES / "castle_from_flowers.yaml"), *_sets("iterations=1"), "--out", str(out))
    assert proc.returncode == 2
    assert "--force" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "keep.txt").read_text() == "precious"


def test_missing_inception_weights_give_an_actionable_one_line_error(cli, tmp_path):
    recipe = RECIPES / "castle_from_flowers.yaml"
    # an empty hub cache and an unreachable proxy: the download fails at once, as offline
    env = {"TORCH_HOME": str(tmp_path / "hub"), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    proc = cli("run", str(recipe), "--set", "iterations=1", "--out", str(tmp_path / "run"), "--quiet", env=env)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "inception_v3" in lines[0] and "model.weights" in lines[0]
    assert str(tmp_path / "hub") in lines[0]  # where to put the file
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and "model.weights" in record["message"]


def test_validate_and_steps_and_schema(cli, tmp_path):
    proc = cli("validate", str(RECIPES / "castle_from_flowers.yaml"))
    assert proc.returncode == 0 and "valid" in proc.stdout
    proc = cli("steps")
    assert proc.returncode == 0
    for name in ("init-noise", "init-image", "blur", "interpolate", "color-jitter", "rotate", "L1-loss",
                 "target-blend", "octave", "gradient-step", "sign-step", "cross-entropy", "adam"):
        assert name in proc.stdout
    assert "pipeline_plugins.blur" in proc.stdout
    proc = cli("schema")
    schema = json.loads(proc.stdout)
    assert "steps" in schema["properties"]
