"""The documentation stays true: the step reference is what its generator writes from the steps
today, every relative link leads to a file (and heading) that exists, and the recipe the
recipes page shows is the real one."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.glob("*.md"), *(ROOT / "benchmarks").glob("*.md"),
                ROOT / "benchmarks" / "results" / "README.md", ROOT / "CHANGELOG.md"])
RECIPES_PAGE = DOCS / "recipes.md"


def _generator():
    spec = importlib.util.spec_from_file_location("make_step_reference", DOCS / "make_step_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_step_reference_is_up_to_date():
    from pipeline_core.testing import make_registry

    expected = _generator().render(make_registry())
    assert (DOCS / "steps.md").read_text(encoding="utf-8") == expected, \
        "docs/steps.md is out of date: run python docs/make_step_reference.py"


def test_the_step_reference_lists_every_built_in_step_with_its_options():
    from pipeline_core.testing import make_registry

    registry = make_registry()
    generator = _generator()
    page = generator.render(registry)
    steps = generator.builtin_steps(registry)
    assert steps and set(steps) == {n for n, e in registry.steps.items()
                                    if registry.plugins[e.plugin].package == "(built in)"}
    for name, cls in steps.items():
        section = page.split(f"\n### {name}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        for key in (field.alias or field_name for field_name, field in cls.Params.model_fields.items()):
            assert f"| `{key}` |" in section, f"{name}: option {key} missing from the reference"


def test_a_step_from_a_plugin_package_is_left_out():
    """The page documents the package's own steps, whatever else happens to be installed."""
    from pipeline_core import hookimpl
    from pipeline_core.testing import make_registry
    from pipeline_core.step import Step, StepKind, StepParams

    class Extra(Step):
        """A step only a plugin provides."""

        name = "docs-extra"
        kind = StepKind.OBJECTIVE
        Params = StepParams

        def loss(self, ctx, out):  # pragma: no cover - never run
            raise AssertionError

    class ExtraPlugin:
        @hookimpl
        def register_steps(self, registry):
            registry.add_step(Extra)

    registry = make_registry(ExtraPlugin())
    assert "docs-extra" in registry.steps
    assert "docs-extra" not in _generator().builtin_steps(registry)


# ---- links -------------------------------------------------------------------------------------

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(text: str) -> str:
    """The page without its code: a link-like string in a code block is not a link."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()  # a link counts by its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = _slug(match.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def _links(page: Path) -> list[str]:
    return [m.group(1) for m in _LINK.finditer(_prose(page.read_text(encoding="utf-8")))]


def test_the_slugs_are_githubs():
    assert _slug("Sweeps: throughput per rank and from one process to two") == \
        "sweeps-throughput-per-rank-and-from-one-process-to-two"
    assert _slug("The host: pipeline_core") == "the-host-pipeline_core"
    assert _slug("`timm` models and vision transformers") == "timm-models-and-vision-transformers"
    assert _slug("1. A step") == "1-a-step"
    assert _slug("L1-loss") == "l1-loss"
    assert _slug("Editor support: `pipeline schema`") == "editor-support-pipeline-schema"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page: Path):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not path.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_check_sees_a_broken_link(tmp_path: Path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# Here it is\n", encoding="utf-8")
    page.write_text("[a](there.md#here-it-is) [b](missing.md) `[c](in-code.md)`\n"
                    "```\n[d](in-block.md)\n```\n[e](there.md#nowhere)\n", encoding="utf-8")
    assert _links(page) == ["there.md#here-it-is", "missing.md", "there.md#nowhere"]
    assert _anchors(tmp_path / "there.md") == {"here-it-is"}


# ---- the recipes page --------------------------------------------------------------------------


def _recipe_block() -> dict:
    section = RECIPES_PAGE.read_text(encoding="utf-8").split("## A whole recipe", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "the recipes page shows no yaml block"
    return yaml.safe_load(block.group(1))


def test_the_recipe_block_is_the_castle_recipe():
    assert _recipe_block() == yaml.safe_load((ROOT / "recipes" / "castle_from_flowers.yaml").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_the_set_examples_validate_against_the_castle_recipe():
    text = RECIPES_PAGE.read_text(encoding="utf-8")
    examples = ["iterations=200", "steps.7.hold=2", "steps.6.target=volcano", "keep-photo.hold=2",
                "L1-loss.target=lighthouse"]
    for example in examples:
        assert f"--set {example}" in text
    args = [a for e in examples for a in ("--set", e)]
    done = subprocess.run([sys.executable, "-m", "pipeline_core", "validate",
                           str(ROOT / "recipes" / "castle_from_flowers.yaml"), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
