"""init-image keeps each whole photo by default; a batch of other shapes shares one canvas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
import yaml
from PIL import Image

from conftest import RECIPES
from pipeline_core.commands import cli
from pipeline_core.testing import TINY_SIZE, make_registry, run_recipe_dict, tiny_recipe

REGISTRY = make_registry()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    out = {}
    for name, (h, w) in {"wide": (40, 60), "tall": (60, 40)}.items():
        base = rng.random((h // 4, w // 4, 3))  # smooth enough that resizing keeps it recognisable
        pixels = np.asarray(Image.fromarray((base * 255).astype("uint8")).resize((w, h), Image.BILINEAR))
        Image.fromarray(pixels).save(folder / f"{name}.png")
        out[name] = folder / f"{name}.png"
    return out


def _run(tmp_path: Path, init: dict) -> tuple[dict, Path]:
    recipe = tiny_recipe(iterations=1, steps=[init, {"step": "L1-loss", "target": 3},
                                              {"step": "gradient-step", "lr": 1e-6}])
    result = run_recipe_dict(recipe, tmp_path / "run", registry=REGISTRY)
    assert result.status == "completed", result.message
    return result.record, tmp_path / "run" / "images"


def test_the_default_keeps_the_whole_photo_at_the_models_size_on_its_short_side(photos, tmp_path):
    record, images = _run(tmp_path, {"step": "init-image", "images": [str(photos["wide"])]})
    out = Image.open(images / record["images"][0]["file"])
    assert out.size == (48, TINY_SIZE)  # 60x40 -> 48x32: the whole frame, its aspect ratio kept
    photo = TF.resize(TF.pil_to_tensor(Image.open(photos["wide"])).float() / 255, [32, 48], antialias=True)
    got = torch.from_numpy(np.array(out)).permute(2, 0, 1).float() / 255
    assert (got - photo).abs().mean() < 0.02  # the photo itself, not a crop of it


def test_photos_of_other_shapes_share_a_canvas_and_each_png_is_its_own_frame(photos, tmp_path):
    record, images = _run(tmp_path, {"step": "init-image", "images": [str(photos["wide"]), str(photos["tall"])],
                                     "size": 24})
    sizes = [Image.open(images / entry["file"]).size for entry in record["images"]]
    assert sizes == [(36, 24), (24, 36)]
    grid = np.asarray(Image.open(images / "grid.png"))
    assert grid.shape[0] >= 36  # the canvas holds the tall photo whole
    wide = np.asarray(Image.open(images / record["images"][0]["file"])).astype(float)
    photo = TF.resize(TF.pil_to_tensor(Image.open(photos["wide"])).float(), [24, 36], antialias=True)
    assert np.abs(wide - photo.permute(1, 2, 0).numpy()).mean() < 6  # no margin in the PNG


def test_a_canvas_size_fits_each_photo_inside_it(photos, tmp_path):
    record, images = _run(tmp_path, {"step": "init-image", "images": [str(photos["wide"]), str(photos["tall"])],
                                     "size": [30, 30]})
    assert [Image.open(images / e["file"]).size for e in record["images"]] == [(30, 20), (20, 30)]


def test_crop_and_stretch_are_as_before(photos, tmp_path):
    record, images = _run(tmp_path / "c", {"step": "init-image", "images": [str(photos["wide"])], "size": 32,
                                           "fit": "crop"})
    assert Image.open(images / record["images"][0]["file"]).size == (32, 32)
    record, images = _run(tmp_path / "s", {"step": "init-image", "images": [str(photos["tall"])], "size": [20, 30],
                                           "fit": "stretch"})
    assert Image.open(images / record["images"][0]["file"]).size == (30, 20)


def test_a_canvas_too_large_is_one_line(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_registry", lambda quiet=False: REGISTRY)
    recipe = tiny_recipe(steps=[{"step": "init-image", "images": [str(photos["wide"])], "size": 3000},
                                {"step": "L1-loss", "target": 3}, {"step": "gradient-step", "lr": 0.1}])
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "step 0 (init-image)" in err and "3000x4500 canvas" in err


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")
                                          if "init-image" in p.read_text(encoding="utf-8").split("\ndescription:")[-1]))
def test_the_shipped_photo_recipes_crop_as_their_pictures_were_made_and_say_how_to_keep_the_photo(recipe):
    text = (RECIPES / recipe).read_text(encoding="utf-8")
    init = next(s for s in yaml.safe_load(text)["steps"] if s["step"] == "init-image")
    assert init["fit"] == "crop"
    header = text.split("\ndescription:")[0]
    assert "--set init-image.fit=whole" in header


def test_the_grid_and_the_video_show_each_real_photo_in_its_own_frame_not_the_filled_margin(tmp_path):
    """cat.png (3:2) and owl.jpg (4:3) share a 96x64 canvas; the owl fills its margin with its
    edge pixels for the model, but grid.png and the video draw the background there."""
    import imageio_ffmpeg

    photos = [str(RECIPES / "images" / "cat.png"), str(RECIPES / "images" / "owl.jpg")]
    recipe = tiny_recipe(iterations=1, steps=[{"step": "init-image", "images": photos, "size": 64},
                                              {"step": "L1-loss", "target": 3},
                                              {"step": "gradient-step", "lr": 1e-6}],
                         output={"video": True, "logits_panel": False})
    result = run_recipe_dict(recipe, tmp_path / "run", registry=REGISTRY)
    images = tmp_path / "run" / "images"
    cat, owl = (np.asarray(Image.open(images / e["file"]).convert("RGB")) for e in result.record["images"])
    assert cat.shape == (64, 96, 3) and owl.shape[0] == 64 and owl.shape[1] < 90  # two shapes, one canvas
    margin = (96 - owl.shape[1]) // 2  # the owl lies centred on the canvas
    grid = np.asarray(Image.open(images / "grid.png").convert("RGB"))
    pad = 2
    assert grid.shape[:2] == (64 + 2 * pad, 2 * 96 + 3 * pad)  # one row, each cell the canvas's size
    owl_cell = grid[pad: pad + 64, 2 * pad + 96: 2 * pad + 2 * 96]
    assert (grid[pad: pad + 64, pad: pad + 96] == cat).all()  # the cat fills its cell
    assert (owl_cell[:, margin: margin + owl.shape[1]] == owl).all()  # the owl as its PNG, centred
    edges = np.concatenate([owl[:, :1], owl[:, -1:]], axis=1)
    assert (edges < 235).any()  # so a repeated-edge fill would not look like the background
    for side in (owl_cell[:, :margin], owl_cell[:, margin + owl.shape[1]:]):
        assert side.size and (side == 255).all()  # the background, not the owl's edge repeated
    last = list(imageio_ffmpeg.read_frames(str(tmp_path / "run" / "video.mp4")))[-1]
    meta_w, meta_h = grid.shape[1], grid.shape[0]
    frame = np.frombuffer(last, np.uint8).reshape(meta_h, meta_w, 3)
    video_cell = frame[pad: pad + 64, 2 * pad + 96: 2 * pad + 2 * 96].astype(int)
    for side in (video_cell[:, 1: margin - 1], video_cell[:, margin + owl.shape[1] + 1: -1]):
        assert side.min() > 235  # white but for H.264's rounding next to the photo


def test_a_writers_grid_draws_each_image_in_its_frame(tmp_path):
    from pipeline_core.writers import FrameInfo, grid

    images = torch.full((2, 3, 10, 20), 0.2)
    info = FrameInfo(run_dir=tmp_path, batch=2, iterations=1, categories=["a"], targets=[[], []], fps=5,
                     tile=None, columns=2, frames=[(0.0, 0.25, 1.0, 0.5), None])
    picture = grid(images, info=info)
    first, second = picture[2:12, 2:22], picture[2:12, 24:44]
    assert (first[:, 5:15] == 51).all() and (first[:, :5] == 255).all() and (first[:, 15:] == 255).all()
    assert (second == 51).all()  # no frame: the whole image
