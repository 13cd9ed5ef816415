"""The naming panel's bookkeeping (benchmarks/panel.py): the observer's folder holds only
anonymised images, the key stays out of it, and answers are scored by the written rule."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import ROOT


def _panel():
    spec = importlib.util.spec_from_file_location("panel", ROOT / "benchmarks" / "panel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_folder(path, classes):
    (path / "images").mkdir(parents=True)
    images = []
    for i, name in enumerate(classes):
        file = f"{i:03d}_{name}.png"
        Image.fromarray(np.full((40, 60, 3), 30 * i, np.uint8)).save(path / "images" / file)
        images.append({"file": file, "targets": [{"index": i, "name": name, "weight": 1.0}], "probability": 0.9})
    (path / "run.json").write_text(json.dumps({"status": "completed", "images": images}))
    return path


def test_prepare_writes_only_shuffled_squares_and_keeps_the_key_outside(tmp_path, capsys):
    panel = _panel()
    ours = _run_folder(tmp_path / "ours", ["koala", "geyser", "modem"])
    theirs = _run_folder(tmp_path / "theirs", ["koala", "geyser", "modem"])
    out, key = tmp_path / "observer", tmp_path / "key.json"
    panel.main(["prepare", f"ours={ours}", f"lucent={theirs}", "--out", str(out), "--key", str(key), "--seed", "3"])
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"img_{k:02d}.png" for k in range(1, 7)]
    assert all(Image.open(out / f).size == (256, 256) for f in files)
    record = json.loads(key.read_text())["images"]
    assert sorted((v["source"], v["class"]) for v in record.values()) == sorted(
        [(s, c) for s in ("ours", "lucent") for c in ("koala", "geyser", "modem")])
    order = [(v["source"], v["class"]) for v in record.values()]
    assert order != [("ours", "koala"), ("ours", "geyser"), ("ours", "modem"),
                     ("lucent", "koala"), ("lucent", "geyser"), ("lucent", "modem")]  # shuffled
    assert "img_06.png" in capsys.readouterr().out  # the brief names the folder's images
    with pytest.raises(SystemExit):  # the observer's folder must hold nothing else
        panel.main(["prepare", f"ours={ours}", "--out", str(out), "--key", str(tmp_path / "k2.json")])
    with pytest.raises(SystemExit):
        panel.main(["prepare", f"ours={ours}", "--out", str(tmp_path / "o2"), "--key", str(tmp_path / "o2" / "k")])


def test_the_rule_scores_strict_basic_and_never_a_top_level_word():
    panel = _panel()
    rules = yaml.safe_load((ROOT / "benchmarks" / "panel_rules.yaml").read_text())
    assert panel.judge("Alaskan king crab", rules["king crab"])[:2] == (True, True)
    assert panel.judge("a crab on sand", rules["king crab"])[:2] == (False, True)
    assert panel.judge("Cowboy Boots", rules["cowboy boot"])[:2] == (True, True)  # plural and case
    assert panel.judge("boots", rules["cowboy boot"])[:2] == (False, True)
    assert panel.judge("shaggy dog", rules["komondor"])[:2] == (False, True)
    assert panel.judge("hotdog stand", rules["komondor"])[:2] == (False, False)  # 'dog' is not a word there
    assert panel.judge("an animal", {"strict": [], "basic": ["animal"]})[:2] == (False, False)
    assert panel.judge("nothing nameable", rules["modem"])[:2] == (False, False)
    assert panel.judge("nothing nameable (maybe crab legs)", rules["king crab"])[:2] == (False, False)
    # 'cannot tell' with a guess after it is no name either (an 'orange' guess once counted for the fruit)
    assert panel.judge("cannot tell; maybe crab legs", rules["king crab"])[:2] == (False, False)
    assert panel.judge("I can't tell, a crab?", rules["king crab"])[:2] == (False, False)
    assert panel.judge("a crab I cannot tell apart", rules["king crab"])[:2] == (False, True)


def test_score_keeps_every_answer_with_its_reason_and_applies_rulings(tmp_path):
    panel = _panel()
    ours = _run_folder(tmp_path / "ours", ["koala", "geyser", "modem"])
    out, key = tmp_path / "observer", tmp_path / "key.json"
    panel.main(["prepare", f"ours={ours}", "--out", str(out), "--key", str(key), "--seed", "0"])
    images = json.loads(key.read_text())["images"]
    by_class = {v["class"]: k for k, v in images.items()}
    answers = tmp_path / "answers.txt"
    answers.write_text("Here are my answers:\n"
                       f"{by_class['koala'][:-4]} | koala bear | sloth | 3\n"
                       f"{by_class['geyser'][:-4]} | steam rising from a hot spring | fog | 2\n")
    rulings = tmp_path / "rulings.json"
    rulings.write_text(json.dumps({by_class["geyser"]: {"strict": True, "basic": True,
                                                        "reason": "a jet of steam from the ground is a geyser"}}))
    scores = tmp_path / "scores.json"
    panel.main(["score", "--key", str(key), "--answers", str(answers), "--rulings", str(rulings),
                "--json", str(scores)])
    result = json.loads(scores.read_text())
    rows = {r["class"]: r for r in result["answers_scored"]}
    assert rows["koala"]["strict"] and rows["koala"]["confidence"] == 3
    assert rows["geyser"]["strict"] and rows["geyser"]["reason"].startswith("ruling: ")
    assert not rows["modem"]["basic"] and result["unanswered"] == [by_class["modem"]]
    assert result["per_source"]["ours"]["strict_count"] == 2
    assert set(rows["koala"]["statistics"]) == {"luminance_std", "spectral_slope", "high_frequency_share",
                                                "saturation"}


def test_a_class_without_written_terms_is_refused_before_scoring(tmp_path):
    panel = _panel()
    ours = _run_folder(tmp_path / "ours", ["a class nobody wrote terms for"])
    out, key = tmp_path / "observer", tmp_path / "key.json"
    panel.main(["prepare", f"ours={ours}", "--out", str(out), "--key", str(key)])
    (tmp_path / "a.txt").write_text("img_01 | a thing | none | 1\n")
    with pytest.raises(SystemExit, match="no terms for"):
        panel.main(["score", "--key", str(key), "--answers", str(tmp_path / "a.txt"), "--json", str(tmp_path / "s")])


def test_photo_statistics_tell_a_photo_from_flat_noise():
    panel = _panel()
    photo = panel.CONTROL_PHOTOS[0][0]
    if not photo.is_file():
        pytest.skip(f"{photo} is absent")
    stats = panel.image_statistics(photo)
    assert -3.5 < stats["spectral_slope"] < -1.5  # natural images: power falls about as 1/f^2


def test_a_transfiguration_is_scored_for_its_class_and_its_photo_in_either_answer(tmp_path, capsys):
    panel = _panel()
    run = _run_folder(tmp_path / "run", ["mantis", "flagpole"])
    out, key = tmp_path / "observer", tmp_path / "key.json"
    panel.main(["prepare", f"ours={run}", "--subjects", "espresso cup,rocket", "--whole", "--out", str(out),
                "--key", str(key), "--seed", "0"])
    assert "any other" in capsys.readouterr().out  # the brief asks for everything seen
    assert Image.open(next(out.iterdir())).size == (256, 171)  # the whole 60 x 40 frame, not a square
    images = json.loads(key.read_text())["images"]
    by_class = {v["class"]: k for k, v in images.items()}
    (tmp_path / "a.txt").write_text(f"{by_class['mantis']} | a coffee cup | a praying mantis on the rim | 2\n"
                                    f"{by_class['flagpole']} | a rocket launch | none | 3\n")
    panel.main(["score", "--key", str(key), "--answers", str(tmp_path / "a.txt"), "--json", str(tmp_path / "s.json")])
    result = json.loads((tmp_path / "s.json").read_text())
    rows = {r["class"]: r for r in result["answers_scored"]}
    assert rows["mantis"]["strict"] and rows["mantis"]["photo_named"]
    assert not rows["flagpole"]["basic"] and rows["flagpole"]["photo_named"]
    assert result["per_source"]["ours"]["strict_and_photo"] == 0.5


def test_report_pools_one_recipes_panels_with_95_percent_intervals(tmp_path, capsys):
    """Two observers, one recipe's two seeds: pooled under one name, with the Wilson interval a
    dozen images leave (a published figure, e.g. 7 of 24)."""
    panel = _panel()
    assert panel.wilson(0, 0) == (0.0, 1.0)
    low, high = panel.wilson(7, 24)
    assert round(low, 3) == 0.149 and round(high, 3) == 0.492
    files = []
    for label, named in (("seed0", [True, False, False]), ("seed1", [True, True, False]), ("other", [False])):
        rows = [{"source": label, "strict": s, "basic": s, "statistics": {}} for s in named]
        rows.append({"source": "photo", "strict": True, "basic": True, "statistics": {}})
        f = tmp_path / f"{label}.json"
        f.write_text(json.dumps({"answers": f"/x/{label}.txt", "per_source": {}, "answers_scored": rows}))
        files.append(str(f))
    out = tmp_path / "pooled.json"
    # the same label in another panel stays apart unless named: PANEL:LABEL picks one panel's
    (tmp_path / "other.json").write_text((tmp_path / "other.json").read_text().replace('"other"', '"seed0"'))
    assert panel.main(["report", *files, "--pool", "plausible=seed0:seed0,seed1", "--json", str(out)]) == 0
    table = json.loads(out.read_text())["pooled"]
    assert table["plausible"]["images"] == 6 and table["plausible"]["strict_count"] == 3
    assert table["plausible"]["panels"] == ["seed0", "seed1"] and table["photo"]["images"] == 3
    assert table["seed0"] == {**table["seed0"], "panels": ["other"], "images": 1, "strict_count": 0}
    assert table["plausible"]["strict_interval"] == [round(x, 3) for x in panel.wilson(3, 6)]
    assert "| plausible | seed0, seed1 | 6 | 50% (3)" in capsys.readouterr().out
