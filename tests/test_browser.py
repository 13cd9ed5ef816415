"""The report and the atlas in a real browser: Debian's chromium, headless, driven by Playwright.

One real run of the real MobileNetV2 (the CLI in a subprocess, with ``pipeline evaluate`` after
it), one hand-written sweep.json around that run's PNGs; each page is opened from file:// with
no network and checked as a person would see it: no console errors, every image decoded, the
video playable for frames / fps seconds, the numbers on the page those of run.json and
evaluation.json. A screenshot of each page is kept in runs/test-screenshots/ (and the report's
copied to docs/images/report_screenshot.png with PIPELINE_UPDATE_DOCS_SCREENSHOT=1).

Playwright for Python (the ``test`` extra) drives the chromium found on PATH (or named by
``PIPELINE_CHROMIUM``); it never downloads a browser of its own.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

import pipeline_core.commands.cli as cli
from conftest import MOBILENET_SETS, ROOT, run_cli

CHROMIUM = os.environ.get("PIPELINE_CHROMIUM") or next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="Playwright is not installed (pip install '.[test]' installs it)")

#: chromium's switches for a quiet, offline, headless page (Playwright adds --headless itself)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-extensions",
         "--disable-sync", "--no-first-run", "--no-default-browser-check", "--mute-audio",
         "--autoplay-policy=no-user-gesture-required"]

#: where every test run leaves its screenshots (runs/ is ignored by git); the docs' picture of a
#: report is refreshed from here only on request (PIPELINE_UPDATE_DOCS_SCREENSHOT=1), so a test
#: run never modifies a tracked file
SHOTS = ROOT / "runs" / "test-screenshots"
DOCS_SCREENSHOT = ROOT / "docs" / "images" / "report_screenshot.png"


def _keep(shot: Path, name: str) -> None:
    try:
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SHOTS / name)
        if os.environ.get("PIPELINE_UPDATE_DOCS_SCREENSHOT") == "1" and name == "report.png":
            shutil.copy(shot, DOCS_SCREENSHOT)
    except OSError:  # a read-only checkout: the screenshot stays in the test's own folder
        pass


class Page:
    """One browser page and what went wrong on it: console errors, uncaught exceptions, failed
    loads, and every URL it asked for (so a test can say the page stayed offline)."""

    def __init__(self, page: Any):
        self.page = page
        self.problems: list[str] = []
        self.urls: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"exception: {error}"))
        page.on("requestfailed", lambda request: self.problems.append(f"failed to load: {request.url} {request.failure}"))
        page.on("request", lambda request: self.urls.append(request.url))

    def _console(self, message: Any) -> None:
        if message.type in ("error", "assert"):
            self.problems.append(f"console.{message.type}: {message.text}")

    def open(self, url: str) -> None:
        self.problems.clear()
        self.urls.clear()
        self.page.goto(url, wait_until="load")

    def js(self, expression: str) -> Any:
        """The value of a script (a promise is awaited)."""
        return self.page.evaluate(expression)

    def screenshot(self, path: Path, before: str | None = None) -> None:
        """The whole page as a PNG; ``before``, a script (a promise) run first."""
        if before:
            self.js(before)
        self.page.screenshot(path=str(path), full_page=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Page]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield Page(chromium.new_page(viewport={"width": 1280, "height": 900}))
        finally:
            chromium.close()


MODEL = f"mobilenet_v2,weights={Path(MOBILENET_SETS[1].split('=', 1)[1])},mean=0.5,std=0.5,size=224"


@pytest.fixture(scope="module")
def real_run(mobilenet_path, tmp_path_factory) -> Path:
    """A real run of the real model (64 px, 2 images, 8 iterations, a frame each) with the real
    command, then evaluated (which rewrites the report with the evaluation's tables)."""
    base = tmp_path_factory.mktemp("report-run")
    recipe = {
        "description": "noise to goldfish and daisy (report test)",
        "iterations": 8, "seed": 0, "device": "cpu", "batch": 2,
        "steps": [
            {"step": "init-noise", "scale": 0.04, "offset": 0.5, "size": 64},
            {"step": "L1-loss", "target": ["goldfish", "daisy"], "C": 200, "lambda": 0.001},
            {"step": "gradient-step", "lr": 0.2, "normalize": "std"},
        ],
        "output": {"video": True, "frame_every": 1, "fps": 10},
    }
    path = base / "report_test.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    run_dir = base / "run"
    done = run_cli("run", str(path), "--out", str(run_dir), "--quiet", "--model", MODEL)
    assert done.returncode == 0, done.stderr
    # the evaluation in this process (the command's own code, without a second start of PyTorch)
    assert cli.main(["evaluate", str(run_dir), "--model", f"{MODEL},label=mobilenet again"]) == 0
    return run_dir


def _record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))


def test_a_broken_page_is_seen_as_broken(browser, tmp_path):
    """The watcher itself: what the two pages below must not show, it does see."""
    page = tmp_path / "broken.html"
    page.write_text("<img src='missing.png'><script>console.error('drawn wrong'); undefined_name();</script>",
                    encoding="utf-8")
    browser.open(page.as_uri())
    seen = "\n".join(browser.problems)
    assert "drawn wrong" in seen and "undefined_name" in seen and "missing.png" in seen, browser.problems
    assert browser.urls == [page.as_uri(), (tmp_path / "missing.png").as_uri()]


