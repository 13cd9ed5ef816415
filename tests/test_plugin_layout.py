"""The built-ins' layout (one step per module, in the package of its kind), the deprecated aliases
of the old flat modules, the seeded-draw helper, and where a transform may act (``places``)."""

from __future__ import annotations

import ast
import configparser
import importlib
import sys
import warnings
from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import Field

import pipeline_plugins
from pipeline_core.context import seeded_draw
from pipeline_core.errors import RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.recipe.loader import load_recipe
from pipeline_core.registry import Registry
from pipeline_core.step import Step, StepKind, TransformParams
from pipeline_core.testing import TINY_MODEL, TINY_SIZE, check_step
from pipeline_plugins.moved_modules import MOVED

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"


def _registered(module) -> Registry:
    """What one plugin module registers, into a registry of its own."""
    registry = Registry()
    registry._as(module.__name__)
    for hook in ("register_steps", "register_models"):
        if hasattr(module, hook):
            getattr(module, hook)(registry)
    return registry


@pytest.mark.parametrize("module", pipeline_plugins.BUILTIN_PLUGINS, ids=lambda m: m.__name__)
def test_each_step_module_holds_one_step_named_for_it_in_the_package_of_its_kind(module):
    registry = _registered(module)
    if module.__name__ in ("pipeline_plugins.torchvision_models", "pipeline_plugins.timm_models"):
        assert not registry.steps and (registry.models or registry.families)
        return
    (name,) = registry.steps
    kind = registry.steps[name].obj.kind
    assert module.__name__ == f"pipeline_plugins.{kind.value}.{name.lower().replace('-', '_')}"
    assert registry.steps[name].obj.__module__ == module.__name__


def test_every_module_with_a_hook_is_registered_and_helpers_register_nothing():
    registered = {m.__name__ for m in pipeline_plugins.BUILTIN_PLUGINS}
    for path in PLUGINS.rglob("*.py"):
        module = importlib.import_module(
            "pipeline_plugins." + ".".join(path.relative_to(PLUGINS).with_suffix("").parts).removesuffix(".__init__"))
        hooks = {h for h in ("register_steps", "register_models", "register_outputs") if hasattr(module, h)}
        if module.__name__ == "pipeline_plugins":
            continue
        assert bool(hooks) == (module.__name__ in registered), module.__name__
    kinds = {p.name for p in PLUGINS.iterdir() if (p / "__init__.py").is_file()}
    assert kinds == {k.value for k in StepKind}


def test_setup_cfg_installs_every_package_and_ships_the_photos():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    packages = set(config["options"]["packages"].split())
    folders = {"pipeline_plugins" + "".join("." + part for part in p.parent.relative_to(PLUGINS).parts)
               for p in PLUGINS.rglob("__init__.py")}
    assert folders <= packages
    assert "pipeline_plugins = plugins" in config["options"]["package_dir"]
    shipped = config["options.package_data"]["pipeline_plugins"]
    assert "photos/*.png" in shipped and "photos/*.jpg" in shipped
    assert len(list((PLUGINS / "photos").glob("*.png")) + list((PLUGINS / "photos").glob("*.jpg"))) == 10


# -- the old flat modules --------------------------------------------------------------------


def _import_fresh(name: str):
    """``import name`` afresh, as an import statement does it (no importlib frame in between)."""
    sys.modules.pop(name, None)
    __import__(name)
    return sys.modules[name]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_still_imports_with_a_deprecation_warning(old):
    with pytest.warns(DeprecationWarning, match=rf"pipeline_plugins\.{old} is deprecated: import from") as caught:
        alias = _import_fresh(f"pipeline_plugins.{old}")
    assert caught[0].filename == __file__  # the warning names the line that imported the old path
    for target in MOVED[old]:
        new = importlib.import_module(f"pipeline_plugins.{target}")
        for name, value in vars(new).items():
            if isinstance(value, type) and value.__module__ == new.__name__:
                assert getattr(alias, name) is value
    # no hooks: registering the alias as a plugin must not register its steps a second time
    assert not any(hasattr(alias, h) for h in ("register_steps", "register_models"))


def test_the_old_imports_plugin_authors_wrote_give_the_same_objects():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in ("view_transforms", "crops", "layer_objectives", "updates", "init_image", "bn_statistics"):
            sys.modules.pop(f"pipeline_plugins.{name}", None)
        from pipeline_plugins.bn_statistics import BUILTIN_PHOTOS
        from pipeline_plugins.crops import Crops, draw
        from pipeline_plugins.init_image import MAX_PHOTO_PIXELS, load_photo
        from pipeline_plugins.layer_objectives import Channel, InterpolateParams, Neuron
        from pipeline_plugins.updates import Adam, AdamParams, GradientStep, SignStep, UpdateParams
        from pipeline_plugins.view_transforms import Jitter, JitterParams, RandomScale

    from pipeline_plugins import photo_files
    from pipeline_plugins.objective.channel import Channel as NewChannel
    from pipeline_plugins.objective.channel_interpolate import ChannelInterpolateParams
    from pipeline_plugins.transform.crops import Crops as NewCrops
    from pipeline_plugins.transform.jitter import Jitter as NewJitter
    from pipeline_plugins.update.adam import Adam as NewAdam

    assert (Crops, Jitter, Channel, Adam) == (NewCrops, NewJitter, NewChannel, NewAdam)
    assert draw is seeded_draw and InterpolateParams is ChannelInterpolateParams
    assert load_photo is photo_files.load_photo and MAX_PHOTO_PIXELS == photo_files.MAX_PHOTO_PIXELS
    assert BUILTIN_PHOTOS == photo_files.BUILTIN_PHOTOS
    assert {RandomScale.name, Neuron.name, GradientStep.name, SignStep.name} == {"random-scale", "neuron",
                                                                                  "gradient-step", "sign-step"}
    assert issubclass(AdamParams, UpdateParams) and "pixels" in JitterParams.model_fields


