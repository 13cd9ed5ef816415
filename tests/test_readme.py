"""The README's recipe and examples are the real ones: a newcomer who copies them gets what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _recipe_block() -> dict:
    section = README.split("## Recipes", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "the Recipes section has no yaml block"
    return yaml.safe_load(block.group(1))


def test_the_recipe_block_is_the_castle_recipe():
    assert _recipe_block() == yaml.safe_load((ROOT / "recipes" / "castle_from_flowers.yaml").read_text(encoding="utf-8"))


def test_the_set_examples_validate_against_the_castle_recipe():
    examples = ["iterations=200", "steps.7.hold=2", "steps.6.target=volcano", "keep-photo.hold=2",
                "L1-loss.target=lighthouse"]
    for example in examples:
        assert f"--set {example}" in README
    args = [a for e in examples for a in ("--set", e)]
    done = subprocess.run([sys.executable, "-m", "pipeline_core", "validate",
                           str(ROOT / "recipes" / "castle_from_flowers.yaml"), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
