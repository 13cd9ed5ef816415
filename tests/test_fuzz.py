"""Property-based fuzzing of the recipe loader: any input is accepted or refused with our error.

Three sources of input: random YAML-ish text, random nested structures, and random mutations
of a valid recipe (which get much deeper into validation than random structures do). For
each, ``load_recipe`` must either return a recipe or raise :class:`PipelineError` whose text
is one line; any other exception is a bug. The examples are derandomised, so the suite gives
the same result on every run, and no example database is written into the repository.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_core.errors import PipelineError
from pipeline_core.recipe.loader import load_recipe
from pipeline_core.testing import make_registry
from pipeline_core.recipe.source import Override

REGISTRY = make_registry()
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

#: Words recipes use, so random structures hit real keys and step names often.
WORDS = ["iterations", "seed", "device", "batch", "model", "name", "weights", "mean", "std", "size", "categories",
         "kwargs", "steps", "step", "output", "performance", "video", "frame_every", "fps", "checkpoint_every",
         "writers", "writer", "target", "head", "from", "until", "every", "on", "image", "view", "lr", "kernel",
         "sigma", "sizes", "scales", "split", "start", "end", "images", "threads", "precision", "tiny-test-model",
         "mobilenet_v2", *sorted(REGISTRY.steps)]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WORDS),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.sampled_from(["75%", "150%", "-3%", "%", "0.5", "cuda:0", "cpu", "auto", "1e999", "castle"]),
)
keys = st.one_of(st.sampled_from(WORDS), st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
                 st.integers(-3, 3))
structures = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=6)),
    max_leaves=30,
)

VALID: dict[str, Any] = {
    "iterations": 6,
    "seed": 1,
    "device": "cpu",
    "batch": 2,
    "model": {"name": "tiny-test-model"},
    "steps": [
        {"step": "init-noise", "scale": 0.1, "offset": 0.5, "size": 32},
        {"step": "color-jitter", "brightness": 0.1, "hue": 0.05, "until": 0.5},
        {"step": "rotate", "degrees": 10, "on": "view"},
        {"step": "interpolate", "sizes": [32, 24], "every": 2},
        {"step": "blur", "kernel": 3, "from": "25%"},
        {"step": "target-blend", "start": 1, "end": [2, 3]},
        {"step": "adam", "lr": 0.05, "betas": [0.9, 0.99]},
    ],
    "output": {"video": False, "frame_every": 2, "checkpoint_every": 3},
    "performance": {"precision": "fp32", "threads": 1},
}


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _parent(root: Any, path: tuple) -> Any:
    for part in path[:-1]:
        root = root[part]
    return root


@st.composite
def mutations(draw) -> dict[str, Any]:
    """The valid recipe with one to four random edits: replace, delete, add a key, rename a step."""
    recipe = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(recipe) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(recipe, path)
        op = draw(st.sampled_from(["replace", "replace", "delete", "add", "rename"]))
        if op == "replace":
            parent[path[-1]] = draw(structures)
        elif op == "delete":
            del parent[path[-1]]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(structures)
        elif op == "add" and isinstance(parent, list):
            parent.insert(draw(st.integers(0, len(parent))), draw(structures))
        elif op == "rename" and isinstance(recipe.get("steps"), list) and recipe["steps"]:
            index = draw(st.integers(0, len(recipe["steps"]) - 1))
            if isinstance(recipe["steps"][index], dict):
                recipe["steps"][index]["step"] = draw(st.sampled_from(sorted(REGISTRY.steps)))
    return recipe


def loads_or_refuses(text: str, folder: Path, overrides: tuple[str, ...] = ()) -> None:
    path = folder / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_recipe(path, REGISTRY, overrides)
    except PipelineError as exc:
        assert "\n" not in str(exc), str(exc)  # the command line prints it as one line
        assert str(exc).strip()


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def test_the_valid_recipe_is_valid(tmp_path):
    recipe = load_recipe(_write(tmp_path, dump(VALID)), REGISTRY)
    assert recipe.plan.batch == 2 and len(recipe.steps) == 7


def _write(folder: Path, text: str) -> Path:
    path = folder / "valid.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("abc:-[]{}&*!|>'\"#%@`,?\n\t 01."))
               | st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_random_text(text, tmp_path):
    loads_or_refuses(text, tmp_path)


@pytest.mark.slow
@FUZZ
@given(data=structures)
def test_random_structures(data, tmp_path):
    loads_or_refuses(dump(data), tmp_path)


@pytest.mark.slow
@FUZZ
@given(recipe=mutations())
def test_mutations_of_a_valid_recipe(recipe, tmp_path):
    loads_or_refuses(dump(recipe), tmp_path)


@pytest.mark.slow
@FUZZ
@given(key=st.lists(st.sampled_from(WORDS) | st.integers(0, 9).map(str), min_size=1, max_size=3).map(".".join),
       value=st.text(st.characters(blacklist_categories=("Cs",)), max_size=12) | structures.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()))
def test_random_overrides(key, value, tmp_path):
    text = f"{key}={value}".replace("\n", " ")
    loads_or_refuses(dump(VALID), tmp_path, (text, Override(f"seed={value}", f"--seed {value}")))


def test_nan_and_infinity_survive_as_our_error(tmp_path):
    for value in (math.nan, math.inf, -math.inf):
        recipe = copy.deepcopy(VALID)
        recipe["steps"][-1]["lr"] = value
        loads_or_refuses(dump(recipe), tmp_path)


# -- every command's arguments, and every file the tool reads besides recipes -------------------------
#
# The same promise for the command line and for run folders: whatever the arguments, and however
# run.json or checkpoint.pt were changed, each command ends with exit code 0 or with our one line
# and exit code 2; never the generic fallback (exit 1, "error: SomeError: ...") or a traceback.

import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import pipeline_core.commands.bench as bench_module  # noqa: E402
import pipeline_core.commands.cli as cli  # noqa: E402
from pipeline_core.testing import run_recipe_dict, tiny_recipe  # noqa: E402
from test_bad_input import StopAtPlugin, paused_run  # noqa: E402

FILES_REGISTRY = make_registry(StopAtPlugin())
QUICK = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SLOW = settings(QUICK, max_examples=30)


class _Report:
    def lines(self) -> list[str]:
        return ["bench (stubbed in the fuzz)"]

    def to_dict(self) -> dict:
        return {}


def _bench_stub(recipe, registry, overrides=(), iterations=20, **_kw):
    """What pipeline bench checks before it measures, without the minutes of measuring."""
    load_recipe(recipe, registry, list(overrides) + ([f"iterations={iterations}"] if iterations else []))
    return _Report()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder to run commands in: a recipe, a finished run, a paused one, files and folders."""
    root = tmp_path_factory.mktemp("fuzz-world")
    (root / "recipe.yaml").write_text(dump(tiny_recipe(iterations=2)), encoding="utf-8")
    (root / "text.txt").write_text("not a recipe")
    (root / "folder").mkdir()
    run_recipe_dict(tiny_recipe(iterations=2), root / "done", registry=FILES_REGISTRY)
    paused_run(root / "paused", FILES_REGISTRY, at=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # 'pipeline run' without --out writes runs/ here, not in the repository
        mp.setattr(cli, "_registry", lambda quiet=False: FILES_REGISTRY)
        mp.setattr(bench_module, "bench", _bench_stub)
        yield root


def _promise(capsys, code: int, what: Any) -> None:
    captured = capsys.readouterr()
    assert "--debug shows the traceback" not in captured.err and "Traceback" not in captured.err, (what, captured.err)
    assert code in (0, 2), (what, code, captured.err)
    if code == 2:
        lines = [ln for ln in captured.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error"), (what, captured.err)


COMMANDS = ["run", "validate", "evaluate", "steps", "models", "plugins", "schema", "bench", "frobnicate"]
OPTIONS = ["--set", "--model", "--out", "--device", "--seed", "--quiet", "--force", "--resume", "--batch-size",
           "--iterations", "--warmup", "--rounds", "--json", "--debug", "--help", "--version", "--bogus"]
VALUES = ["recipe.yaml", "done", "paused", "folder", "text.txt", "missing.yaml", "no/such/dir/x.json", "done/run.json",
          "", " ", "~nosuchuser9/x", "a\x00b", "-1", "0", "1", "2", "9" * 40, "\u00b2", "\u0663", "1e3", "nan",
          "cpu", "cuda:x", "cuda:9", "gpu", "tiny-test-model", "tiny-test-model,std=0", "tiny-test-model,mean=nan",
          "tiny-test-model,size=3", "tiny-test-model,label=x", "tiny-test-model,weights=~nosuchuser9/w",
          "mobilenet_v2,weights=missing.pth", "iterations=1", "steps.0.size=8", "steps.9.x=1", "steps.\u00b2=1",
          "steps..x=1", "model=", "seed=" + "9" * 5000, "output.columns=99999", "steps.1.until=1", "=", "x",
          "steps.1.head=layer:features", "model.std=[0,1,1]"]


@QUICK
@given(argv=st.tuples(st.sampled_from(COMMANDS), st.lists(st.sampled_from(OPTIONS + VALUES), max_size=6))
       .map(lambda t: [t[0], *t[1]]))
def test_random_command_lines(argv, world, capsys):
    with contextlib.suppress(SystemExit):
        code = cli.main(argv)
    _promise(capsys, code, argv)


def _mutate(data: Any, draw, values) -> Any:
    """One to three random edits anywhere in a nested mapping: replace, delete or add."""
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        if not paths or not isinstance(data, dict):
            return draw(values)
        path = draw(st.sampled_from(paths))
        parent = _parent(data, path)
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(values)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        else:
            parent.insert(draw(st.integers(0, len(parent))), draw(values))
    return data


def _fresh(world: Path, name: str) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="fuzz-", dir=world)) / name
    shutil.copytree(world / name, dest)
    return dest


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_random_run_records_given_to_evaluate_and_resume(data, world, capsys):
    for name, argv in (("done", ["evaluate", "{}", "--model", "tiny-test-model"]),
                       ("paused", ["run", "--resume", "{}", "--quiet"])):
        folder = _fresh(world, name)
        try:
            record = json.loads((folder / "run.json").read_text())
            changed = _mutate(record, data.draw, structures)
            (folder / "run.json").write_text(json.dumps(changed, default=str))
            args = [a.format(folder) for a in argv]
            _promise(capsys, cli.main(args), (args, changed))
        finally:
            shutil.rmtree(folder.parent)


