"""pipeline sweep: jobs packed into batches, sweep.json, restarts, failures, Ctrl-C, evaluation.

One small real sweep on the local MobileNetV2 (64 px, 3 iterations, five classes x two seeds
in batches of two) is shared by most tests; the interrupt test runs its own, longer one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import MOBILENET, ROOT, run_cli
from pipeline_core.errors import RecipeError
from pipeline_core.host.manager import build_registry

REGISTRY = build_registry()

RECIPE = """\
iterations: 3
seed: 0
batch: 2
device: cpu
model:
  name: mobilenet_v2
  weights: {weights}
  mean: [0.5, 0.5, 0.5]
  std: [0.5, 0.5, 0.5]
  size: 64
performance:
  threads: 1
steps:
  - step: init-noise
    scale: 0.0
    offset: 0.5
    size: 64
  - step: phase-image
  - step: crops
    views: 2
  - step: L1-loss
    target: [goldfish, tench]
    C: 10000
    lambda: 0
  - step: nadam
    lr: 0.1
output:
  video: false
"""

SWEEP = """\
name: small
recipe: recipe.yaml
axes:
  steps.3.target: 0-4
  seed: [0, 1]
batch: 2
"""


def write_sweep(folder: Path, sweep: str = SWEEP, recipe: str = RECIPE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(recipe.format(weights=MOBILENET))
    (folder / "sweep.yaml").write_text(sweep)
    return folder / "sweep.yaml"


def do_sweep(file: Path, out: Path, **kw) -> int:
    from pipeline_core.commands.sweep import sweep

    lines: list[str] = []
    code = sweep(str(file), REGISTRY, kw.pop("sets", []), out=str(out), quiet=True, say=lines.append, **kw)
    do_sweep.lines = lines  # type: ignore[attr-defined]
    return code


@pytest.fixture(scope="module")
def small(tmp_path_factory, mobilenet_path):
    root = tmp_path_factory.mktemp("sweep")
    file = write_sweep(root / "files")
    out = root / "out"
    assert do_sweep(file, out) == 0, do_sweep.lines
    return file, out, json.loads((out / "sweep.json").read_text())


@pytest.mark.slow
def test_jobs_differing_only_in_target_share_a_batch_and_each_seed_gets_its_own(small):
    _file, out, index = small
    assert index["total"] == 10 and len(index["jobs"]) == 10
    assert index["axes"] == {"steps.3.target": [0, 1, 2, 3, 4], "seed": [0, 1]}
    by_run: dict[str, list[dict]] = {}
    for job in index["jobs"]:
        by_run.setdefault(job["run"], []).append(job)
    assert sorted(len(v) for v in by_run.values()) == [1, 1, 2, 2, 2, 2]
    for run, jobs in by_run.items():
        assert len({j["values"]["seed"] for j in jobs}) == 1  # one seed per run
        record = json.loads((out / run / "run.json").read_text())
        assert record["status"] == "completed"
        assert record["seed"] == jobs[0]["values"]["seed"]
        assert record["batch"] == len(jobs)
        # the targets of the batch's class objective are the jobs' classes, in order
        assert record["recipe"]["steps"][3]["target"] == [j["values"]["steps.3.target"] for j in jobs]


@pytest.mark.slow
def test_sweep_json_has_the_agreed_format_and_the_run_records_top5(small):
    _file, out, index = small
    assert isinstance(index["name"], str) and index["name"] == "small"
    assert Path(index["recipe"]).name == "recipe.yaml"
    ids = set()
    for job in index["jobs"]:
        assert set(job) >= {"id", "values", "run", "image", "targets", "top5", "status"}
        assert job["status"] == "completed"
        ids.add(job["id"])
        assert set(job["values"]) == {"steps.3.target", "seed"}
        assert (out / job["image"]).is_file() and job["image"].startswith(job["run"] + "/images/")
        assert job["targets"] == [{"index": job["values"]["steps.3.target"],
                                   "name": job["targets"][0]["name"]}]
        record = json.loads((out / job["run"] / "run.json").read_text())
        entry = next(e for e in record["images"] if job["image"].endswith(e["file"]))
        assert job["top5"] == [{"index": t["index"], "name": t["name"], "p": t["probability"]} for t in entry["top5"]]
        assert len(job["top5"]) == 5 and all(isinstance(t["p"], float) for t in job["top5"])
    assert len(ids) == 10
    assert index["jobs"][0]["targets"][0]["name"] == "tench"


@pytest.mark.slow
def test_a_batch_is_an_ordinary_run_folder_that_replays_to_the_same_bytes(small, tmp_path):
    from pipeline_core.recipe.loader import load_recipe
    from pipeline_core.run.engine import Run
    from pipeline_core.run.progress import Progress

    _file, out, index = small
    job = index["jobs"][3]
    recipe = load_recipe(out / job["run"] / "run.json", REGISTRY)
    result = Run(recipe, REGISTRY, tmp_path / "replay", Progress()).execute()
    assert result.status == "completed"
    name = Path(job["image"]).name
    assert (tmp_path / "replay" / "images" / name).read_bytes() == (out / job["image"]).read_bytes()


@pytest.mark.slow
def test_contact_sheets_per_axis_value_and_an_overview(small):
    _file, out, index = small
    sheets = index["contact_sheets"]
    assert sheets["overview"] == ["contact/all-000.png"]
    assert set(sheets["axes"]["seed"]) == {"0", "1"}
    assert set(sheets["axes"]["steps.3.target"]) == {"0", "1", "2", "3", "4"}
    with Image.open(out / sheets["axes"]["seed"]["0"]) as im:  # five classes at seed 0: a 3 x 2 grid
        assert im.size[0] > 3 * 128 and im.size[1] > 2 * 128
    with Image.open(out / sheets["axes"]["steps.3.target"]["2"]) as im:  # one class, two seeds
        assert im.size[0] > 2 * 128 and im.size[1] < 2 * 128
    assert "tench" in (out / "atlas.html").read_text()  # the sweep's page, from sweep.json


@pytest.mark.slow
def test_started_again_a_finished_sweep_skips_every_batch(small):
    file, out, index = small
    before = {j["run"]: json.loads((out / j["run"] / "run.json").read_text())["run_id"] for j in index["jobs"]}
    t0 = time.monotonic()
    assert do_sweep(file, out) == 0
    assert time.monotonic() - t0 < 15
    after = {j["run"]: json.loads((out / j["run"] / "run.json").read_text())["run_id"] for j in index["jobs"]}
    assert before == after
    again = json.loads((out / "sweep.json").read_text())
    assert [j["image"] for j in again["jobs"]] == [j["image"] for j in index["jobs"]]


@pytest.mark.slow
def test_a_failed_batch_is_reported_the_rest_go_on_and_a_restart_runs_it(small, tmp_path):
    file, _out, index = small
    out = tmp_path / "failing"
    blocked = out / index["jobs"][2]["run"]  # the second batch's folder cannot be made: a file is there
    blocked.parent.mkdir(parents=True)
    blocked.write_text("in the way")
    code = do_sweep(file, out, axis=["seed=[0]"])
    assert code == 1
    assert any(index["jobs"][2]["run"] in line and "failed" in line for line in do_sweep.lines)
    data = json.loads((out / "sweep.json").read_text())
    status = {j["id"]: j["status"] for j in data["jobs"]}
    assert status == {"target=0,seed=0": "completed", "target=1,seed=0": "completed",
                      "target=2,seed=0": "failed", "target=3,seed=0": "failed", "target=4,seed=0": "completed"}
    assert data["counts"] == {"completed": 3, "failed": 2}
    blocked.unlink()
    assert do_sweep(file, out, axis=["seed=[0]"]) == 0
    data = json.loads((out / "sweep.json").read_text())
    assert {j["status"] for j in data["jobs"]} == {"completed"}
    # the same batch as in the full sweep, so the same folder and the same bytes
    assert (out / data["jobs"][2]["image"]).read_bytes() == (small[1] / index["jobs"][2]["image"]).read_bytes()


@pytest.mark.slow
def test_evaluate_a_sweep_scores_every_job_by_class_and_by_axis_value(small, tmp_path):
    import shutil

    from pipeline_core.commands.evaluate import evaluate_run, parse_model_arg

    _file, out, _index = small
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    model = parse_model_arg(f"mobilenet_v2,weights={MOBILENET},mean=0.5,std=0.5,size=64,label=judge")
    data = evaluate_run(copy, [model], REGISTRY)
    assert data["kind"] == "sweep" and data["images"] == 10
    m = data["models"][0]
    assert m["overall"]["images"] == 10
    assert {k: sum(v["images"] for v in vals.values()) for k, vals in m["per_axis"].items()} == \
        {"steps.3.target": 10, "seed": 10}
    assert set(m["per_axis"]["seed"]) == {"0", "1"} and len(m["per_class"]) == 5
    index = json.loads((copy / "sweep.json").read_text())
    assert json.loads((copy / "evaluation.json").read_text())["models"][0]["overall"] == m["overall"]
    job = index["jobs"][0]
    # the same number the per-run evaluation gives for that image
    run = evaluate_run(copy / job["run"], [model], REGISTRY, write=False)
    per_image = {i["file"]: i["target_probability"] for i in run["models"][0]["images"]}
    assert job["score"] == {"judge": per_image[Path(job["image"]).name]}
    assert all("judge" in j["score"] for j in index["jobs"])
    # a rebuild of the index by a restart keeps the scores
    assert do_sweep(_file, copy) == 0
    assert json.loads((copy / "sweep.json").read_text())["jobs"][0]["score"] == job["score"]


@pytest.mark.slow
def test_batch_auto_probes_once_and_a_restart_keeps_the_batch(small, tmp_path):
    file, _out, _index = small
    out = tmp_path / "auto"
    assert do_sweep(file, out, axis=["seed=[0]", "target=0-2"], batch="auto") == 0
    data = json.loads((out / "sweep.json").read_text())
    probe = data["batch_probe"]
    assert probe["how"] == "probe" and probe["bytes_per_image"] > 0 and probe["free_bytes"] > 0
    assert data["batch"] == 3  # memory is no limit here: every class of the setting in one batch
    assert do_sweep(file, out, axis=["seed=[0]", "target=0-2"], batch="auto") == 0
    again = json.loads((out / "sweep.json").read_text())
    assert again["batch"] == 3 and again["batch_probe"]["how"].startswith("kept")


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sweep, message", [
    ("recipe: recipe.yaml\naxes:\n  seed: all\n", "sweep.yaml:3: 'all' as the values of 'seed': all and ranges "
                                                 "are for a class objective's target"),
    ("recipe: recipe.yaml\naxes:\n  steps.3.target: 990-1005\n", "sweep.yaml:3: the axis 'steps.3.target' reaches "
                                                                "class 1005"),
    ("recipe: recipe.yaml\naxes:\n  steps.3.target: [goldfsh]\n", "did you mean 'goldfish'"),
    ("recipe: recipe.yaml\nsteps: []\n", "sweep.yaml:2: unknown key 'steps' in a sweep file"),
    ("recipe: nothere.yaml\n", "sweep.yaml:1: the recipe nothere.yaml does not exist"),
    ("recipe: recipe.yaml\nbatch: 0\n", "sweep.yaml:2: batch must be a whole number"),
    ("recipe: recipe.yaml\naxes:\n  seed: []\n", "sweep.yaml:3: the axis 'seed' has no values"),
])
def test_a_bad_sweep_file_is_one_line_naming_the_file_and_line(tmp_path, sweep, message, mobilenet_path):
    from pipeline_core.sweep.plan import make_plan
    from pipeline_core.sweep.spec import load_sweep

    file = write_sweep(tmp_path, sweep)
    with pytest.raises(RecipeError) as info:
        make_plan(load_sweep(file), REGISTRY)
    assert message in str(info.value)


def test_a_scalar_value_the_recipe_refuses_names_the_sweep_axis(tmp_path, mobilenet_path):
    from pipeline_core.sweep.plan import make_plan
    from pipeline_core.sweep.spec import load_sweep

    file = write_sweep(tmp_path, "recipe: recipe.yaml\naxes:\n  steps.4.lr: [0.1, -1]\n")
    with pytest.raises(RecipeError) as info:
        make_plan(load_sweep(file), REGISTRY)
    assert "sweep.yaml:3 axes.steps.4.lr=-1:" in str(info.value)


def test_the_axis_option_replaces_values_by_the_last_part_of_the_key(tmp_path, mobilenet_path):
    from pipeline_core.sweep.plan import make_plan
    from pipeline_core.sweep.spec import load_sweep

    file = write_sweep(tmp_path)
    plan = make_plan(load_sweep(file, ["target=7-9,20", "seed=[3]"]), REGISTRY)
    assert [j.values for j in plan.jobs] == [{"seed": 3, "steps.3.target": v} for v in (7, 8, 9, 20)]
    assert [b.size for b in plan.batches] == [2, 2]
    with pytest.raises(RecipeError, match=r"^--axis colour=1 \(value 1\): "):
        make_plan(load_sweep(file, ["colour=1"]), REGISTRY)


@pytest.mark.slow
def test_the_cli_reports_a_bad_sweep_in_one_line_with_exit_2(tmp_path, mobilenet_path):
    file = write_sweep(tmp_path, "recipe: recipe.yaml\naxes:\n  seed: 0-3\n")
    proc = run_cli("sweep", str(file), "--out", str(tmp_path / "o"), cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "sweep.yaml:3" in lines[0] and "Traceback" not in proc.stderr


# -- sharding and devices --------------------------------------------------------------------------


def test_the_ranks_divide_the_batches_without_overlap():
    from pipeline_core.sweep.shard import World

    items = list(range(11))
    for size in (1, 2, 3, 5):
        shares = [World(rank, size).mine(items) for rank in range(size)]
        assert sorted(x for s in shares for x in s) == items


def test_each_rank_gets_its_own_card_and_too_many_ranks_are_refused(monkeypatch):
    from pipeline_core.run.device import rank_device

    assert rank_device("auto", 1).type in ("cpu", "cuda", "mps")
    assert rank_device("cpu", 3) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device("auto", 1) == torch.device("cuda", 1)
    assert rank_device("cuda", 0) == torch.device("cuda", 0)
    with pytest.raises(RecipeError, match="start at most 2 processes per machine"):
        rank_device("auto", 2)


# -- Ctrl-C ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_with_130_and_the_same_command_resumes_to_the_same_bytes(tmp_path, mobilenet_path):
    from pipeline_core.recipe.loader import load_recipe
    from pipeline_core.run.engine import Run
    from pipeline_core.run.progress import Progress

    # long enough batches (a few seconds each even on a quick, idle machine) that the rank's status
    # file, written about once a second, shows the first one running before it ends
    file = write_sweep(tmp_path / "files", "recipe: recipe.yaml\naxes:\n  steps.3.target: [1, 2]\nbatch: 1\n",
                       RECIPE.replace("iterations: 3", "iterations: 300"))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline_core", "sweep", str(file), "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status = out / ".ranks" / "rank-00000.json"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            try:
                current = json.loads(status.read_text()).get("current") or {}
            except (OSError, ValueError):
                current = {}
            if current.get("iterations_done", 0) >= 3:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the sweep never got going")
        proc.send_signal(signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted: start the same command again to continue" in stderr
    data = json.loads((out / "sweep.json").read_text())
    statuses = [j["status"] for j in data["jobs"]]
    # the batch in progress stopped (the first, unless this machine is quick), none after it ran
    assert statuses in (["interrupted", "pending"], ["completed", "interrupted"]), statuses
    stopped = data["jobs"][statuses.index("interrupted")]
    assert (out / stopped["run"] / "checkpoint.pt").is_file()

    assert do_sweep(file, out) == 0
    data = json.loads((out / "sweep.json").read_text())
    assert [j["status"] for j in data["jobs"]] == ["completed", "completed"]
    record = json.loads((out / stopped["run"] / "run.json").read_text())
    assert record["resumed"] and record["status"] == "completed"
    # the resumed batch ends with the bytes of a run never stopped
    target = stopped["values"]["steps.3.target"]
    recipe = load_recipe(file.parent / "recipe.yaml", REGISTRY,
                         [f"steps.3.target=[{target}]", "batch=1"])
    result = Run(recipe, REGISTRY, tmp_path / "straight", Progress()).execute()
    assert result.status == "completed"
    name = Path(stopped["image"]).name
    assert (tmp_path / "straight" / "images" / name).read_bytes() == (out / stopped["image"]).read_bytes()


def test_python_m_pipeline_core_is_the_command():
    proc = run_cli("--version", cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith("pipeline ")


@pytest.mark.slow
def test_the_shipped_atlas_runs_a_range_of_classes_on_the_cpu(mobilenet_path, tmp_path):
    """recipes/atlas.yaml as its header runs it on a CPU: a range of classes, here cut to 4 iterations."""
    out = tmp_path / "atlas"
    proc = run_cli("sweep", str(ROOT / "recipes" / "atlas.yaml"), "--axis", "target=3-4", "--batch", "2",
                   "--model", f"mobilenet_v2,weights={mobilenet_path},mean=0.5,std=0.5,size=64",
                   "--set", "iterations=4", "--set", "steps.0.size=64", "--set", "device=cpu",
                   "--set", "output.video=false", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    index = json.loads((out / "sweep.json").read_text())
    assert index["total"] == 2 and [j["status"] for j in index["jobs"]] == ["completed", "completed"]
    assert [j["targets"][0]["index"] for j in index["jobs"]] == [3, 4]
    assert all((out / j["image"]).is_file() for j in index["jobs"])
