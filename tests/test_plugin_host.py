"""The plugin host survives bad plugins, found through real entry points.

Each fake plugin is a real distribution: a module plus a ``*.dist-info`` folder with METADATA
and entry_points.txt on a directory put on PYTHONPATH, which is exactly how
importlib.metadata finds a pip-installed plugin. The CLI runs in a subprocess, as a user runs
it.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline_core.commands.listings import describe_plugins
from pipeline_core.hookspecs import API_VERSION
from pipeline_core.host.manager import build_registry, get_plugin_manager

from conftest import run_cli

GOOD = '''
    """A well-behaved plugin: a step and the tiny test model (so the CLI can run without weights)."""
    from pydantic import Field

    from pipeline_core.hookspecs import hookimpl
    from pipeline_core.step import Step, StepKind, TransformParams
    from pipeline_core.testing import TINY_MODEL

    PIPELINE_API = ">=1.0,<2"


    class Darken(Step):
        """Multiply the image by a factor below one."""

        name = "darken-test"
        kind = StepKind.TRANSFORM

        class Params(TransformParams):
            factor: float = Field(0.9, gt=0, le=1, description="Multiplier.")

        def apply(self, ctx, x):
            return x * self.params.factor


    @hookimpl
    def register_steps(registry):
        registry.add_step(Darken)


    @hookimpl
    def register_models(registry):
        registry.add_model(TINY_MODEL)
'''

BROKEN_IMPORT = '''
    import a_module_that_does_not_exist_anywhere  # noqa: F401
'''

RAISES = '''
    """Registers a step, then fails: everything it registered must be withdrawn."""
    from pipeline_core.hookspecs import hookimpl
    from pipeline_core.step import Step, StepKind, StepParams


    class Half(Step):
        """A step whose plugin fails later."""

        name = "half-registered"
        kind = StepKind.OBJECTIVE
        Params = StepParams

        def loss(self, ctx, out, image):
            return image.mean((1, 2, 3))


    @hookimpl
    def register_steps(registry):
        registry.add_step(Half)


    @hookimpl
    def register_models(registry):
        raise RuntimeError("the model server is down\\nsecond line that must not be shown")
'''

OLD_API = '''
    from pipeline_core.hookspecs import hookimpl

    PIPELINE_API = ">=0.1,<1"


    @hookimpl
    def register_steps(registry):
        raise AssertionError("a plugin for another API must never be called")
'''

CLASH = '''
    """Registers 'blur' (taken by the built-in) and a free name: only the free one is kept."""
    from pipeline_core.hookspecs import hookimpl
    from pipeline_core.step import Step, StepKind, StepParams, TransformParams


    class MyBlur(Step):
        """Another blur."""

        name = "blur"
        kind = StepKind.TRANSFORM
        Params = TransformParams

        def apply(self, ctx, x):
            return x


    class Keeper(MyBlur):
        """A step with a free name."""

        name = "clash-keeper"


    @hookimpl
    def register_steps(registry):
        registry.add_step(MyBlur)
        registry.add_step(Keeper)
'''

MISSPELT = '''
    from pipeline_core.hookspecs import hookimpl


    @hookimpl
    def register_step(registry):  # misspelt: the hook is register_steps
        pass
'''

PLAIN_TRANSFORM = '''
    """A transform whose Params forgot TransformParams: refused when the plugin loads."""
    from pipeline_core.hookspecs import hookimpl
    from pipeline_core.step import Step, StepKind, StepParams


    class Plain(Step):
        """Darkens, but cannot say where it acts."""

        name = "plain-transform"
        kind = StepKind.TRANSFORM
        Params = StepParams

        def apply(self, ctx, x):
            return x * 0.5


    @hookimpl
    def register_steps(registry):
        registry.add_step(Plain)
'''

#: entry-point name -> (distribution, module name, source)
FAKES = {
    "good": ("fake-good", "fake_good_plugin", GOOD),
    "broken": ("fake-broken", "fake_broken_plugin", BROKEN_IMPORT),
    "raises": ("fake-raises", "fake_raises_plugin", RAISES),
    "oldapi": ("fake-oldapi", "fake_oldapi_plugin", OLD_API),
    "clash": ("fake-clash", "fake_clash_plugin", CLASH),
    "misspelt": ("fake-misspelt", "fake_misspelt_plugin", MISSPELT),
    "plain": ("fake-plain", "fake_plain_plugin", PLAIN_TRANSFORM),
}


def make_dist(site: Path, dist: str, version: str, module: str, source: str, entry_name: str) -> None:
    """A minimal installed distribution: the module and a dist-info with one entry point."""
    (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[pipeline_core.plugins]\n{entry_name} = {module}\n", encoding="utf-8")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    for entry_name, (dist, module, source) in FAKES.items():
        make_dist(root, dist, "1.2.3", module, source, entry_name)
    return root


@pytest.fixture
def on_path(site, monkeypatch):
    """The fake distributions importable in this process too (for the in-process checks)."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("PIPELINE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("PIPELINE_PLUGINS", raising=False)
    yield site
    for _, module, _ in FAKES.values():
        sys.modules.pop(module, None)


