"""pipeline evaluate: scores a run's final images with other models, and writes evaluation.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import pipeline_core.commands.evaluate as evaluate
from pipeline_core.errors import RecipeError
from pipeline_core.commands.evaluate import (
    EvalModel,
    build_adapter,
    evaluate_run,
    final_target,
    load_images,
    markdown,
    parse_model_arg,
    read_run,
    target_in,
)
from pipeline_core.hookspecs import hookimpl
from pipeline_core.testing import TINY_CLASSES, TINY_MODEL, make_registry, run_recipe_dict, tiny_recipe

REGISTRY = make_registry()
TINY = EvalModel(TINY_MODEL.name, label="tiny")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A real run on the tiny model: four images aimed at classes 1, 2, 3, 4."""
    root = tmp_path_factory.mktemp("evaluate")
    recipe = tiny_recipe(iterations=2, batch=4, steps=[
        {"step": "init-noise", "scale": 1.0, "size": 32},
        {"step": "L1-loss", "target": [1, 2, 3, 4]},
        {"step": "gradient-step", "lr": 0.01},
    ])
    result = run_recipe_dict(recipe, root / "run", registry=REGISTRY)
    assert result.status == "completed", result.message
    return root / "run"


def probabilities(run_dir: Path) -> torch.Tensor:
    """What the tiny model gives each saved PNG, computed here independently of evaluate."""
    _, images = read_run(run_dir)
    pictures = torch.stack(load_images(run_dir, images))
    adapter = build_adapter(TINY, REGISTRY, torch.device("cpu"))
    with torch.no_grad():
        return torch.softmax(adapter(pictures).logits, 1)


def retarget(run_dir: Path, dest: Path, targets: list[list[dict]]) -> Path:
    """A copy of the run whose images are aimed at the given targets."""
    shutil.copytree(run_dir, dest)
    record = json.loads((dest / "run.json").read_text())
    for entry, t in zip(record["images"], targets):
        entry["targets"] = t
    (dest / "run.json").write_text(json.dumps(record))
    return dest


def test_evaluation_json_holds_shares_of_top1_top5_and_mean_probability(tiny_run, tmp_path):
    probs = probabilities(tiny_run)
    order = probs.argsort(dim=1, descending=True)
    first, third, eighth = int(order[0, 0]), int(order[1, 2]), int(order[2, 7])
    blend_end = int(order[3, 0])
    blend_start = int(order[3, 9])
    name = TINY_CLASSES.__getitem__
    run = retarget(tiny_run, tmp_path / "run", [
        [{"index": first, "name": name(first), "weight": 1.0}],
        [{"index": third, "name": name(third), "weight": 1.0}],
        [{"index": eighth, "name": name(eighth), "weight": 1.0}],
        [{"index": blend_start, "name": name(blend_start), "start_weight": 1.0, "final_weight": 0.0},
         {"index": blend_end, "name": name(blend_end), "start_weight": 0.0, "final_weight": 1.0}],
    ])
    data = evaluate_run(run, [TINY], REGISTRY)
    saved = json.loads((run / "evaluation.json").read_text())
    assert saved == json.loads(json.dumps(data))
    (model,) = saved["models"]
    assert model["model"] == "tiny" and saved["images"] == 4
    overall = model["overall"]
    assert overall["images"] == 4
    assert overall["top1"] == pytest.approx(0.5)  # image 0 and the blend (scored on its final class)
    assert overall["top5"] == pytest.approx(0.75)  # ... and image 1 (rank 3); image 2 is 8th
    expected = (probs[0, first] + probs[1, third] + probs[2, eighth] + probs[3, blend_end]) / 4
    assert overall["mean_target_probability"] == pytest.approx(float(expected), abs=1e-4)
    ranks = [img["rank"] for img in model["images"]]
    assert ranks == [1, 3, 8, 1]
    for cls, summary in model["per_class"].items():
        mine = [img for img in model["images"] if img["target"] == cls]
        assert summary["images"] == len(mine)
        assert summary["top5"] == pytest.approx(sum(i["rank"] <= 5 for i in mine) / len(mine), abs=1e-4)


def test_per_class_groups_images_of_the_same_target(tiny_run, tmp_path):
    probs = probabilities(tiny_run)
    order = probs.argsort(dim=1, descending=True)
    best = [int(order[i, 0]) for i in range(4)]
    worst = [int(order[i, 9]) for i in range(4)]
    # images 0 and 1 both aimed at "class 7"; one hits it, one does not (unless they agree)
    targets = [[{"index": 7, "name": "class 7", "weight": 1.0}]] * 2 + [
        [{"index": best[2], "name": TINY_CLASSES[best[2]], "weight": 1.0}],
        [{"index": worst[3], "name": TINY_CLASSES[worst[3]], "weight": 1.0}],
    ]
    run = retarget(tiny_run, tmp_path / "run", targets)
    data = evaluate_run(run, [TINY], REGISTRY)
    per = data["models"][0]["per_class"]
    assert per["class 7"]["images"] == 2
    p7 = float((probs[0, 7] + probs[1, 7]) / 2)
    assert per["class 7"]["mean_target_probability"] == pytest.approx(p7, abs=1e-4)
    assert sum(c["images"] for c in per.values()) == 4


