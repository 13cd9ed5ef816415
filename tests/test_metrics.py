"""metrics.jsonl and the video's side panels: the numbers a run records, and what its frames say.

Tiny runs on the test model (in-process, a few iterations); the numbers are checked against
what the progress display was handed at the same moments, and the panels in the decoded video.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import Field

from pipeline_core.hookspecs import hookimpl
from pipeline_core.output.metrics import MetricsLog, read_metrics, trim_metrics
from pipeline_core.output.panels import Sparklines, class_panel
from pipeline_core.run.engine import Run, prepare_resume
from pipeline_core.run.progress import Progress
from pipeline_core.step import Step, StepKind, StepParams
from pipeline_core.testing import registered, run_recipe_dict, tiny_recipe
from test_bad_input import StopAtPlugin
from test_interrupt import read_frames

pytestmark = pytest.mark.plugins(StopAtPlugin())


class EveryThird(Progress):
    """A progress display due at iterations 0, 3, 6, ... that keeps what it was shown."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.shown: list[tuple[int, float, float | None]] = []

    def due(self) -> bool:
        self.calls += 1
        return (self.calls - 1) % 3 == 0

    def update(self, done: int, loss: float, prob: float | None) -> None:
        self.shown.append((done, loss, prob))


def run_with(recipe: dict, run_dir: Path, progress: Progress, registry):
    from pipeline_core.recipe.loader import load_recipe
    import yaml

    run_dir.mkdir(parents=True)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return Run(load_recipe(path, registry), registry, run_dir, progress, device="cpu").execute()


def test_metrics_are_the_numbers_of_the_progress_display_per_image_and_per_objective(tmp_path, registry):
    recipe = tiny_recipe(iterations=8, batch=2)
    recipe["steps"][1]["target"] = [3, 5]
    recipe["steps"].insert(2, {"step": "L1-loss", "target": [3, 5], "C": 10})  # a second objective
    progress = EveryThird()
    result = run_with(recipe, tmp_path / "run", progress, registry)
    assert result.status == "completed", result.message

    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [1, 4, 7, 8] == [d for d, _, _ in progress.shown]  # and the last
    labels = ["step 1 (L1-loss)", f"step 2 ({recipe['steps'][2]['step']})"]
    for row, (_, loss, prob) in zip(rows, progress.shown):
        assert sorted(row["terms"]) == labels and all(len(v) == 2 for v in row["terms"].values())
        assert row["loss"] == pytest.approx(loss, rel=1e-5)
        assert row["loss"] == pytest.approx(sum(sum(v) for v in row["terms"].values()), rel=1e-5)
        assert np.mean(row["p_target"]) == pytest.approx(prob, abs=1e-6)
        assert all(isinstance(k, int) and 0 <= k < 10 for k in row["top1"])
    assert "metrics.jsonl" in result.record["files"] and "report.html" in result.record["files"]


def test_a_resumed_run_appends_from_its_checkpoint_without_duplicate_iterations(tmp_path, registry):
    recipe = tiny_recipe(iterations=6, output={"video": False, "checkpoint_every": 2})
    recipe["steps"].insert(1, {"step": "test-stop-at", "at": 3, "on": "view"})
    run_dir = tmp_path / "run"
    first = run_recipe_dict(recipe, run_dir, registry=registry, check=False)
    assert first.status == "interrupted" and first.iterations_done == 4
    path = run_dir / "metrics.jsonl"
    before = read_metrics(path)
    assert before and before[-1]["iteration"] <= 4
    # as if the run had been killed later: lines past the checkpoint, and one cut in half
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({**before[-1], "iteration": 5}) + "\n" + '{"iteration": 6, "lo')
    checkpoint_at = json.loads((run_dir / "run.json").read_text())["checkpoint"]["iteration"]

    recipe_loaded, checkpoint = prepare_resume(run_dir, registry)
    resumed = Run(recipe_loaded, registry, run_dir, Progress(), device="cpu", resume=checkpoint).execute()
    assert resumed.status == "completed", resumed.message

    iterations = [r["iteration"] for r in read_metrics(path)]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 6
    assert [r for r in read_metrics(path) if r["iteration"] <= checkpoint_at] == \
        [r for r in before if r["iteration"] <= checkpoint_at]
    assert all(line.strip() for line in path.read_text().splitlines())  # the half line is gone


