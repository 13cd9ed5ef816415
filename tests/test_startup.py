"""Commands that need no model start without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = ("import sys; from pipeline_core.commands import cli; code = cli.main({args!r}); "
         "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code)")


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["run", "--help"], ["sweep", "--help"]])
def test_version_and_help_do_not_import_torch(args):
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PIPELINE_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "NO-TORCH 0", done.stdout[-500:]


def test_the_command_itself_imports_no_torch_for_its_version():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline_core", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("pipeline ")
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "pipeline_core.commands.cli" in modules and "torch" not in modules


# -- commands that list or check: the host and the built-ins load without torch ------------------

ROOT = Path(__file__).resolve().parents[1]
#: what a command that runs no model must not import: each costs seconds on an idle core
HEAVY = ("torch", "torchvision")


def _imported(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the command with third-party plugins off (one that imports torch costs its own import)
    and say which of HEAVY it imported, and through which modules the first of them came."""
    env = {**os.environ, "PIPELINE_DISABLE_PLUGIN_AUTOLOAD": "1", "TORCH_HOME": str(tmp_path / "torch")}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline_core", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT)
    rows = [line.split("|") for line in done.stderr.splitlines() if line.startswith("import time:") and "|" in line]
    names = [row[-1].rstrip() for row in rows[1:]]
    for i, name in enumerate(names):
        if name.strip() in HEAVY:  # the modules below it at lower depths imported it
            depth, chain = len(name) - len(name.lstrip()), [name.strip()]
            for later in names[i + 1:]:
                if len(later) - len(later.lstrip()) < depth:
                    depth = len(later) - len(later.lstrip())
                    chain.append(later.strip())
            return done, chain
    return done, []


@pytest.mark.parametrize("args", [["steps"], ["steps", "blur"], ["schema"], ["plugins"], ["plugins", "--json"],
                                  ["models"]])
def test_listing_commands_do_not_import_torch(args, tmp_path):
    """Every built-in module is imported to register its steps and models: one that imported
    torch at its top level again (``import torch`` instead of ``from ..lazy_imports import
    torch``), or a face module that did, fails here, named with the modules that pulled it in."""
    done, chain = _imported(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not chain, f"pipeline {' '.join(args)} imported {chain[0]} through {' <- '.join(chain[1:])}"


def test_validate_does_not_import_torch(tmp_path):
    """Validation reads the model's names and class names from the torchvision plugin's table and
    checks layer paths (the one check that builds a model, on torch's meta device) only for a
    recipe that names a layer; best_class.yaml does not."""
    done, chain = _imported(["validate", "recipes/best_class.yaml"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "valid (12 steps" in done.stdout
    assert not chain, f"pipeline validate imported {chain[0]} through {' <- '.join(chain[1:])}"


def test_the_built_in_plugins_load_without_torch():
    """In-process, closer to the code: importing every built-in and registering it leaves torch,
    torchvision, numpy and PIL unimported (the stand-ins of lazy_imports stay empty)."""
    probe = ("import sys; from pipeline_core.host.manager import build_registry; r = build_registry(); "
             "assert len(r.steps) > 25 and 'mobilenet_v2' in r.models, r.problems; "
             "print(sorted(m for m in ('torch', 'torchvision', 'numpy', 'PIL') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PIPELINE_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_lazy_module_imports_on_first_use_and_then_is_the_module():
    import importlib

    from pipeline_plugins.lazy_imports import LazyModule

    lazy = LazyModule("json")
    assert "loads" not in vars(lazy) and "not imported" in repr(lazy)
    assert lazy.loads("[1]") == [1] and lazy.dumps is importlib.import_module("json").dumps
    assert "loads" in vars(lazy) and "(imported)" in repr(lazy)
    with pytest.raises(AttributeError):
        lazy.no_such_name


def test_the_torchvision_table_is_what_torchvision_says():
    """The plugin's copy of torchvision's names and weights' metadata matches the installed
    torchvision exactly; after installing another version, regenerate it (the table's docstring
    says how); until then the plugin reads torchvision itself, so nothing is wrong, only slower."""
    from pipeline_plugins import torchvision_models as tv
    from pipeline_plugins.torchvision_table import TABLE

    live = tv.live_table()
    if live["torchvision"] != TABLE["torchvision"]:
        pytest.skip(f"the table is for torchvision {TABLE['torchvision']}, {live['torchvision']} is installed: "
                    "regenerate it with pipeline_plugins.torchvision_models.write_table()")
    assert live == TABLE
    assert tv.table() is TABLE  # the installed version is the table's: no import needed


def test_the_torchvision_plugin_reads_torchvision_when_its_table_is_for_another_version(monkeypatch):
    from pipeline_plugins import torchvision_models as tv

    from pipeline_plugins.torchvision_table import TABLE

    monkeypatch.setattr(tv, "_installed_version", lambda: "0.0.1")
    tv.table.cache_clear()
    try:
        read = tv.table()
        assert read is not TABLE and read["torchvision"] == "0.0.1" and "mobilenet_v2" in read["models"]
    finally:
        tv.table.cache_clear()


def test_the_weights_cache_is_found_without_torch_where_torch_puts_it(monkeypatch, tmp_path):
    import torch

    from pipeline_plugins import torchvision_models as tv

    for env in ({"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {}):
        monkeypatch.delenv("TORCH_HOME", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delitem(sys.modules, "torch")  # as before torch is imported
        without = tv._hub_dir()
        monkeypatch.setitem(sys.modules, "torch", torch)
        assert without == Path(torch.hub.get_dir()), env