def cli_env(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PIPELINE_DISABLE_PLUGIN_AUTOLOAD", "PIPELINE_PLUGINS")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def tiny_recipe_file(folder: Path, extra_steps: list[dict] | None = None) -> Path:
    recipe = {
        "iterations": 2,
        "device": "cpu",
        "model": {"name": "tiny-test-model"},
        "steps": [{"step": "init-noise", "size": 32}, *(extra_steps or []),
                  {"step": "L1-loss", "target": 1}, {"step": "gradient-step", "lr": 0.01}],
        "output": {"video": False},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


# -- in process: the exact one-line reports ---------------------------------------------------


def test_each_broken_plugin_is_reported_in_one_line_and_the_rest_works(on_path):
    registry = build_registry()
    by_plugin = {name: registry.plugins[name].problems for name in FAKES}
    assert by_plugin["good"] == []
    assert registry.plugins["good"].package == "fake-good" and registry.plugins["good"].version == "1.2.3"
    assert registry.provider("step", "darken-test") == "good"

    (line,) = by_plugin["broken"]
    assert line.startswith("plugin 'broken' (fake-broken 1.2.3) was skipped: it failed to import: ModuleNotFoundError")
    assert "a_module_that_does_not_exist_anywhere" in line

    (line,) = by_plugin["raises"]
    assert line == ("plugin 'raises' (fake-raises 1.2.3) was skipped: register_models raised RuntimeError: "
                    "the model server is down")
    assert "half-registered" not in registry.steps  # withdrawn with its plugin

    (line,) = by_plugin["oldapi"]
    assert line == ("plugin 'oldapi' (fake-oldapi 1.2.3) was skipped: it needs plugin API >=0.1,<1, "
                    f"this host provides {API_VERSION}")

    (line,) = by_plugin["clash"]
    assert "plugin 'clash' (fake-clash 1.2.3): step 'blur' was not registered" in line
    assert "plugin 'pipeline_plugins.transform.blur' already registers it" in line
    assert registry.provider("step", "blur") == "pipeline_plugins.transform.blur"
    assert registry.provider("step", "clash-keeper") == "clash"

    (line,) = by_plugin["misspelt"]
    assert line.startswith("plugin 'misspelt' (fake-misspelt 1.2.3) was skipped: it implements 'register_step', "
                           "which this host does not know")

    (line,) = by_plugin["plain"]
    assert line == ("plugin 'plain' (fake-plain 1.2.3) was skipped: in register_steps: step "
                    "'plain-transform' is a transform: its Params must subclass pipeline_core.step.TransformParams "
                    "(which adds 'on: image | view')")
    assert "plain-transform" not in registry.steps

    assert all("\n" not in p for p in registry.problems)
    assert len(registry.problems) == 6
    # built-ins are untouched
    assert registry.provider("step", "L1-loss") == "pipeline_plugins.objective.l1_loss"


def test_a_step_of_a_withdrawn_plugin_says_why_it_is_missing(on_path):
    registry = build_registry()
    with pytest.raises(KeyError, match=r"step 'half-registered' is not available: plugin 'raises' \(fake-raises"):
        registry.step("half-registered")
    with pytest.raises(KeyError, match=r"unknown step 'darken-tset'; did you mean 'darken-test'"):
        registry.step("darken-tset")


def test_a_name_clash_between_two_installed_plugins_names_both(tmp_path, monkeypatch):
    source = '''
        from pipeline_core.hookspecs import hookimpl
        from pipeline_core.testing import TINY_MODEL

        @hookimpl
        def register_models(registry):
            registry.add_model(TINY_MODEL)
    '''
    make_dist(tmp_path, "first-dist", "1.0", "clash_first_mod", source, "aaa-first")
    make_dist(tmp_path, "second-dist", "2.0", "clash_second_mod", source, "zzz-second")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PIPELINE_PLUGINS", "aaa-first,zzz-second")
    try:
        registry = build_registry()
    finally:
        sys.modules.pop("clash_first_mod", None)
        sys.modules.pop("clash_second_mod", None)
    (line,) = registry.problems
    first, second = registry.plugins["aaa-first"], registry.plugins["zzz-second"]
    loser, winner = (second, first) if registry.provider("model", "tiny-test-model") == "aaa-first" else (first, second)
    assert line == (f"plugin {loser.label}: model 'tiny-test-model' was not registered because plugin "
                    f"{winner.label} already registers it; uninstall one of them or ask its author to rename it")
    assert "first-dist 1.0" in line and "second-dist 2.0" in line


def test_autoload_can_be_disabled(on_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = build_registry()
    assert not set(FAKES) & set(registry.plugins)
    assert registry.problems == []
    assert "blur" in registry.steps  # built-ins still load
    monkeypatch.setenv("PIPELINE_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert "good" in build_registry().plugins


def test_plugins_json_lists_package_version_registrations_and_problems(on_path):
    data = {p["name"]: p for p in json.loads(describe_plugins(build_registry(), as_json=True))}
    assert data["good"]["package"] == "fake-good" and data["good"]["version"] == "1.2.3"
    assert data["good"]["registers"] == ["step darken-test", "model tiny-test-model"]
    assert data["clash"]["registers"] == ["step clash-keeper"]
    assert data["oldapi"]["problems"][0].startswith("plugin 'oldapi' (fake-oldapi 1.2.3) was skipped")


def test_selected_plugins_only_and_unknown_selections_are_reported(on_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_PLUGINS", " good , nosuch")
    registry = build_registry()
    assert not (set(FAKES) - {"good"}) & set(registry.plugins)
    assert registry.provider("step", "darken-test") == "good"
    (line,) = registry.problems
    assert line.startswith("plugin 'nosuch' named in PIPELINE_PLUGINS is not installed (installed plugins: ")
    assert "good" in line.split("installed plugins: ")[1]


def test_get_plugin_manager_never_raises_for_a_broken_plugin(on_path):
    pm = get_plugin_manager()
    assert pm.get_plugin("good") is not None
    assert pm.get_plugin("misspelt") is None  # unregistered again after the check
    assert {"broken", "oldapi", "misspelt"} <= set(pm.skipped)


# -- the real command line ------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_lists_plugins_and_runs_a_recipe_beside_broken_plugins(site, tmp_path):
    env = cli_env(site)
    listing = run_cli("plugins", env=env)
    assert listing.returncode == 0, listing.stderr
    out = listing.stdout
    assert "good  (fake-good 1.2.3)" in out and "step darken-test, model tiny-test-model" in out
    assert "problem: plugin 'broken' (fake-broken 1.2.3) was skipped: it failed to import" in out
    assert "problem: plugin 'clash' (fake-clash 1.2.3): step 'blur' was not registered" in out

    recipe = tiny_recipe_file(tmp_path, [{"step": "darken-test", "factor": 0.95}])
    run = run_cli("run", str(recipe), "--out", str(tmp_path / "run"), env=env)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run" / "run.json").is_file()
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 6, run.stderr  # one line per problem, printed once
    assert "Traceback" not in run.stderr and "second line" not in run.stderr


@pytest.mark.slow
def test_cli_validate_of_a_withdrawn_step_is_a_one_line_error(site, tmp_path):
    recipe = tiny_recipe_file(tmp_path, [{"step": "half-registered"}])
    result = run_cli("validate", str(recipe), env=cli_env(site))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "step 'half-registered' is not available: plugin 'raises'" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_loads_only_the_selected_plugins(site):
    only = run_cli("steps", "darken-test", env=cli_env(site, PIPELINE_PLUGINS="good"))
    assert only.returncode == 0 and "darken-test  [transform]  from good" in only.stdout
    assert "from " in only.stdout.split("darken-test  [transform]")[1]  # one step in full: schedule keys too
    assert "warning" not in only.stderr  # the broken ones were never loaded


def test_an_unknown_name_points_at_a_plugin_that_could_not_load():
    """A recipe's step from a plugin that failed to import: the error says which plugin failed."""
    from pipeline_core.registry import Registry

    registry = Registry()
    info = registry._info("nightvision")
    info.package, info.version = "pipeline-nightvision", "2.0"
    registry._problem("nightvision", "plugin 'nightvision' (pipeline-nightvision 2.0) was skipped: it failed to "
                                     "import: ModuleNotFoundError: No module named 'cv3'")
    with pytest.raises(KeyError) as info:
        registry.step("night-filter")
    message = str(info.value)
    assert "unknown step 'night-filter'" in message
    assert "'nightvision' (pipeline-nightvision 2.0) could not be loaded" in message
    clean = Registry()
    with pytest.raises(KeyError) as info:
        clean.step("night-filter")
    assert "could not be loaded" not in str(info.value)