def test_read_and_trim_skip_lines_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1, "loss": 2}\n{"iteration": 4, "loss": 1}\n[1]\n{"iterat', encoding="utf-8")
    assert [r["iteration"] for r in read_metrics(path)] == [1, 4]
    assert [r["iteration"] for r in trim_metrics(path, 3)] == [1]
    assert path.read_text() == '{"iteration": 1, "loss": 2}\n'


def test_the_log_writes_each_reading_at_once_and_nan_as_null(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl", torch.tensor([1, 0]))
    logits = torch.tensor([[0.0, 2.0, 0.0], [5.0, 0.0, 0.0]])
    log.record(3, torch.tensor(float("nan")), [("step 1 (x)", torch.tensor([1.0, 2.0]))], logits)
    row = json.loads((tmp_path / "m.jsonl").read_text())  # flushed before close
    assert row["iteration"] == 3 and row["loss"] is None and row["terms"] == {"step 1 (x)": [1.0, 2.0]}
    assert row["top1"] == [1, 0] and row["p_target"][0] == pytest.approx(float(torch.softmax(logits[0], 0)[1]), abs=1e-6)
    log.close()
    log.close()


# -- the video's panels ---------------------------------------------------------------------------


class BrightParams(StepParams):
    weight: float = Field(1.0, description="scale of the loss")


class Bright(Step):
    """An objective on no class: the mean distance of each image from white (a layer objective's shape)."""

    name = "test-bright"
    kind = StepKind.OBJECTIVE
    Params = BrightParams

    def loss(self, ctx, out, image):
        return self.params.weight * (1 - image).abs().flatten(1).mean(1)


class BrightPlugin:
    @hookimpl
    def register_steps(self, registry):
        registry.add_step(Bright)


def _panel(frame: np.ndarray, side: int) -> np.ndarray:
    """The side panel of the first image of a frame (pad 2, the image, pad 2, the panel)."""
    return frame[2:2 + side, 2 + side + 2: 2 + 2 * side + 2].astype(int)


def _ink(panel: np.ndarray) -> int:
    return int((panel.max(axis=2) < 120).sum())  # dark text pixels


def _blue(panel: np.ndarray) -> int:
    return int(((panel[..., 2] - panel[..., 0]) > 60).sum())


def _red(panel: np.ndarray) -> int:
    return int(((panel[..., 0] - panel[..., 2]) > 80).sum())


class Always(Progress):
    def due(self) -> bool:
        return True


@pytest.fixture(scope="module")
def panel_runs(tmp_path_factory, registry):
    base = tmp_path_factory.mktemp("panels")
    out = {"video": True, "frame_every": 1, "fps": 10}
    steps = [{"step": "init-noise", "scale": 0.2, "offset": 0.4, "size": 96}]
    with registered(BrightPlugin(), registry):
        plain = tiny_recipe(iterations=5, output=out, steps=[*steps, {"step": "test-bright", "weight": 2.0},
                                                              {"step": "keep-photo", "weight": 1.0},
                                                              {"step": "gradient-step", "lr": 0.05}])
        layer = run_with(plain, base / "no-class", Always(), registry)
    classy = tiny_recipe(iterations=5, output=out, steps=[*steps, {"step": "L1-loss", "target": 3},
                                                          {"step": "gradient-step", "lr": 0.05}])
    cls = run_with(classy, base / "class", Always(), registry)
    assert layer.status == cls.status == "completed", (layer.message, cls.message)
    return base / "no-class", base / "class"


def test_objectives_without_classes_get_a_sparkline_per_objective_instead_of_the_logits(panel_runs):
    run_dir, _ = panel_runs
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert sorted(rows[-1]["terms"]) == ["step 1 (test-bright)", "step 2 (keep-photo)"]
    assert "p_target" not in rows[-1]  # no objective names a class
    frames = read_frames(run_dir / "video.mp4")
    assert len(frames) == 6
    first, last = _panel(frames[0], 96), _panel(frames[-1], 96)
    assert _ink(first) > 50  # the first frame's panel is labelled, not blank
    assert _blue(last) > 2 * 20 and _blue(last) > _blue(first)  # two sparklines drawn across the panel
    assert _red(last) < 5  # no target markers: this is not the logits scatter


def test_class_objectives_keep_the_labelled_logits_panel_from_the_first_frame(panel_runs):
    _, run_dir = panel_runs
    frames = read_frames(run_dir / "video.mp4")
    first, last = _panel(frames[0], 96), _panel(frames[-1], 96)
    for panel in (first, last):
        assert _ink(panel) > 50  # the iteration, the target and its probability, the top-1
        assert _red(panel) > 10  # the target's name in red and its marker in the scatter
        assert _blue(panel) < 5
    assert np.abs(first - last).sum() > 0  # the iteration number and the scatter changed


def test_the_panels_text_names_the_target_its_probability_and_the_top_class():
    logits = np.zeros(10, dtype=np.float32)
    logits[7] = 4.0
    with_target = class_panel(logits, [3], 3, 12, [f"c{i}" for i in range(10)], 224, 224)
    other = class_panel(logits, [3], 3, 13, [f"c{i}" for i in range(10)], 224, 224)
    assert with_target.shape == (224, 224, 3) and with_target.dtype == np.uint8
    band = slice(0, 60)
    assert (with_target[band] != other[band]).any()  # "iteration 12" against "iteration 13"
    assert (with_target[60:] == other[60:]).all()  # the same logits, the same scatter
    spark = Sparklines([{"iteration": 1, "terms": {"a": [1.0]}}, {"iteration": 2, "terms": {"a": [0.5]}},
                        {"iteration": 9, "terms": {"a": [0.1]}}])
    at_two = spark.panel(0, 2, 96, 96)
    assert spark.iterations == [1, 2]  # nothing after the frame's iteration is read
    assert _blue(at_two.astype(int)) > 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the reading's copy is asynchronous there)")
def test_on_a_gpu_a_reading_never_synchronises_and_lands_by_the_end(tmp_path):
    device = torch.device("cuda")
    log = MetricsLog(tmp_path / "m.jsonl", torch.tensor([2, 0], device=device))
    logits = torch.randn(2, 1000, device=device)
    terms = [("step 1 (x)", torch.tensor([1.5, 2.5], device=device))]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for it in range(1, 6):
            log.record(it, terms[0][1].sum(), terms, logits * it)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    log.close()
    rows = read_metrics(tmp_path / "m.jsonl")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["terms"] == {"step 1 (x)": [1.5, 2.5]} and rows[-1]["loss"] == 4.0
    expected = torch.softmax(logits * 5, 1)[[0, 1], [2, 0]].cpu()
    assert rows[-1]["p_target"] == pytest.approx(expected.tolist(), abs=1e-6)
