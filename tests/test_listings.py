"""`pipeline steps`: what a recipe's author reads to find a step and its keys."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline_core.commands.listings import describe_steps, type_name
from pipeline_core.objectives import Targets
from pipeline_core.step import StepKind


def test_steps_are_grouped_by_kind_in_the_order_an_iteration_runs_them(registry):
    text = describe_steps(registry)
    headings = [line.split(" steps")[0] for line in text.splitlines() if line.endswith("─") and " steps " in line]
    assert headings == [k.value for k in StepKind]  # init, param, transform, objective, update
    # each step under its own kind's heading
    assert text.index("init-image  [init]") < text.index("param steps") < text.index("blur  [transform]")
    assert text.index("objective steps") < text.index("L1-loss  [objective]") < text.index("update steps")


def test_types_read_as_words_and_nothing_overflows_the_width(registry):
    text = describe_steps(registry, width=80)
    for internal in ("Annotated", "strict", "NoneType", "Union", "Literal"):
        assert internal not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "[height, width]" in text  # help text is not read as markup
    # the schedule keys are said once at the top, not repeated for every step
    assert text.count("Active one iteration in N") == 0 and "from, until and every" in text


def test_one_step_in_full_shows_its_schedule_keys(registry):
    text = describe_steps(registry, "L1-loss")
    assert "Active one iteration in N" in text and text.startswith("L1-loss  [objective]")


def test_type_names():
    assert type_name(Targets) == "integer or text or list of integer or text"
    assert type_name(int | None) == "integer (optional)"
    assert type_name(tuple[float, float]) == "pair of number"


@pytest.mark.slow
def test_the_cli_prints_the_listing():
    done = subprocess.run([sys.executable, "-m", "pipeline_core", "steps"], capture_output=True, text=True,
                          timeout=120, env={"PIPELINE_DISABLE_PLUGIN_AUTOLOAD": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "transform steps" in done.stdout and "jitter  [transform]  from pipeline_plugins.transform.jitter" in done.stdout


@pytest.mark.slow
def test_classes_lists_the_names_a_target_can_name_from_the_real_metadata_offline(cli, mobilenet_path, tmp_path):
    from pipeline_core.commands.classes import render

    proc = cli("classes", "inception_v3", "--match", "retriever", env={"TORCH_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "inception_v3: 1000 classes (a recipe's target names one by its name or its index, or by any of its "
        "other names)",
        "205  flat-coated retriever", "206  curly-coated retriever", "207  golden retriever",
        "208  Labrador retriever", "209  Chesapeake Bay retriever"]
    assert not any(tmp_path.rglob("*.pth"))  # the skeleton: nothing downloaded
    local = f"mobilenet_v2,weights={mobilenet_path},mean=0.5,std=0.5,size=224"
    proc = cli("classes", local, "--match", "805", "--json")
    assert proc.returncode == 0, proc.stderr
    assert '"name": "soccer ball"' in proc.stdout and proc.stdout.count('"index"') == 1
    proc = cli("classes", "no-such-model")
    assert proc.returncode == 2 and "unknown model 'no-such-model'" in proc.stderr and "Traceback" not in proc.stderr
    assert render("m", ["a", "b", "a"], "zz").endswith("(no class name contains 'zz')")
    assert render("m", ["a", "b", "a"]).endswith("(name these by index): a")