tensors = st.builds(
    lambda shape, dtype, fill: torch.full(shape, fill).to(dtype),
    st.lists(st.integers(0, 3), max_size=4),
    st.sampled_from([torch.float32, torch.float64, torch.float16, torch.uint8, torch.int64, torch.bool]),
    st.sampled_from([0.0, 0.5, 1.0, -1.0, float("nan"), float("inf")]),
)
checkpoint_values = st.one_of(structures, tensors, st.lists(tensors, max_size=3),
                              st.dictionaries(st.integers(-1, 9) | st.sampled_from(WORDS), tensors | structures,
                                              max_size=3))


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_random_checkpoints_given_to_resume(data, world, capsys):
    folder = _fresh(world, "paused")
    try:
        if data.draw(st.booleans()):
            checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
            torch.save(_mutate(checkpoint, data.draw, checkpoint_values), folder / "checkpoint.pt")
        else:  # the bytes themselves: cut short, or a byte changed
            raw = bytearray((folder / "checkpoint.pt").read_bytes())
            at = data.draw(st.integers(0, len(raw) - 1))
            if data.draw(st.booleans()):
                raw = raw[:at]
            else:
                raw[at] ^= data.draw(st.integers(1, 255))
            (folder / "checkpoint.pt").write_bytes(bytes(raw))
        _promise(capsys, cli.main(["run", "--resume", str(folder), "--quiet"]), "checkpoint")
    finally:
        shutil.rmtree(folder.parent)