def test_several_models_are_scored_and_a_class_the_model_lacks_is_reported(tiny_run, tmp_path):
    renamed = EvalModel(TINY_MODEL.name, categories=[f"other {i}" for i in range(9)] + ["class 2"],
                        label="renamed")
    data = evaluate_run(tiny_run, [TINY, renamed], REGISTRY, write=False)
    assert [m["model"] for m in data["models"]] == ["tiny", "renamed"]
    other = data["models"][1]
    # only the image aimed at 'class 2' can be scored: the renamed model has it at index 9
    assert other["overall"]["images"] == 1
    assert len(other["unscored"]) == 3
    assert other["images"][0]["target"] == "class 2"
    assert "| renamed | 1 |" in markdown(data)


def test_final_target_of_a_blend_is_the_end_class():
    blend = [{"index": 250, "name": "Siberian husky", "start_weight": 1.0, "final_weight": 0.0},
             {"index": 251, "name": "dalmatian", "start_weight": 0.0, "final_weight": 1.0}]
    assert final_target(blend)["name"] == "dalmatian"
    assert final_target([{"index": 3, "name": "x", "weight": 1.0}])["index"] == 3
    assert final_target([]) is None


def test_targets_match_by_name_then_by_index():
    cats = ["tench", "goldfish", "great white shark"]
    assert target_in(cats, 1, "goldfish") == 1
    assert target_in(cats, 0, "Great_White shark") == 2  # names win over indices
    assert target_in(cats, 1, "castle") is None
    assert target_in(cats, 2, "2") == 2  # a generator without class names: trust the index