@pytest.mark.slow
def test_the_report_loads_offline_with_every_image_the_video_and_run_json_numbers(browser, real_run, tmp_path):
    record = _record(real_run)
    evaluation = json.loads((real_run / "evaluation.json").read_text(encoding="utf-8"))
    browser.open((real_run / "report.html").as_uri())

    assert browser.problems == []
    assert all(u.startswith(("file://", "data:")) for u in browser.urls), browser.urls
    images = browser.js("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert len(images) == len(record["images"]) and all(ok and width > 0 for _, ok, width in images), images
    video = browser.js("""new Promise(resolve => {
        const v = document.getElementById('video');
        const done = () => resolve({ready: v.readyState, duration: v.duration, error: v.error && v.error.code,
                                    width: v.videoWidth});
        if (v.readyState >= 1) { done(); } else { v.addEventListener('loadedmetadata', done);
                                                  v.addEventListener('error', done); v.load(); }
    })""")
    frames, fps = record["timings"]["frames"], record["recipe"]["output"]["fps"]
    assert video["error"] is None and video["ready"] >= 1 and video["width"] > 0, video
    assert video["duration"] == pytest.approx(frames / fps, abs=0.5 / fps), (video, frames, fps)

    shown = browser.js("""Array.from(document.querySelectorAll('figure.image')).map(f => ({
        file: f.dataset.file, p: f.querySelector('.probability').textContent,
        top5: Array.from(f.querySelectorAll('.top5 li')).map(li => [li.querySelector('.bar-label span').textContent,
                                                                   li.querySelector('.p').textContent])}))""")
    for entry, card in zip(record["images"], shown):
        assert card["file"] == entry["file"]
        assert card["p"] == f"{entry['target_probability']:.4f}"
        assert card["top5"] == [[t["name"], f"{t['probability']:.4f}"] for t in entry["top5"]]
    facts = browser.js("Object.fromEntries(Array.from(document.querySelectorAll('.facts tr'))"
                       ".map(r => [r.dataset.key, r.querySelector('td').textContent]))")
    assert facts["status"] == record["status"] == "completed"
    assert facts["seed"] == str(record["seed"]) and facts["iterations"] == "8 of 8"
    assert facts["loop seconds"] == str(record["timings"]["loop_seconds"])
    means = browser.js("Array.from(document.querySelectorAll('.evaluation-overall .mean')).map(td => td.textContent)")
    assert means == [f"{m['overall']['mean_target_probability']:.3f}" for m in evaluation["models"]]
    assert browser.js("document.querySelectorAll('.chart svg').length") >= 3  # loss, the objective, p(target)

    shot = tmp_path / "report.png"
    # the video at its middle frame, its controls showing the length
    browser.screenshot(shot, before="""new Promise(resolve => {
        const v = document.getElementById('video');
        const go = () => { v.addEventListener('seeked', () => setTimeout(resolve, 300), {once: true});
                           v.currentTime = v.duration / 2; };
        if (v.readyState >= 1) { go(); } else { v.addEventListener('loadedmetadata', go, {once: true}); v.load(); }
        setTimeout(resolve, 5000);
    })""")
    assert shot.stat().st_size > 10_000
    _keep(shot, "report.png")


@pytest.mark.slow
def test_the_atlas_filters_by_class_and_sorts_by_the_independent_score(browser, real_run, tmp_path):
    record = _record(real_run)
    sweep = tmp_path / "sweep"
    jobs = []
    scores = [0.2, 0.9, 0.5, 0.7]
    for k, score in enumerate(scores):
        image = record["images"][k % 2]
        job_dir = sweep / "jobs" / f"job-{k}"
        if k < 2:  # two jobs are the real run itself (report and all), two only their thumbnails
            shutil.copytree(real_run, job_dir)
        else:
            (job_dir / "images").mkdir(parents=True)
            shutil.copy(real_run / "images" / image["file"], job_dir / "images" / image["file"])
        jobs.append({"id": f"job-{k}", "values": {"steps.2.lr": [0.1, 0.2][k % 2], "seed": k},
                     "run": f"jobs/job-{k}", "image": f"jobs/job-{k}/images/{image['file']}",
                     "targets": [{"index": t["index"], "name": t["name"]} for t in image["targets"]],
                     "top5": [{"index": t["index"], "name": t["name"], "p": t["probability"]} for t in image["top5"]],
                     "status": "completed", "score": {"efficientnet-lite0": score}})
    (sweep / "sweep.json").write_text(json.dumps({"name": "lr x seed", "recipe": "report_test.yaml",
                                                 "axes": {"steps.2.lr": [0.1, 0.2], "seed": [0, 1, 2, 3]},
                                                 "total": 4, "jobs": jobs}), encoding="utf-8")
    done = run_cli("report", str(sweep))
    assert done.returncode == 0, done.stderr
    browser.open((sweep / "atlas.html").as_uri())

    assert browser.problems == []
    images = browser.js("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
    assert images == [True] * 4
    order = "Array.from(document.querySelectorAll('.job:not(.hidden)')).map(c => c.dataset.id)"
    assert browser.js(order) == ["job-1", "job-3", "job-2", "job-0"]  # the independent score, best first
    name = record["images"][1]["targets"][0]["name"]
    browser.page.fill("#filter", name[:4])  # types it, as a person would: the page hears 'input'
    assert browser.js(order) == ["job-1", "job-3"]
    assert browser.js("document.getElementById('shown').textContent") == "2"
    links = browser.js("Array.from(document.querySelectorAll('.job a')).map(a => a.getAttribute('href'))")
    assert "jobs/job-1/report.html" in links
    browser.screenshot(tmp_path / "atlas.png")
    _keep(tmp_path / "atlas.png", "atlas.png")
