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
