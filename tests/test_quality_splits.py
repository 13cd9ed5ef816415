"""The quality benchmark's class splits: a held-out class never doubles as a tuning class."""

from __future__ import annotations

import importlib.util

from torchvision.models import MobileNet_V2_Weights

from conftest import ROOT


def _quality():
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tuning_and_held_out_splits_share_no_class_and_name_their_indices_right():
    q = _quality()
    categories = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    tuning = [q.TUNING_CLASSES, q.TUNING_WIDE_CLASSES, q.TUNING_WIDE2_CLASSES]
    held_out = {i for i, _ in q.HELD_OUT_CLASSES}
    held_out_pairs = {i for _, i, _ in q.HELD_OUT_PAIRS}
    seen: set[int] = set()
    for split in tuning:
        indices = {i for i, _ in split}
        assert len(indices) == len(split) == 20
        assert not indices & held_out and not indices & seen
        seen |= indices
    # the first wide split was drawn before the pairs and shares one class with them (a photo
    # recipe was never tuned on it); the pairs' classes are otherwise new
    assert seen & held_out_pairs == {14} and q.TUNING_WIDE_CLASSES[10] == (14, "indigo bunting")
    tuning_pairs = {i for _, i, _ in q.TUNING_PAIRS}
    wide_pairs = {i for _, i, _ in q.TUNING_WIDE_PAIRS}
    assert not held_out_pairs & tuning_pairs and not wide_pairs & (held_out_pairs | tuning_pairs | seen | held_out)
    assert all((ROOT / photo).is_file() for photo, _, _ in q.TUNING_PAIRS + q.TUNING_WIDE_PAIRS)
    for index, name in [c for split in tuning for c in split] + q.HELD_OUT_CLASSES:
        assert categories[index] == name
    for _, index, name in q.HELD_OUT_PAIRS + q.TUNING_PAIRS + q.TUNING_WIDE_PAIRS:
        assert categories[index] == name


def test_the_any_photo_split_is_new_in_its_classes_and_its_photos():
    q = _quality()
    categories = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    named = {i for split in (q.TUNING_CLASSES, q.TUNING_WIDE_CLASSES, q.TUNING_WIDE2_CLASSES, q.HELD_OUT_CLASSES)
             for i, _ in split}
    named |= {i for _, i, _ in q.TUNING_PAIRS + q.TUNING_WIDE_PAIRS + q.HELD_OUT_PAIRS}
    pairs = q.HELD_OUT_ANY_PAIRS
    assert len(pairs) >= 12 and not {i for _, i, _ in pairs} & (named | {250})
    assert all(categories[i] == name for _, i, name in pairs)
    recipe_photos = {p.name for p in (ROOT / "recipes" / "images").iterdir()}
    assert not {photo.rpartition("/")[2] for photo, _, _ in pairs} & recipe_photos  # no recipe tuned on them
