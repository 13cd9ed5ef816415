"""A run folder belongs to one run at a time, and holds nothing of another.

``--force`` removes every file of the run it replaces; a checkpoint carries the run id of its
record, so a checkpoint of another run never continues under a different recipe; while a run
owns its folder the folder is locked (a second writer is refused, naming the process), and a
lock left by a process that died is taken over. The subprocess tests use a real ``pipeline
run`` held at one iteration by a test plugin, stopped with the signals a user sends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import pipeline_core.commands.cli as cli
from pipeline_core.errors import OutputError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.objectives import ClassObjective
from pipeline_core.run.record import LOCK, RunLock
from pipeline_core.testing import make_registry, tiny_recipe
from test_bad_input import StopAtPlugin, paused_run

#: a test plugin: the tiny model and a step that, with PIPELINE_TEST_HOLD=FOLDER, writes
#: FOLDER/reached at iteration 'at' and from then on sleeps a while in every iteration
HOLD_PLUGIN = '''
import os
import time
from pathlib import Path

from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams
from pipeline_core.testing import TINY_MODEL


class HoldParams(TransformParams):
    at: int = 1
    sleep: float = 0.25


class Hold(Step):
    name = "test-hold"
    kind = StepKind.TRANSFORM
    Params = HoldParams

    def apply(self, ctx, x):
        folder = os.environ.get("PIPELINE_TEST_HOLD")
        if folder and ctx.iteration >= self.params.at:
            Path(folder, "reached").write_text(str(ctx.iteration))
            time.sleep(self.params.sleep)
        return x


@hookimpl
def register_steps(registry):
    registry.add_step(Hold)


@hookimpl
def register_models(registry):
    registry.add_model(TINY_MODEL)
'''


class HoldPlugin:
    """The same step in this process, where it never holds (no PIPELINE_TEST_HOLD)."""

    @hookimpl
    def register_steps(self, registry):
        from pipeline_core.step import Step, StepKind, TransformParams

        class HoldParams(TransformParams):
            at: int = 1
            sleep: float = 0.25

        class Hold(Step):
            name = "test-hold"
            kind = StepKind.TRANSFORM
            Params = HoldParams

            def apply(self, ctx, x):
                return x

        registry.add_step(Hold)


REGISTRY = make_registry(StopAtPlugin(), HoldPlugin())


@pytest.fixture
def in_process(monkeypatch):
    monkeypatch.setattr(cli, "_registry", lambda quiet=False: REGISTRY)
    return cli.main


@pytest.fixture(scope="module")
def hold_env(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("site")
    (site / "pipeline_test_hold.py").write_text(HOLD_PLUGIN, encoding="utf-8")
    info = site / "pipeline_test_hold-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pipeline-test-hold\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pipeline_core.plugins]\ntest_hold = pipeline_test_hold\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def held_recipe(folder: Path, iterations: int = 40, checkpoint_every: int = 1) -> Path:
    recipe = tiny_recipe(iterations=iterations, output={"video": True, "checkpoint_every": checkpoint_every})
    recipe["steps"].insert(1, {"step": "test-hold", "at": 2, "on": "view"})
    path = folder / "held.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def start_held(folder: Path, env: dict[str, str], run_dir: Path) -> subprocess.Popen:
    """A real ``pipeline run`` of the held recipe, in its own session; returns once it holds."""
    hold = folder / "hold"
    hold.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline_core", "run", str(held_recipe(folder)), "--out",
                             str(run_dir), "--quiet"], env={**env, "PIPELINE_TEST_HOLD": str(hold)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (hold / "reached").exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before it held: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the run never reached its hold")
        time.sleep(0.05)
    return proc


def one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def write(folder: Path, name: str, recipe: dict) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


# -- --force --------------------------------------------------------------------------------


def test_force_leaves_nothing_of_the_old_run(in_process, tmp_path, capsys):
    run_dir = paused_run(tmp_path / "run", REGISTRY, at=1, output={"video": True})
    old = json.loads((run_dir / "run.json").read_text())
    (run_dir / ".video.part1.mp4").write_bytes(b"a segment of the old run")
    (run_dir / "notes.txt").write_text("mine, not the run's")
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "images" / "000_class-3.png").is_file()
    new = write(tmp_path, "new.yaml", tiny_recipe(iterations=2, steps=[
        {"step": "init-noise", "size": 32}, {"step": "L1-loss", "target": 5}, {"step": "gradient-step", "lr": 0.01}]))

    assert in_process(["run", str(new), "--out", str(run_dir), "--force", "--quiet"]) == 0, capsys.readouterr().err

    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["run_id"] != old["run_id"]
    assert not (run_dir / "checkpoint.pt").exists()
    assert not list(run_dir.glob(".video*")) and not (run_dir / "video.mp4").exists()
    assert sorted(p.name for p in (run_dir / "images").iterdir()) == ["000_class-5.png", "grid.png"]
    assert (run_dir / "notes.txt").read_text() == "mine, not the run's"
    assert not (run_dir / LOCK).exists()
    capsys.readouterr()
    # nothing of the old run is left to continue
    assert in_process(["run", "--resume", str(run_dir)]) == 2
    assert "has no checkpoint.pt" in one_line(capsys)


def test_a_checkpoint_of_another_run_is_refused(in_process, tmp_path, capsys):
    first = paused_run(tmp_path / "first", REGISTRY, at=1)
    second = paused_run(tmp_path / "second", REGISTRY, at=2)
    shutil.copy(first / "checkpoint.pt", second / "checkpoint.pt")
    before = (second / "run.json").read_bytes()

    assert in_process(["run", "--resume", str(second)]) == 2
    line = one_line(capsys)
    assert f"{second / 'checkpoint.pt'} belongs to another run" in line and "start the run again" in line
    assert (second / "run.json").read_bytes() == before  # the record is not touched


def test_a_resumed_run_keeps_its_run_id_in_record_and_checkpoint(in_process, tmp_path, capsys):
    run_dir = paused_run(tmp_path / "run", REGISTRY, at=1, output={"video": False, "checkpoint_every": 1})
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["run_id"] == run_id
    assert in_process(["run", "--resume", str(run_dir), "--quiet"]) == 0, capsys.readouterr().err
    assert json.loads((run_dir / "run.json").read_text())["run_id"] == run_id


# -- the lock -------------------------------------------------------------------------------


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process holding the run folder's lock, as a run does."""
    code = ("import sys, time; from pathlib import Path; from pipeline_core.run.record import RunLock; "
            "RunLock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_process(in_process, tmp_path, capsys):
    run_dir = paused_run(tmp_path / "run", REGISTRY, at=1)
    recipe = write(tmp_path, "other.yaml", tiny_recipe())
    holder = _holder(run_dir)
    before = sorted(p.name for p in run_dir.rglob("*"))
    try:
        assert in_process(["run", "--resume", str(run_dir)]) == 2
        line = one_line(capsys)
        assert f"the run folder {run_dir} is in use by process {holder.pid}" in line
        assert in_process(["run", str(recipe), "--out", str(run_dir), "--force", "--quiet"]) == 2
        assert f"in use by process {holder.pid}" in one_line(capsys)
        assert sorted(p.name for p in run_dir.rglob("*")) == before  # --force removed nothing
    finally:
        holder.kill()
        holder.wait()
    # the holder died without removing its lock: a stale lock, taken over
    assert (run_dir / LOCK).read_text().split()[0] == str(holder.pid)
    assert in_process(["run", "--resume", str(run_dir), "--quiet"]) == 0, capsys.readouterr().err
    assert not (run_dir / LOCK).exists()


def test_a_stale_lock_of_a_dead_pid_is_taken_over(in_process, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK).write_text(f"{dead.pid} somewhere\n")
    recipe = write(tmp_path, "r.yaml", tiny_recipe(iterations=1))
    assert in_process(["run", str(recipe), "--out", str(run_dir), "--quiet"]) == 0, capsys.readouterr().err
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    assert not (run_dir / LOCK).exists()


def test_a_held_lock_refuses_in_one_line_naming_its_holder_and_a_killed_holders_is_taken_over(tmp_path):
    holder = _holder(tmp_path)
    try:
        assert (tmp_path / LOCK).read_text().split() == [str(holder.pid), socket.gethostname()]
        with pytest.raises(OutputError) as refused:
            RunLock.acquire(tmp_path)
        message = str(refused.value)
        assert len(message.splitlines()) == 1
        assert f"the run folder {tmp_path} is in use by process {holder.pid} (a run still going)" in message
        assert (tmp_path / LOCK).read_text().split()[0] == str(holder.pid)  # the refused one wrote nothing
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock.acquire(tmp_path)  # the system let go of the dead holder's lock: no pid check needed
    try:
        assert (tmp_path / LOCK).read_text().split()[0] == str(os.getpid())
    finally:
        lock.release()
    assert not (tmp_path / LOCK).exists()


def test_the_lock_is_reentrant_in_one_process_and_gone_after(tmp_path):
    outer = RunLock.acquire(tmp_path)
    inner = RunLock.acquire(tmp_path)
    assert inner is outer and (tmp_path / LOCK).read_text().split()[0] == str(os.getpid())
    inner.release()
    assert (tmp_path / LOCK).exists()
    outer.release()
    assert not (tmp_path / LOCK).exists()


@pytest.mark.slow
def test_resume_of_a_run_still_running_is_refused_then_works_after_it_stops(hold_env, in_process, tmp_path, capsys):
    run_dir = tmp_path / "run"
    proc = start_held(tmp_path, hold_env, run_dir)
    try:
        assert in_process(["run", "--resume", str(run_dir), "--quiet"]) == 2
        line = one_line(capsys)
        assert f"is in use by process {proc.pid}" in line, line
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert not (run_dir / LOCK).exists()
    assert in_process(["run", "--resume", str(run_dir), "--quiet"]) == 0, capsys.readouterr().err
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


# -- signals ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sighup_stops_a_run_like_sigterm(hold_env, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_held(tmp_path, hold_env, run_dir)
    os.killpg(proc.pid, signal.SIGHUP)
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and f"--resume {run_dir}" in err
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted" and record["message"] == "stopped by SIGHUP"
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "video.mp4").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("sig, delays", [(signal.SIGINT, (0.5, 1.5, 3.0)), (signal.SIGTERM, (1.0,)),
                                         (signal.SIGHUP, (2.0,))], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_stop_while_starting_up_is_one_line_and_130(sig, delays, hold_env, tmp_path):
    """Signals at several moments of start-up (imports, plugins, validation): never a traceback."""
    recipe = held_recipe(tmp_path)
    for delay in delays:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline_core", "validate", str(recipe)], env=hold_env,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        if proc.returncode == 0 or ("valid" in out and not err.strip()):
            # it had finished already (a signal during the interpreter's own shutdown, after the
            # answer was printed, meets Python's default handler again: killed, silently)
            assert "valid" in out
            continue
        lines = [ln for ln in err.splitlines() if ln.strip()]
        # 130, or (rarely, a Ctrl-C inside the interpreter's own start-up) killed by SIGINT, which a
        # shell reports as the same 130
        assert proc.returncode in (130, -signal.SIGINT if sig == signal.SIGINT else 130), (delay, proc.returncode, err)
        assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("interrupted"), (delay, err)


# -- layers a step reads -------------------------------------------------------------------------


class LayerEnergy(ClassObjective):
    """Test objective: pulls a layer's mean activation up (reads a ``layer:`` head, no classes)."""

    name = "test-layer-energy"

    def bind(self, plan):
        self.classes, self.names = [], []

    def targets(self):
        return None

    def setup(self, ctx):
        pass

    def loss(self, ctx, out, image):
        return -out.head(self.params.head).flatten(1).mean(1)


class LayerPlugin:
    @hookimpl
    def register_steps(self, registry):
        registry.add_step(LayerEnergy)


def test_an_unknown_layer_is_refused_naming_the_step_and_the_layers(monkeypatch, tmp_path, capsys):
    registry = make_registry(LayerPlugin())
    monkeypatch.setattr(cli, "_registry", lambda quiet=False: registry)
    recipe = tiny_recipe(steps=[{"step": "init-noise", "size": 32},
                                {"step": "test-layer-energy", "target": 0, "head": "layer:featurs.0"},
                                {"step": "gradient-step", "lr": 0.01}])
    path = write(tmp_path, "layer.yaml", recipe)
    for command in (["validate", str(path)],  # the model's skeleton gives its layers without loading weights
                    ["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]):
        assert cli.main(command) == 2
        line = one_line(capsys)
        assert "layer.yaml:" in line and "step 1 (test-layer-energy): key 'head'" in line
        assert "has no layer 'featurs.0'" in line and "nearest: features.0" in line

    recipe["steps"][1]["head"] = "layer:features.0"
    assert cli.main(["run", str(write(tmp_path, "ok.yaml", recipe)), "--out", str(tmp_path / "ok"), "--quiet"]) == 0
