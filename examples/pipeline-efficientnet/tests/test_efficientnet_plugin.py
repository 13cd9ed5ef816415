"""Tests of the plugin, written with the host's testing kit (pipeline_core.testing).

They run against the installed package (``pip install examples/pipeline-efficientnet``),
as a user's CI would.
"""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline_core.errors import RecipeError
from pipeline_core.testing import check_step, registered, run_recipe_dict, tiny_recipe
from pipeline_efficientnet import plugin
from pipeline_efficientnet.model import EFFICIENTNET_LITE0, EFFICIENTNET_LITE1, EFFICIENTNET_LITE2, MEAN, STD, VARIANTS
from pipeline_efficientnet.total_variation import TotalVariation, total_variation

PHOTO = Path(__file__).resolve().parents[3] / "recipes" / "images" / "sunflower.png"
SHARED_IMAGES = Path(__file__).resolve().parents[4] / "shared" / "images"


# -- the step ------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{}, {"weight": 5.0, "power": 2}])
def test_total_variation_meets_the_step_contract(params, isolated_registry):
    check_step(TotalVariation, params, isolated_registry)


def test_total_variation_measures_neighbour_differences():
    flat = torch.full((1, 3, 8, 8), 0.5)
    assert total_variation(flat).tolist() == [0.0]
    edge = flat.clone()
    edge[..., :, 4:] = 1.0  # one vertical edge of height 0.5 between columns 3 and 4
    # horizontal differences: 8 rows x 1 jump of 0.5 out of 3*8*7 values; vertical: none
    expected = 3 * 8 * 0.5 / (3 * 8 * 7)
    assert total_variation(edge).item() == pytest.approx(expected)
    assert total_variation(edge, power=2).item() == pytest.approx(3 * 8 * 0.25 / (3 * 8 * 7))


