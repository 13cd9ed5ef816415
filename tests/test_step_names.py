"""Steps named by a label: or by their unique step name in --set, --add-step and sweep axes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline_core.recipe.loader import load_recipe
from pipeline_core.testing import make_registry, tiny_recipe

REGISTRY = make_registry()


@pytest.fixture
def recipe(tmp_path) -> Path:
    data = tiny_recipe()
    data["steps"][1:1] = [{"step": "jitter", "pixels": 1, "label": "shake"}, {"step": "jitter", "pixels": 2}]
    path = tmp_path / "named.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path  # init-noise, jitter (shake), jitter, L1-loss, gradient-step


def one_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_a_unique_step_name_or_a_label_stands_for_the_position(recipe):
    loaded = load_recipe(recipe, REGISTRY, ["L1-loss.target=5", "shake.pixels=3", "steps.gradient-step.lr=0.5"])
    raws = [s.raw for s in loaded.steps]
    assert raws[3]["target"] == 5 and raws[1]["pixels"] == 3 and raws[4]["lr"] == 0.5
    assert raws[2]["pixels"] == 2  # the other jitter is left alone
    assert loaded.resolved()["steps"][1]["label"] == "shake"  # run.json keeps the label


def test_a_name_two_steps_share_is_one_error_listing_them(in_process, recipe, capsys):
    assert in_process(["validate", str(recipe), "--set", "jitter.pixels=4"]) == 2
    line = one_error(capsys)
    assert "--set jitter.pixels=4" in line and "'jitter' names 2 steps" in line
    assert "steps.1 (label: shake)" in line and "steps.2" in line


def test_an_unknown_step_name_lists_the_steps(in_process, recipe, capsys):
    assert in_process(["validate", str(recipe), "--set", "steps.adam.lr=1"]) == 2
    line = one_error(capsys)
    assert "no step is labelled or named 'adam'" in line and "steps.3 (L1-loss)" in line


def test_a_bad_or_repeated_label_names_the_line(tmp_path, in_process, capsys):
    data = tiny_recipe()
    data["steps"][1]["label"] = "aim"
    data["steps"][2]["label"] = "aim"
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    assert in_process(["validate", str(path)]) == 2
    line = one_error(capsys)
    assert "twice.yaml:" in line and "the label 'aim' is already step 1's" in line
    assert in_process(["validate", str(path), "--set", "steps.2.label=1.5"]) == 2
    assert "--set steps.2.label=1.5" in one_error(capsys)


def test_add_step_at_the_end_before_or_after_a_named_step(recipe):
    loaded = load_recipe(recipe, REGISTRY, [_add("{step: blur, sigma: 1}")])
    assert [s.raw["step"] for s in loaded.steps][-1] == "blur"
    loaded = load_recipe(recipe, REGISTRY, [_add("before:L1-loss={step: blur, sigma: 1, label: soft}"),
                                            "soft.sigma=2", "steps.4.target=7"])
    assert [s.raw["step"] for s in loaded.steps] == ["init-noise", "jitter", "jitter", "blur", "L1-loss",
                                                     "gradient-step"]
    assert loaded.steps[3].raw["sigma"] == 2 and loaded.steps[4].raw["target"] == 7
    loaded = load_recipe(recipe, REGISTRY, [_add("after:shake={step: blur, sigma: 1}")])
    assert loaded.steps[2].raw["step"] == "blur"


def _add(text: str):
    from pipeline_core.recipe.source import AddStep

    return AddStep(text, f"--add-step {text}")


@pytest.mark.parametrize("option, fragments", [
    ("{step: blur, sigma: -1}", ["--add-step {step: blur, sigma: -1}: step 5 (blur): key 'sigma'"]),
    ("{step: no-such-step}", ["--add-step {step: no-such-step}", "unknown step 'no-such-step'"]),
    ("{step:blur}", ["expected a step as a YAML mapping", "a space after each ':'"]),
    ("before:nothing={step: blur}", ["no step is labelled or named 'nothing'", "steps.1 (label: shake)"]),
    ("after:jitter={step: blur}", ["'jitter' names 2 steps"]),
])
def test_a_bad_added_step_is_one_line_naming_the_option(in_process, recipe, capsys, option, fragments):
    assert in_process(["validate", str(recipe), "--add-step", option]) == 2
    line = one_error(capsys)
    for fragment in fragments:
        assert fragment in line


def test_a_later_step_keeps_its_line_in_messages_after_an_insert(in_process, recipe, capsys):
    text = recipe.read_text().replace("lr: 0.01", "lr: -1")
    recipe.write_text(text)
    assert in_process(["validate", str(recipe), "--add-step", "before:L1-loss={step: blur, sigma: 1}"]) == 2
    line = one_error(capsys)
    lr_line = next(i for i, t in enumerate(text.splitlines(), 1) if "lr: -1" in t)
    assert f"named.yaml:{lr_line}: step 5 (gradient-step)" in line


def test_a_real_cli_run_with_a_step_added_and_one_set_by_name(tmp_path, mobilenet_path, cli):
    from conftest import MOBILENET_SETS

    data = {"iterations": 2, "seed": 0, "device": "cpu", "performance": {"threads": 1},
            "steps": [{"step": "init-noise", "size": 64}, {"step": "L1-loss", "target": 1, "label": "aim"},
                      {"step": "adam", "lr": 0.05}], "output": {"video": False}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    sets = [x for s in MOBILENET_SETS for x in ("--set", s)]
    proc = cli("run", str(path), *sets, "--set", "aim.target=lighthouse", "--add-step",
               "before:adam={step: blur, sigma: 0.5}", "--out", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [s["step"] for s in record["recipe"]["steps"]] == ["init-noise", "L1-loss", "blur", "adam"]
    assert record["images"][0]["targets"][0]["index"] == 437  # 'lighthouse' is ImageNet's 'beacon'