def test_model_argument_syntax(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    m = parse_model_arg(f"mobilenet_v2,weights={weights},mean=0.5,std=[0.25,0.5,0.75],size=224")
    assert (m.name, m.weights, m.mean, m.std, m.size) == ("mobilenet_v2", weights, (0.5, 0.5, 0.5), (0.25, 0.5, 0.75), 224)
    assert m.label == "mobilenet_v2 (w.pth)"
    rel = parse_model_arg("resnet18,weights=w.pth,label=my net", base=tmp_path)
    assert rel.weights == weights and rel.label == "my net"
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\n\nc\n")
    assert parse_model_arg(f"x,categories={classes}").categories == ["a", "b", "c"]
    assert parse_model_arg("efficientnet-lite0").label == "efficientnet-lite0"


def test_a_path_with_commas_or_brackets_is_written_in_quotes_and_read_back(tmp_path):
    from pipeline_core.recipe.model_arg import quoted_path

    odd = tmp_path / "run 3, final [best].pth"
    odd.write_bytes(b"x")
    for text in (f'mobilenet_v2,weights="{odd}",mean=0.5', f"mobilenet_v2,weights='{odd}',mean=0.5",
                 f"mobilenet_v2,weights={quoted_path(odd)},mean=0.5"):
        m = parse_model_arg(text)
        assert m.weights == odd and m.mean == (0.5, 0.5, 0.5), text
    plain = tmp_path / "w.pth"
    assert quoted_path(plain) == str(plain)  # an ordinary path stays as it is
    assert parse_model_arg('x,label="a, b"').label == "a, b"
    apostrophe = tmp_path / "O'Brien's" / "w.pth"  # a quote inside a path is an ordinary character
    apostrophe.parent.mkdir()
    apostrophe.write_bytes(b"x")
    assert parse_model_arg(f"mobilenet_v2,weights={apostrophe},mean=0.5").weights == apostrophe
    accented = tmp_path / 'modèles, "v2"' / "w.pth"  # nothing is escaped: every character comes back
    accented.parent.mkdir()
    accented.write_bytes(b"x")
    assert parse_model_arg(f"mobilenet_v2,weights={quoted_path(accented)},size=224").weights == accented
    with pytest.raises(RecipeError, match="a path with a comma goes in quotes"):  # unquoted, it still splits
        parse_model_arg(f"mobilenet_v2,weights={odd}")


@pytest.mark.parametrize("text,message", [
    ("mobilenet_v2,weights=/no/such/file.pth", "no weights file"),
    ("mobilenet_v2,colour=red", "not KEY=VALUE"),
    ("mobilenet_v2,mean=[1,2]", "one number or three"),
    ("mobilenet_v2,size=big", "whole number"),
    ("weights=a.pth", "start with a model name"),
])
def test_model_argument_errors_say_what_to_fix(text, message):
    with pytest.raises(RecipeError, match=message):
        parse_model_arg(text)


def test_unknown_model_and_missing_run_are_clear_errors(tiny_run, tmp_path):
    with pytest.raises(RecipeError, match="pipeline models"):
        evaluate_run(tiny_run, [EvalModel("no-such-model")], REGISTRY, write=False)
    with pytest.raises(RecipeError, match="no run.json"):
        evaluate_run(tmp_path, [TINY], REGISTRY)


@pytest.mark.slow
def test_cli_evaluate_with_local_weights(tiny_run, tmp_path, cli, mobilenet_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    # the tiny model's classes are not ImageNet's: aim the images at ImageNet classes by name
    record = json.loads((run / "run.json").read_text())
    for entry, (index, name) in zip(record["images"], [(1, "goldfish"), (291, "lion"), (483, "castle"), (1, "goldfish")]):
        entry["targets"] = [{"index": index, "name": name, "weight": 1.0}]
    (run / "run.json").write_text(json.dumps(record))
    spec = f"mobilenet_v2,weights={mobilenet_path},mean=0.5,std=0.5,size=224,label=local mobilenet"
    proc = cli("evaluate", str(run), "--model", spec)
    assert proc.returncode == 0, proc.stderr
    assert "local mobilenet" in proc.stdout and "goldfish" in proc.stdout
    data = json.loads((run / "evaluation.json").read_text())
    (model,) = data["models"]
    assert model["overall"]["images"] == 4 and set(model["per_class"]) == {"goldfish", "lion", "castle"}
    assert 0.0 <= model["overall"]["top5"] <= 1.0
    assert model["spec"]["weights"] == str(mobilenet_path)


def test_cli_evaluate_needs_a_model(tiny_run, cli):
    proc = cli("evaluate", str(tiny_run))
    assert proc.returncode == 2


# -- nothing silently wrong ----------------------------------------------------------------------


class NaNNet(torch.nn.Module):
    """Scores every image NaN (broken weights), as a std of 0 or a NaN mean would make any model do."""

    def forward(self, x):
        return torch.full((x.shape[0], len(TINY_CLASSES)), float("nan")) + x.mean() * 0


class NaNPlugin:
    @hookimpl
    def register_models(self, registry):
        from pipeline_core.model import ModelDef, ModelInfo

        registry.add_model(ModelDef(name="nan-model", build=lambda spec: NaNNet(),
                                    info=ModelInfo(categories=TINY_CLASSES, mean=(0.5,) * 3, std=(0.5,) * 3, size=32)))


def test_a_nan_score_is_never_a_hit(tiny_run, tmp_path):
    registry = make_registry(NaNPlugin())
    data = evaluate_run(tiny_run, [EvalModel("nan-model", label="nan")], registry, write=False)
    overall = data["models"][0]["overall"]
    assert overall["images"] == 4 and overall["top1"] == 0 and overall["top5"] == 0
    assert overall["mean_target_probability"] == 0 and overall["non_finite"] == 4
    assert all(img["non_finite"] and img["rank"] > 5 for img in data["models"][0]["images"])
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(evaluate.render(data))
    assert "4 images scored NaN or Inf, counted as misses" in console.export_text()


@pytest.mark.parametrize("spec, words", [
    ("tiny-test-model,std=0", "std: every std must be positive"),
    ("tiny-test-model,std=[1,0,1]", "std: every std must be positive"),
    ("tiny-test-model,mean=nan", "mean.0: expected a finite number"),
    ("tiny-test-model,mean=.inf", "finite number"),
    ("tiny-test-model,mean=1e30", "every mean must lie in"),
    ("tiny-test-model,std=1e-30", "every std must lie in"),
    ("tiny-test-model,size=3", "size: Input should be greater than or equal to 8"),
    ("tiny-test-model,size=100000", "less than or equal to 4096"),
    ("tiny-test-model,categories=[]", "the list of class names is empty"),
])
def test_model_options_pass_the_recipes_model_checks_and_a_good_evaluation_stays(spec, words, tiny_run, tmp_path,
                                                                                monkeypatch, capsys):
    import pipeline_core.commands.cli as cli

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "evaluation.json").write_text('{"good": true}')
    monkeypatch.setattr(cli, "_registry", lambda quiet=False: REGISTRY)

    assert cli.main(["evaluate", str(run), "--model", spec]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and f"--model {spec}:" in err[0] and words in err[0], err
    assert (run / "evaluation.json").read_text() == '{"good": true}'


def test_a_batch_size_below_one_scores_nothing_and_is_refused(tiny_run):
    for size in (0, -1):
        with pytest.raises(RecipeError, match="--batch-size must be a whole number of at least 1"):
            evaluate_run(tiny_run, [TINY], REGISTRY, batch_size=size, write=False)