def test_a_module_that_never_existed_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("pipeline_plugins.no_such_module")


# -- seeded draws ----------------------------------------------------------------------------


def test_seeded_draw_on_the_cpu_is_the_generators_own_draw_in_the_dtype_of_like():
    like = torch.zeros(1, dtype=torch.float64)
    got = seeded_draw(torch.randn, (2, 3), torch.Generator().manual_seed(5), like)
    assert got.dtype == torch.float64
    assert torch.equal(got, torch.randn((2, 3), generator=torch.Generator().manual_seed(5)).double())
    g = torch.Generator().manual_seed(5)
    first, second = seeded_draw(torch.rand, (4,), g, like), seeded_draw(torch.rand, (4,), g, like)
    assert not torch.equal(first, second)  # one stream: each draw moves it on


def test_the_context_does_not_import_the_step_module():
    """step.py names the context in its signatures; the context needs only a step's index."""
    tree = ast.parse((ROOT / "pipeline_core" / "context.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert "pipeline_core.step" not in imported


# -- where a transform acts ------------------------------------------------------------------


def _recipe(tmp_path: Path, step: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"""iterations: 4
model:
  name: {TINY_MODEL.name}
steps:
  - step: init-noise
    size: {TINY_SIZE}
{step}
  - step: L1-loss
    target: 3
  - step: gradient-step
    lr: 0.01
""", encoding="utf-8")
    return path


@pytest.mark.parametrize("step, line, wanted", [
    ("  - step: crops\n    'on': image", 8, "use on: view"),
    ("  - step: noise\n    'on': image", 8, "use on: view"),
    ("  - step: spectrum-jitter\n    'on': image", 8, "use on: view"),
    ("  - step: skip-gradient\n    required: false\n    'on': image", 9, "use on: view"),
    ("  - step: octave\n    'on': view", 8, "use on: image"),
])
def test_a_recipe_asking_a_transform_for_a_place_it_lacks_gets_one_line_naming_file_line_and_step(
        tmp_path, registry, step, line, wanted):
    with pytest.raises(RecipeError) as caught:
        load_recipe(_recipe(tmp_path, step), registry)
    text = str(caught.value)
    name = step.split("step: ")[1].split("\n")[0]
    assert text.startswith(f"{tmp_path / 'recipe.yaml'}:{line}: step 1 ({name}): key 'on': ")
    assert wanted in text and "\n" not in text


def test_the_builtins_declare_their_places_and_every_other_transform_takes_both(registry):
    one_place = {name: entry.obj.places for name, entry in registry.steps.items()
                 if entry.obj.kind is StepKind.TRANSFORM and entry.obj.places != ("image", "view")}
    assert one_place == {"crops": ("view",), "noise": ("view",), "spectrum-jitter": ("view",),
                         "skip-gradient": ("view",), "octave": ("image",)}


class _ViewOnlyParams(TransformParams):
    on: Literal["image", "view"] = Field("view", description="view only.")


class _ViewOnly(Step):
    """Adds one to what the model sees; the stored image never changes."""

    name = "view-only-test"
    kind = StepKind.TRANSFORM
    Params = _ViewOnlyParams
    places = ("view",)
    bound = 0

    def bind(self, plan) -> None:  # its own bind: the host's check still runs first
        type(self).bound += 1

    def apply(self, ctx, x):
        return x + 1


def test_a_third_party_transform_declares_its_place_once_and_the_host_checks_it():
    with pytest.raises(RecipeError, match="view-only-test acts only on what the model sees .on: view., not on "
                                          "the stored image: use on: view"):
        _ViewOnly(_ViewOnlyParams(on="image")).bind(None)
    assert _ViewOnly.bound == 0
    _ViewOnly(_ViewOnlyParams()).bind(None)
    assert _ViewOnly.bound == 1
    check_step(_ViewOnly, {}, run=False)  # the contract tries on: image too, and accepts the refusal


def test_a_wrong_places_declaration_fails_when_the_class_is_defined():
    with pytest.raises(TypeError, match="places must be a non-empty tuple"):
        type("Sky", (Step,), {"name": "sky", "kind": StepKind.TRANSFORM, "Params": TransformParams,
                              "places": ("sky",), "apply": lambda self, ctx, x: x})
    with pytest.raises(TypeError, match="default 'on: image' of its Params is not among its places"):
        type("Viewer", (Step,), {"name": "viewer", "kind": StepKind.TRANSFORM, "Params": TransformParams,
                                 "places": ("view",), "apply": lambda self, ctx, x: x})


class _Plugin:
    @hookimpl
    def register_steps(self, registry):
        registry.add_step(_ViewOnly)


def test_a_view_only_transform_runs_in_a_recipe(tmp_path):
    from pipeline_core.testing import registered, run_recipe_dict, tiny_recipe

    recipe = tiny_recipe()
    recipe["steps"].insert(1, {"step": "view-only-test"})
    with registered(_Plugin()) as registry:
        assert run_recipe_dict(recipe, tmp_path / "run", registry=registry).status == "completed"
