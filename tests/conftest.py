"""Shared fixtures: the real MobileNetV2 from ../shared/models, photos, a CLI runner, and the
registry a test module runs with (``registry``, with the test plugins its ``plugins`` mark names)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_core.registry import Registry
from pipeline_core.testing import make_registry

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PIPELINE_SHARED", ROOT.parent / "shared"))
MOBILENET = Path(os.environ.get("PIPELINE_MOBILENET", SHARED / "models" / "mobilenet_v2_imagenet.pth"))
RECIPES = ROOT / "recipes"
PHOTOS = RECIPES / "images"

#: --set arguments that point any recipe at the local MobileNetV2
MOBILENET_SETS = [
    "model.name=mobilenet_v2",
    f"model.weights={MOBILENET}",
    "model.mean=[0.5,0.5,0.5]",
    "model.std=[0.5,0.5,0.5]",
    "model.size=224",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for the real weights is marked ``needs_weights`` (``-m "not needs_weights"``
    leaves them out on a machine without them, instead of a page of skips). A ``plugins`` mark
    is the module's (the ``registry`` fixture is built once per module), so one on a single test
    or class is refused rather than silently ignored."""
    for item in items:
        if "mobilenet_path" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_weights)
        module = item.getparent(pytest.Module)
        if module is not None and item.get_closest_marker("plugins") is not module.get_closest_marker("plugins"):
            raise pytest.UsageError(f"{item.nodeid}: the plugins mark belongs on the module "
                                    "(pytestmark = pytest.mark.plugins(...)), not on one test or class")


@pytest.fixture(scope="module")
def registry(request: pytest.FixtureRequest) -> Registry:
    """The registry a test module runs with: the built-in steps, the testing kit's tiny model and
    the test plugins the module names with ``pytestmark = pytest.mark.plugins(Plugin(), ...)``;
    never the plugins installed in the environment (``installed_registry()`` is for the tests of
    loading those). One per module; ``registered(plugin, registry)`` adds a plugin for one block."""
    mark = request.node.get_closest_marker("plugins")
    return make_registry(*(mark.args if mark else ()))


@pytest.fixture
def in_process(registry: Registry, monkeypatch: pytest.MonkeyPatch):
    """``cli.main`` with the module's registry (the tiny test model, no installed plugins)."""
    from pipeline_core.commands import cli

    monkeypatch.setattr(cli, "_registry", lambda quiet=False: registry)
    return cli.main


@pytest.fixture(scope="session")
def mobilenet_path() -> Path:
    if not MOBILENET.is_file():
        pytest.skip(f"the real MobileNetV2 weights are not at {MOBILENET} (set PIPELINE_MOBILENET)")
    return MOBILENET


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real ``pipeline`` command in a subprocess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline_core", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
