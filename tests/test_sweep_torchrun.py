"""A sweep under torchrun: two CPU processes (gloo) divide the batches and make the same bytes as one.

Both run with one thread per process (the recipe's performance.threads, and OMP_NUM_THREADS=1
for torchrun's processes), the condition under which a CPU run is byte-for-byte repeatable.
A rank started again skips what is done by the same code as one process (tests/test_sweep.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from test_sweep import do_sweep, write_sweep

SWEEP = """\
name: sharded
recipe: recipe.yaml
axes:
  steps.3.target: [1, 2, 3]
  seed: [0, 1]
batch: 2
"""

#: two torchrun processes and one plain sweep of the real model, once for the module
pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def sweep_command(prefix: list[str], file: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*prefix, "-m", "pipeline_core", "sweep", str(file), "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def both(tmp_path_factory, mobilenet_path):
    root = tmp_path_factory.mktemp("torchrun")
    file = write_sweep(root / "files", SWEEP)
    assert do_sweep(file, root / "one") == 0  # one process (this one; the recipe asks for one thread)
    two = sweep_command(TORCHRUN, file, root / "two")
    assert two.returncode == 0, two.stderr
    return root / "one", root / "two", two


def test_two_processes_make_the_same_png_bytes_as_one(both):
    one, two, _proc = both
    a = json.loads((one / "sweep.json").read_text())
    b = json.loads((two / "sweep.json").read_text())
    assert a["total"] == b["total"] == 6
    assert [(j["id"], j["run"], j["image"], j["status"]) for j in a["jobs"]] == \
        [(j["id"], j["run"], j["image"], j["status"]) for j in b["jobs"]]
    assert {j["status"] for j in b["jobs"]} == {"completed"}
    for job in a["jobs"]:
        assert (one / job["image"]).read_bytes() == (two / job["image"]).read_bytes(), job["id"]
    assert [j["top5"] for j in a["jobs"]] == [j["top5"] for j in b["jobs"]]


def test_the_ranks_ran_disjoint_batches_and_rank_0_indexed_them_all(both):
    _one, two, proc = both
    statuses = [json.loads((two / ".ranks" / f"rank-{r:05d}.json").read_text()) for r in (0, 1)]
    assert [s["world_size"] for s in statuses] == [2, 2]
    assert statuses[0]["token"] == statuses[1]["token"]
    mine = [set(s["batches"]) for s in statuses]
    assert mine[0] and mine[1] and not mine[0] & mine[1]
    index = json.loads((two / "sweep.json").read_text())
    assert mine[0] | mine[1] == {b["run"] for b in index["batches"]}
    # every rank's device and speed are in the index
    ranks = index["throughput"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["device"] == "cpu" and r["jobs_run"] for r in ranks)
    assert index["world_size"] == 2
    # one summary, from rank 0
    assert proc.stderr.count("sweep sharded: 6 completed of 6 jobs") == 1
