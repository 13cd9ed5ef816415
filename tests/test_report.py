"""report.html and atlas.html as files: written however a run ends, never failing it, offline.

What a browser makes of the pages is tests/test_browser.py; here the pages are read as text
(and parsed with the standard library's HTML parser) after tiny runs on the test model.
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

import pipeline_core.commands.cli as cli
import pipeline_core.output.report as report_module
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams
from pipeline_core.testing import make_registry, run_recipe_dict, tiny_recipe
from test_bad_input import StopAtPlugin

NAMES = ["<b>bold</b>", "cat & dog", "class 2", "class 3", "a \"quoted\" one", "class 5", "class 6", "class 7",
         "class 8", "class 9"]


class SnapshotParams(TransformParams):
    at: int = 3


class Snapshot(Step):
    """Copies report.html as it is at iteration ``at`` (what a checkpoint left) beside the run."""

    name = "test-report-snapshot"
    kind = StepKind.TRANSFORM
    Params = SnapshotParams

    def apply(self, ctx, x):
        if ctx.iteration == self.params.at and ctx.iteration not in ctx.state.setdefault("snapped", []):
            ctx.state["snapped"].append(ctx.iteration)
            source = self.run_dir / "report.html"
            shutil.copy(source, self.run_dir.parent / "report_at_checkpoint.html")
        return x


class Explode(Step):
    """Fails the run at iteration ``at`` as a broken plugin would."""

    name = "test-explode"
    kind = StepKind.TRANSFORM
    Params = SnapshotParams

    def apply(self, ctx, x):
        if ctx.iteration == self.params.at:
            raise RuntimeError("the plugin broke")
        return x


class Plugins:
    @hookimpl
    def register_steps(self, registry):
        registry.add_step(Snapshot)
        registry.add_step(Explode)


REGISTRY = make_registry(StopAtPlugin(), Plugins())


class Page(HTMLParser):
    """Every link and source of a page, and its text."""

    def __init__(self, text: str):
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for key, value in attrs:
            if key in ("src", "href") and value is not None:
                self.links.append(value)

    def handle_data(self, data):
        self.text.append(data)


def _offline(page: Page) -> None:
    for link in page.links:
        assert not link.startswith(("http:", "https:", "//", "/")), link  # no network, nothing absolute


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("report")
    recipe = tiny_recipe(iterations=6, batch=2, output={"video": True, "checkpoint_every": 2})
    recipe["model"] = {"name": "tiny-test-model", "categories": NAMES}
    recipe["steps"][1]["target"] = [0, 4]
    recipe["steps"].insert(1, {"step": "test-report-snapshot", "at": 5, "on": "view"})
    Snapshot.run_dir = base / "run"
    run_recipe_dict(recipe, base / "run", registry=REGISTRY)
    return base / "run"


def test_a_completed_run_has_a_self_contained_report_of_its_images_video_curves_and_recipe(finished):
    text = (finished / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    record = json.loads((finished / "run.json").read_text())
    _offline(page)
    for image in record["images"]:
        assert f"images/{image['file']}" in page.links
        assert f"{image['target_probability']:.4f}" in text
        for top in image["top5"]:
            assert f"{top['probability']:.4f}" in text
    assert "video.mp4" in page.links and "metrics.jsonl" in page.links
    assert text.count("<svg") >= 3  # the loss, the objective, the target's probability
    assert "iterations: 6" in text and "step: L1-loss" in text  # the recipe as YAML
    assert "completed" in page.text
    # names from the class list are shown as text, never as markup
    assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text
    assert "cat &amp; dog" in text


def test_a_checkpoint_writes_the_report_of_the_run_so_far(finished):
    at_checkpoint = (finished.parent / "report_at_checkpoint.html").read_text(encoding="utf-8")
    # the first checkpoint's (at iteration 2; the next one, seconds later, leaves the page be)
    assert "status-running" in at_checkpoint and "2 of 6" in at_checkpoint
    assert "status-completed" in (finished / "report.html").read_text(encoding="utf-8")


def test_interrupted_and_failed_runs_get_their_report_too(tmp_path):
    stopped = tiny_recipe(iterations=6)
    stopped["steps"].insert(1, {"step": "test-stop-at", "at": 2, "on": "view"})
    result = run_recipe_dict(stopped, tmp_path / "stopped", registry=REGISTRY, check=False)
    assert result.status == "interrupted"
    text = (tmp_path / "stopped" / "report.html").read_text(encoding="utf-8")
    assert "status-interrupted" in text and "3 of 6" in text

    failing = tiny_recipe(iterations=6)
    failing["steps"].insert(1, {"step": "test-explode", "at": 2, "on": "view"})
    result = run_recipe_dict(failing, tmp_path / "failed", registry=REGISTRY, check=False)
    assert result.status == "failed"
    text = (tmp_path / "failed" / "report.html").read_text(encoding="utf-8")
    assert "status-failed" in text and "the plugin broke" in text and "2 of 6" in text
    assert "report.html" in result.record["files"]


def test_a_report_that_cannot_be_written_is_a_warning_not_a_failure(tmp_path, monkeypatch):
    def broken(_run_dir):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(report_module, "render_report", broken)
    result = run_recipe_dict(tiny_recipe(), tmp_path / "run", registry=REGISTRY)
    assert result.status == "completed" and result.exit_code == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["report_warning"] == "report.html could not be written (RuntimeError: template exploded)"
    assert "report.html" not in record["files"] and not (tmp_path / "run" / "report.html").exists()


def test_pipeline_report_rebuilds_a_run_page_and_evaluate_refreshes_it(finished, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_registry", lambda quiet=False: REGISTRY)
    run_dir = tmp_path / "copy"
    shutil.copytree(finished, run_dir)
    (run_dir / "report.html").unlink()
    assert cli.main(["report", str(run_dir)]) == 0
    assert f"wrote {run_dir / 'report.html'}" in capsys.readouterr().out
    assert "Evaluation by other models" not in (run_dir / "report.html").read_text(encoding="utf-8")

    assert cli.main(["evaluate", str(run_dir), "--model", "tiny-test-model,label=the tiny judge"]) == 0
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert "Evaluation by other models" in text and "the tiny judge" in text
    assert f"{evaluation['models'][0]['overall']['mean_target_probability']:.3f}" in text


def test_pipeline_report_refuses_a_folder_without_a_run_or_sweep_in_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no run.json" in err and "no sweep.json" in err
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    (tmp_path / "run.json").write_text("[1, 2]")
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "not a run record" in capsys.readouterr().err


def test_a_sweep_folder_gets_an_atlas_of_its_jobs(finished, tmp_path, capsys):
    record = json.loads((finished / "run.json").read_text())
    jobs = []
    for k, status in enumerate(["completed", "failed", "pending"]):
        job = tmp_path / "jobs" / f"j{k}"
        shutil.copytree(finished, job)
        image = record["images"][k % 2]
        jobs.append({"id": f"j{k}", "values": {"steps.2.lr": 0.1 * (k + 1)}, "run": f"jobs/j{k}",
                     "image": f"jobs/j{k}/images/{image['file']}",
                     "targets": [{"index": t["index"], "name": t["name"]} for t in image["targets"]],
                     "top5": [{"index": t["index"], "name": t["name"], "p": t["probability"]} for t in image["top5"]],
                     "status": status, **({"score": {"judge <one>": 0.25 * k}} if k < 2 else {})})
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "lr", "recipe": "tiny.yaml", "axes": {"steps.2.lr": [0.1, 0.2, 0.3]},
                                                      "total": 3, "jobs": jobs}), encoding="utf-8")
    assert cli.main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "atlas.html").read_text(encoding="utf-8")
    page = Page(text)
    _offline(page)
    assert [link for link in page.links if link.endswith(".png")] == [j["image"] for j in jobs]
    assert "jobs/j0/report.html" in page.links
    assert "judge &lt;one&gt;" in text and "score:judge &lt;one&gt;" in text  # the sort by the judge's score
    assert "1 completed" in text and "1 failed" in text and "1 pending" in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text and "<b>bold" not in text
