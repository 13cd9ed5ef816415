"""The report and the atlas in a real browser: Debian's chromium, headless, over its DevTools pipe.

One real run of the real MobileNetV2 (the CLI in a subprocess, with ``pipeline evaluate`` after
it), one hand-written sweep.json around that run's PNGs; each page is opened from file:// with
no network and checked as a person would see it: no console errors, every image decoded, the
video playable for frames / fps seconds, the numbers on the page those of run.json and
evaluation.json. A screenshot of each page is kept in runs/test-screenshots/ (and the report's
copied to docs/images/report_screenshot.png with PIPELINE_UPDATE_DOCS_SCREENSHOT=1).

The browser is driven through ``--remote-debugging-pipe`` (JSON messages on file descriptors
3 and 4), so no port, no extra package and nothing that downloads a browser.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import pipeline_core.commands.cli as cli
from conftest import MOBILENET_SETS, ROOT, run_cli

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")

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


class Browser:
    """A headless chromium and one page, spoken to with the DevTools protocol over a pipe."""

    def __init__(self, profile: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # in the child: chromium reads commands on fd 3 and answers on fd 4
            import fcntl

            r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome_r, from_chrome_w))
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
             "--mute-audio", "--hide-scrollbars", "--autoplay-policy=no-user-gesture-required",
             f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    def _read(self, timeout: float) -> dict[str, Any]:
        import select

        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read(timeout)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_for(self, method: str, timeout: float = 30) -> dict[str, Any]:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            event = self._read(max(0.1, deadline - time.monotonic()))
            if event.get("method") == method:
                return event
            self.events.append(event)

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")

    def js(self, expression: str, timeout: float = 30) -> Any:
        result = self.call("Runtime.evaluate", session=True, timeout=timeout, expression=expression,
                           awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen since the page was opened."""
        found = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                found.append(f"console.{p['type']}: {p.get('args')}")
            elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
                found.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif method == "Network.loadingFailed":
                found.append(f"failed to load: {p.get('errorText')}")
        return found

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, before: str | None = None) -> None:
        """The whole page as a PNG; ``before``, a script (a promise) run once it is laid out at full height."""
        size = self.js("({w: document.documentElement.scrollWidth, h: document.documentElement.scrollHeight})")
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=1280, height=min(size["h"], 6000),
                  deviceScaleFactor=1, mobile=False)
        if before:
            self.js(before)
        data = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        self.call("Emulation.clearDeviceMetricsOverride", session=True)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it is going away either way
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


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


def test_the_report_loads_offline_with_every_image_the_video_and_run_json_numbers(browser, real_run, tmp_path):
    record = _record(real_run)
    evaluation = json.loads((real_run / "evaluation.json").read_text(encoding="utf-8"))
    browser.open((real_run / "report.html").as_uri())

    assert browser.errors() == []
    assert all(u.startswith(("file://", "data:")) for u in browser.requests()), browser.requests()
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

    assert browser.errors() == []
    images = browser.js("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
    assert images == [True] * 4
    order = "Array.from(document.querySelectorAll('.job:not(.hidden)')).map(c => c.dataset.id)"
    assert browser.js(order) == ["job-1", "job-3", "job-2", "job-0"]  # the independent score, best first
    name = record["images"][1]["targets"][0]["name"]
    browser.js(f"(() => {{ const f = document.getElementById('filter'); f.value = {json.dumps(name[:4])};"
               "f.dispatchEvent(new Event('input')); })()")
    assert browser.js(order) == ["job-1", "job-3"]
    assert browser.js("document.getElementById('shown').textContent") == "2"
    links = browser.js("Array.from(document.querySelectorAll('.job a')).map(a => a.getAttribute('href'))")
    assert "jobs/job-1/report.html" in links
    browser.screenshot(tmp_path / "atlas.png")
    _keep(tmp_path / "atlas.png", "atlas.png")
