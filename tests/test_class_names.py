"""Class names as people say them: every WordNet synonym of an ImageNet class, and its words."""

from __future__ import annotations

import pytest
import yaml
from torchvision.models import MobileNet_V2_Weights

from pipeline_core.errors import RecipeError
from pipeline_core.recipe.classnames import ClassNames, imagenet_names
from pipeline_core.recipe.plan import Plan

CATEGORIES = list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


@pytest.fixture(scope="module")
def plan() -> Plan:
    return Plan(iterations=1, batch=1, categories=CATEGORIES, model_name="mobilenet_v2", model_size=224, seed=0)


def test_the_shipped_list_holds_every_imagenet_class_with_its_synonyms():
    names = imagenet_names()
    assert len(names) == 1000
    assert names[437] == ("beacon", "lighthouse", "beacon light", "pharos")
    assert names[0][0] == "tench" and names[999][0] == "toilet tissue"


@pytest.mark.parametrize("name, index", [
    ("lighthouse", 437), ("Beacon Light", 437), ("pharos", 437), ("tabby cat", 281), ("german shepherd", 235),
    ("German shepherd dog", 235), ("alsatian", 235), ("shepherd", 235), ("Persian", 283), ("crane bird", 134),
    ("tank suit", 639), ("harp", 594),
])
def test_a_synonym_or_the_words_of_a_name_find_the_class(plan, name, index):
    assert plan.class_index(name) == index


@pytest.mark.parametrize("name, index", [("castle", 483), ("soccer ball", 805), ("Siberian husky", 250),
                                         ("beacon", 437), ("tabby", 281), ("lighter", 626)])
def test_exact_names_and_indices_are_unchanged(plan, name, index):
    assert plan.class_index(name) == index
    assert plan.class_index(index) == index


@pytest.mark.parametrize("name, candidates", [
    ("crane", ["134 crane bird", "517 crane"]), ("maillot", ["638 maillot", "639 maillot tank suit"]),
    ("cardigan", ["264 Cardigan", "474 cardigan"]), ("retriever", ["205 flat-coated retriever", "207 golden retriever"]),
])
def test_an_ambiguous_name_lists_its_candidates_on_one_line(plan, name, candidates):
    with pytest.raises(RecipeError) as caught:
        plan.class_index(name)
    message = str(caught.value)
    assert "\n" not in message and f"'{name}' names" in message and "give the index" in message
    for candidate in candidates:
        assert candidate in message


def test_did_you_mean_knows_the_synonyms(plan):
    with pytest.raises(RecipeError, match=r"did you mean 'lighthouse' \(class 437, beacon\)\?"):
        plan.class_index("lighthous")


def test_other_class_lists_keep_their_own_names_only():
    names = ClassNames(["cat", "lighthouse keeper", "dog"])
    assert not names.imagenet
    assert names.index("cat") == 0
    with pytest.raises(RecipeError, match="unknown class 'beacon'"):
        names.index("beacon")
    with pytest.raises(RecipeError, match="unknown class 'lighthouse'"):  # no word matching either
        names.index("lighthouse")


@pytest.mark.slow
def test_classes_match_and_a_recipe_target_use_the_synonyms_in_the_real_cli(cli, mobilenet_path, tmp_path):
    proc = cli("classes", "inception_v3", "--match", "lighthouse", env={"TORCH_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "437  beacon  (also: lighthouse, beacon light, pharos)" in proc.stdout.splitlines()
    recipe = {"iterations": 1, "steps": [{"step": "init-noise", "size": 32}, {"step": "L1-loss", "target": "maillot"},
                                         {"step": "adam", "lr": 0.1}],
              "model": {"name": "mobilenet_v2", "weights": str(mobilenet_path), "mean": [0.5] * 3, "std": [0.5] * 3,
                        "size": 224}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    proc = cli("validate", str(path))
    assert proc.returncode == 2 and "'maillot' names 2 classes" in proc.stderr and "638 maillot" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = cli("validate", str(path), "--set", "L1-loss.target=lighthouse")
    assert proc.returncode == 0, proc.stderr
