"""docs/plugins.md is followed literally: its files make a package whose own tests pass.

Every code block in the guide that starts with a ``# path`` comment is written to that path;
setup.cfg's entry point becomes a real dist-info, as pip would make it; then the guide's
tests run in a fresh pytest process (with the testing kit loaded through its pytest11 entry
point, as for any user) and the host finds the plugin through its entry point.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_core.host.manager import build_registry

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
BLOCK = re.compile(r"```(?:python|ini|toml)\n# ([\w./-]+)\n(.*?)```", re.S)


def guide_files() -> dict[str, str]:
    return {path: body for path, body in BLOCK.findall(GUIDE.read_text(encoding="utf-8"))}


@pytest.fixture(scope="module")
def guide_package(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("guide")
    for path, body in guide_files().items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body, encoding="utf-8")
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    name, version = cfg["metadata"]["name"], cfg["metadata"]["version"]
    site = root / "site"
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    eps = cfg["options.entry_points"]["pipeline_core.plugins"].strip()
    (info / "entry_points.txt").write_text(f"[pipeline_core.plugins]\n{eps}\n", encoding="utf-8")
    return root, site


def test_the_guide_has_every_file_of_its_package():
    assert {"setup.cfg", "pyproject.toml", "src/pipeline_greyworld/__init__.py", "src/pipeline_greyworld/plugin.py",
            "src/pipeline_greyworld/steps.py", "src/pipeline_greyworld/models.py",
            "tests/test_greyworld.py"} <= set(guide_files())


@pytest.mark.slow
def test_the_guides_own_tests_pass(guide_package):
    root, site = guide_package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(site)])}
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                            cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "4 passed" in result.stdout


def test_the_host_finds_the_guides_plugin_through_its_entry_point(guide_package, monkeypatch):
    root, site = guide_package
    monkeypatch.syspath_prepend(str(root / "src"))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PIPELINE_PLUGINS", "greyworld")
    monkeypatch.delenv("PIPELINE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    try:
        registry = build_registry()
    finally:
        for module in [m for m in sys.modules if m.startswith("pipeline_greyworld")]:
            del sys.modules[module]
    info = registry.plugins["greyworld"]
    assert (info.package, info.version, info.problems) == ("pipeline-greyworld", "0.1.0", [])
    assert info.registers == ["step grey-world", "model flowers-mnv3"]
