"""The example notebook is executed, so it cannot rot; and a kernel interrupt stops a run as
Ctrl-C does on the command line, keeping its partial images and record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from conftest import MOBILENET, ROOT  # noqa: E402

NOTEBOOK = ROOT / "examples" / "python_api.ipynb"

#: executes a notebook in its own folder and writes the executed copy beside it
EXECUTE = """
import sys, nbformat
from nbclient import NotebookClient
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
nbformat.write(nb, sys.argv[3])
"""


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PIPELINE_MOBILENET": str(MOBILENET)}


def _outputs(cell: dict, kind: str) -> list[str]:
    found = []
    for out in cell.get("outputs", []):
        text = out.get("data", {}).get(kind) if kind != "stream" else out.get("text")
        if text is not None:
            found.append("".join(text) if isinstance(text, list) else text)  # nbformat keeps lines as lists
    return found


def test_the_example_notebook_runs_and_shows_its_results(tmp_path):
    # a copy beside a link to the recipes (its photo), so its run folders land in tmp_path
    (tmp_path / "examples").mkdir()
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    copy = tmp_path / "examples" / NOTEBOOK.name
    copy.write_bytes(NOTEBOOK.read_bytes())
    done_path = tmp_path / "executed.ipynb"
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", EXECUTE, str(copy), str(copy.parent), str(done_path)],
                          capture_output=True, text=True, timeout=400, env=_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - t0 < 120
    cells = [c for c in json.loads(done_path.read_text())["cells"] if c["cell_type"] == "code"]
    assert not any(o.get("output_type") == "error" for c in cells for o in c.get("outputs", []))
    html = [h for c in cells for h in _outputs(c, "text/html")]
    results = [h for h in html if "data:image/png;base64" in h]
    assert len(results) >= 3  # the class, the channel grid and the dream, each shown inline
    assert all("<video" in h and "report.html" in h for h in results)
    progress = [h for h in html if "/8" in h and "loss" in h]  # rich's bar, redrawn in the cell
    assert progress, "no progress bar in the cells"
    runs = sorted(p.name for p in (tmp_path / "examples" / "runs").iterdir())
    assert {"class-dog", "recipe", "layer-features.2"} <= set(runs)
    for name in runs:
        record = json.loads((tmp_path / "examples" / "runs" / name / "run.json").read_text())
        assert record["status"] == "completed"
    assert ("class-castle" in runs) == MOBILENET.is_file()  # the real MobileNetV2, where its weights are


INTERRUPTED = """
import torch
import pipeline_core as pc
from pipeline_core.testing import TINY_CLASSES, TinyNet, tiny_recipe
torch.set_num_threads(1)
model = pc.Model(TinyNet(), mean=(0.5,) * 3, std=(0.5,) * 3, size=32, classes=TINY_CLASSES)
out = pc.run(tiny_recipe(iterations=1000000, output={"video": True}), model=model, out="runs/long")
print("RESULT", out.status, out.iterations_done, tuple(out.images.shape))
"""


def test_a_kernel_interrupt_stops_the_run_with_its_partial_result_and_record(tmp_path):
    from jupyter_client.manager import start_new_kernel

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        msg_id = kc.execute(INTERRUPTED)
        metrics = tmp_path / "runs" / "long" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.2)
        km.interrupt_kernel()
        printed, error = [], None
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                printed.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                error = msg["content"]["ename"]
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        assert error is None, error
        line = next(line for line in "".join(printed).splitlines() if line.startswith("RESULT"))
        _, status, done, shape = line.split(" ", 3)
        assert status == "interrupted" and 0 < int(done) < 1000000 and shape == "(1, 3, 32, 32)"
        record = json.loads((tmp_path / "runs" / "long" / "run.json").read_text())
        assert record["status"] == "interrupted" and record["iterations_done"] == int(done)
        assert (tmp_path / "runs" / "long" / "images" / "grid.png").is_file()
        assert (tmp_path / "runs" / "long" / "video.mp4").stat().st_size > 0
        # the kernel lives on, and the next cell runs
        reply = kc.execute_interactive("x = 1 + 1", timeout=60)
        assert reply["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
