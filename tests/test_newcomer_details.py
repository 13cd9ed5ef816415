"""The small things a newcomer noticed: the video's count, folded batch norms, a far target's
loss, and the options a sweep ran with on its atlas page."""

from __future__ import annotations

import json

import pytest

from conftest import MOBILENET
from pipeline_core.output import video
from pipeline_core.output.panels import counter
from pipeline_core.run.progress import LineProgress, loss_text
from pipeline_core.testing import make_registry, run_recipe_dict, tiny_recipe


def test_the_last_frame_counts_as_the_report_does(tmp_path, monkeypatch):
    seen: list[tuple[int, int | None]] = []
    real = video.class_panel

    def spy(*args, **kwargs):
        seen.append((args[3], args[7] if len(args) > 7 else kwargs.get("total")))
        return real(*args, **kwargs)

    monkeypatch.setattr(video, "class_panel", spy)
    recipe = tiny_recipe(iterations=6, output={"video": True, "frame_every": 4})
    result = run_recipe_dict(recipe, tmp_path / "run", registry=make_registry())
    assert result.status == "completed", result.message
    assert [it for it, _ in seen] == [0, 4, 6] and {total for _, total in seen} == {6}
    assert counter(6, 6) == "iteration 6 of 6" and counter(0, 100) == "iteration 0 of 100"
    assert f"{result.record['iterations_done']} of {result.record['iterations']}" == "6 of 6"


def test_a_far_targets_loss_shows_how_far_it_moved(capsys):
    assert loss_text(9985.3, 10000.0) == "9985 (-14.7)"
    assert loss_text(2.5, None) == "2.5" and loss_text(float("nan"), 1.0) == "nan"
    bar = LineProgress()
    bar.start(10, "far")
    bar.update(1, 10000.0, 0.001)
    bar.update(2, 9990.0, 0.002)
    assert "loss 9990 (-10)" in capsys.readouterr().err


def test_layers_says_when_batch_norms_are_folded(mobilenet_path):
    from pipeline_core.commands.layers import list_layers, render
    from pipeline_core.host.manager import build_registry

    registry = build_registry()
    name, side, rows = list_layers(f"mobilenet_v2,weights={mobilenet_path}", registry)
    norms = [r for r in rows if r.type == "BatchNorm2d"]
    assert norms and all(r.folded for r in norms)
    text = render(name, side, rows, "features.1.")
    assert "BatchNorm2d                 32  32x112x112  (folded)" in text
    assert text.splitlines()[-1].startswith(f"note: all {len(norms)} BatchNorm2d layers are folded")
    name, side, rows = list_layers("mobilenet_v2", registry)  # the skeleton: nothing to say
    assert not any(r.folded for r in rows) and "folded" not in render(name, side, rows)


SWEEP_RECIPE = """\
iterations: 1
seed: 0
device: cpu
model: {{name: mobilenet_v2, weights: {weights}, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], size: 64}}
performance: {{threads: 1}}
steps:
  - {{step: init-noise, size: 64}}
  - {{step: L1-loss, target: 0, label: aim}}
  - {{step: adam, lr: 0.05}}
output: {{video: false}}
"""


def test_a_sweep_axis_by_step_name_and_the_atlas_header_shows_the_options(tmp_path, mobilenet_path):
    from pipeline_core.commands.sweep import sweep
    from pipeline_core.host.manager import build_registry
    from pipeline_core.recipe.source import Override

    (tmp_path / "recipe.yaml").write_text(SWEEP_RECIPE.format(weights=MOBILENET))
    (tmp_path / "sweep.yaml").write_text("name: named\nrecipe: recipe.yaml\naxes:\n  L1-loss.target: [1, 2]\nbatch: 2\n")
    sets = ["adam.lr=0.1", Override("seed=3", "--seed 3")]
    code = sweep(str(tmp_path / "sweep.yaml"), build_registry(), sets, axis=["L1-loss.target=[lighthouse, 1]"],
                 out=str(tmp_path / "out"), quiet=True, say=lambda _line: None)
    assert code == 0
    index = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert index["options"] == ["--set adam.lr=0.1", "--seed 3", "--axis L1-loss.target=[lighthouse, 1]"]
    assert len(index["batches"]) == 1  # the named target axis is per image: one batch of two
    assert sorted(j["targets"][0]["index"] for j in index["jobs"]) == [1, 437]
    page = (tmp_path / "out" / "atlas.html").read_text()
    assert "run with: --set adam.lr=0.1 --seed 3 --axis L1-loss.target=[lighthouse, 1]" in page


def test_two_axes_naming_one_step_setting_are_refused(tmp_path, mobilenet_path):
    from pipeline_core.commands.sweep import sweep
    from pipeline_core.errors import RecipeError
    from pipeline_core.host.manager import build_registry

    (tmp_path / "recipe.yaml").write_text(SWEEP_RECIPE.format(weights=MOBILENET))
    (tmp_path / "sweep.yaml").write_text("recipe: recipe.yaml\naxes:\n  aim.target: [1, 2]\n  steps.1.target: [3]\n")
    with pytest.raises(RecipeError, match="the axes 'aim.target' and 'steps.1.target' both set steps.1.target"):
        sweep(str(tmp_path / "sweep.yaml"), build_registry(), [], out=str(tmp_path / "out"), quiet=True,
              say=lambda _line: None)