def _roughness(run_dir: Path) -> float:
    png = sorted((run_dir / "images").glob("000_*.png"))[0]
    pixels = torch.from_numpy(np.asarray(Image.open(png), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    return total_variation(pixels).item()


def test_total_variation_smooths_the_image_in_a_run(isolated_registry, tmp_path):
    with registered(plugin, isolated_registry):
        base = tiny_recipe(iterations=8)
        base["steps"][0].update({"scale": 0.5, "offset": 0.25})  # rough noise to start from
        plain = run_recipe_dict(base, tmp_path / "plain", registry=isolated_registry)
        smooth_recipe = tiny_recipe(iterations=8, steps=base["steps"][:2] + [
            {"step": "total-variation", "weight": 3000.0}, base["steps"][2]])
        smooth = run_recipe_dict(smooth_recipe, tmp_path / "smooth", registry=isolated_registry)
    assert plain.status == smooth.status == "completed"
    assert _roughness(tmp_path / "smooth") < 0.5 * _roughness(tmp_path / "plain")


# -- the writer ----------------------------------------------------------------------------------


def test_gif_writer_writes_every_kept_frame(isolated_registry, tmp_path):
    recipe = tiny_recipe(iterations=5, output={"video": False, "writers": [{"writer": "gif", "every": 2, "tile": 24}]})
    with registered(plugin, isolated_registry):
        result = run_recipe_dict(recipe, tmp_path / "run", registry=isolated_registry)
    assert "run.gif" in result.record["files"]
    gif = Image.open(tmp_path / "run" / "run.gif")
    # frames 0..5 are emitted; every 2nd is kept (0, 2, 4) plus the last one (5)
    assert gif.n_frames == 4
    assert gif.info.get("loop") == 0


@pytest.mark.parametrize("writer, message", [
    ({"writer": "gif", "tile": 5}, "output.writers.0.tile"),
    ({"writer": "gif", "file": "../escape.gif"}, "plain file name"),
    ({"writer": "gif", "colour": 3}, "unknown key"),
    ({"writer": "giff"}, "did you mean 'gif'"),
])
def test_bad_writer_options_are_recipe_errors(writer, message, isolated_registry, tmp_path):
    recipe = tiny_recipe(output={"video": False, "writers": [writer]})
    with registered(plugin, isolated_registry):
        with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(".", r"\.")):
            run_recipe_dict(recipe, tmp_path / "run", registry=isolated_registry)
    assert not (tmp_path / "escape.gif").exists()


# -- the model -----------------------------------------------------------------------------------


def test_model_metadata_needs_no_weights():
    info = EFFICIENTNET_LITE0.info()
    assert len(info.categories) == 1000 and info.categories[483] == "castle"
    assert info.mean == MEAN and info.std == STD and info.size == 224


def test_registering_does_not_load_the_model():
    """The host imports the plugin at every start: it must not import torch code for the model."""
    code = ("import sys; from pipeline_core.testing import installed_registry; r = installed_registry(); "
            "assert 'efficientnet-lite0' in r.models, sorted(r.plugins); "
            "print('efficientnet_lite_pytorch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("model_def, size", [(EFFICIENTNET_LITE1, 240), (EFFICIENTNET_LITE2, 260)])
def test_lite1_and_lite2_metadata_need_no_weights(model_def, size):
    info = model_def.info()
    assert len(info.categories) == 1000 and info.categories[483] == "castle"
    assert info.mean == MEAN and info.std == STD and info.size == size


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("model_def", [EFFICIENTNET_LITE1, EFFICIENTNET_LITE2])
def test_a_missing_judge_wheel_is_a_clear_error(model_def, monkeypatch):
    from pipeline_core.errors import ModelLoadError
    from pipeline_core.model import ModelSpec

    variant = VARIANTS[model_def.name]
    monkeypatch.setitem(sys.modules, variant.module, None)  # as if the wheel were not installed
    with pytest.raises(ModelLoadError, match=rf"{variant.package}.*pipeline-efficientnet\[judges\]"):
        model_def.build(ModelSpec(name=model_def.name))


def _top1(model_def, photo: Path) -> str:
    from pipeline_core.model import ModelAdapter, ModelSpec

    adapter = ModelAdapter(model_def.build(ModelSpec(name=model_def.name)), model_def.info())
    pixels = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float32) / 255
    with torch.no_grad():
        logits = adapter(torch.from_numpy(pixels).permute(2, 0, 1)[None]).logits
    return adapter.categories[int(logits.argmax())]


@pytest.mark.parametrize("model_def", [EFFICIENTNET_LITE1, EFFICIENTNET_LITE2])
@pytest.mark.parametrize("photo, expected", [("sunflower.png", "daisy"), ("dragonfly.png", "dragonfly")])
def test_the_judges_real_weights_recognise_photos(model_def, photo, expected):
    variant = VARIANTS[model_def.name]
    if not _installed(variant.module):
        pytest.skip(f"{variant.package} is not installed ({variant.install_hint})")
    path = SHARED_IMAGES / photo
    if not path.is_file():
        pytest.skip(f"no test photo at {path}")
    assert _top1(model_def, path) == expected


def test_the_real_weights_recognise_a_sunflower():
    if not PHOTO.is_file():
        pytest.skip(f"no test photo at {PHOTO}")
    from pipeline_core.model import ModelAdapter, ModelSpec

    adapter = ModelAdapter(EFFICIENTNET_LITE0.build(ModelSpec(name="efficientnet-lite0")), EFFICIENTNET_LITE0.info())
    pixels = np.asarray(Image.open(PHOTO).convert("RGB"), dtype=np.float32) / 255
    with torch.no_grad():
        logits = adapter(torch.from_numpy(pixels).permute(2, 0, 1)[None]).logits
    top = adapter.categories[int(logits.argmax())]
    assert top in ("daisy", "sunflower", "bee"), top


# -- the packaging -------------------------------------------------------------------------------


def test_the_entry_point_is_installed():
    eps = [ep for ep in md.entry_points(group="pipeline_core.plugins") if ep.name == "efficientnet"]
    if not eps:
        pytest.skip("pipeline-efficientnet is not installed (pip install examples/pipeline-efficientnet)")
    assert eps[0].value == "pipeline_efficientnet.plugin"
    assert eps[0].dist.metadata["Name"] == "pipeline-efficientnet"
    from pipeline_core.testing import installed_registry

    registry = installed_registry()
    info = registry.plugins["efficientnet"]
    assert (info.package, info.problems) == ("pipeline-efficientnet", [])
    assert sorted(info.registers) == ["model efficientnet-lite0", "model efficientnet-lite1", "model efficientnet-lite2",
                                      "step total-variation", "writer gif"]
