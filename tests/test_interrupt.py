"""Ctrl-C, SIGTERM and SIGKILL on the real ``pipeline run`` in a subprocess: nothing is lost.

The runs use the tiny test model, brought into the subprocess the way a third-party package
would bring it: a plugin announced through an entry point (a ``*.dist-info`` folder on
PYTHONPATH). The plugin also has a ``test-gate`` step that holds the run at one iteration until
the run's own signal handler has *run* (it wraps the handler to count), so every test knows
exactly which iteration the signal landed in, however loaded the machine is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from conftest import MOBILENET_SETS, RECIPES

GATE_PLUGIN = '''
"""Test plugin: the tiny model, and a step that holds the run at one iteration for signals."""
import os
import signal
import time
from pathlib import Path

from pydantic import Field

from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams
from pipeline_core.testing import TINY_MODEL


class GateParams(TransformParams):
    at: int = Field(..., description="The iteration to hold.")
    signals: int = Field(1, ge=1, description="Signals to wait for there.")


class Gate(Step):
    """With PIPELINE_TEST_GATE=FOLDER: at iteration 'at', write FOLDER/reached, then wait for signals."""

    name = "test-gate"
    kind = StepKind.TRANSFORM
    Params = GateParams

    def apply(self, ctx, x):
        folder = os.environ.get("PIPELINE_TEST_GATE")
        if folder and ctx.iteration == self.params.at:
            handled = []
            originals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

            def counting(signum, frame):  # the run's own handler, counted once it has run
                handled.append(signum)
                n = len(handled)
                originals[signum](signum, frame)
                Path(folder, f"signalled-{n}").write_text("")

            for s in originals:
                signal.signal(s, counting)
            signal.alarm(120)  # a test that never signals must not leave the run waiting for ever
            try:
                Path(folder, "reached").write_text(str(ctx.iteration))
                while len(handled) < self.params.signals:  # a signal before this line is counted too
                    time.sleep(0.01)
            finally:
                signal.alarm(0)
                for s, h in originals.items():
                    signal.signal(s, h)
        return x


@hookimpl
def register_steps(registry):
    registry.add_step(Gate)


@hookimpl
def register_models(registry):
    registry.add_model(TINY_MODEL)
'''

#: A recipe with every random step (colour jitter, rotation) and a stateful optimiser (Adam).
GATED_RECIPE = """\
iterations: 20
seed: 5
device: cpu
batch: 2
model:
  name: tiny-test-model
steps:
  - step: init-noise
    scale: 0.2
    offset: 0.4
    size: 32
  - step: color-jitter
    brightness: 0.1
    contrast: 0.1
    saturation: 0.1
    hue: 0.05
  - step: rotate
    degrees: 15
    translate: 0.05
  - step: test-gate
    at: {at}
    signals: {signals}
    on: view
  - step: L1-loss
    target: [3, 7]
  - step: adam
    lr: 0.02
output:
  checkpoint_every: {checkpoint_every}
  fps: 10
"""


#: Runs shared by several test modules. pytest makes one fixture per module that imports a
#: fixture, so a session fixture imported elsewhere would run again there; this keeps one.
_SHARED: dict[str, object] = {}


@pytest.fixture(scope="session")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """Environment for a subprocess that loads the gate plugin through its entry point."""
    if "env" in _SHARED:
        return _SHARED["env"]  # type: ignore[return-value]
    site = tmp_path_factory.mktemp("site")
    (site / "pipeline_test_gate.py").write_text(GATE_PLUGIN, encoding="utf-8")
    info = site / "pipeline_test_gate-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pipeline-test-gate\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pipeline_core.plugins]\ntest_gate = pipeline_test_gate\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    # one thread: the tiny model's convolutions run far faster than when two fight over a shared CPU
    _SHARED["env"] = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return _SHARED["env"]  # type: ignore[return-value]


def write_recipe(folder: Path, at: int = 7, signals: int = 1, checkpoint_every: int = 5) -> Path:
    path = folder / "gated.yaml"
    path.write_text(GATED_RECIPE.format(at=at, signals=signals, checkpoint_every=checkpoint_every), encoding="utf-8")
    return path


def start(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    """``pipeline ARGS`` in a new session, so a signal can go to its whole process group as a
    terminal's Ctrl-C does."""
    return subprocess.Popen([sys.executable, "-m", "pipeline_core", *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {path.name}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path.name} never appeared")
        time.sleep(0.02)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def read_frames(video: Path) -> list[np.ndarray]:
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    w, h = meta["size"]
    return [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))


def gated_run(tmp_path: Path, env: dict[str, str], sig: int, at: int = 7, signals: int = 1,
              checkpoint_every: int = 5, out: str = "run") -> tuple[Path, int, str]:
    """Start the gated recipe, signal the process group at iteration ``at`` (``signals`` times,
    each after the previous one was handled) and wait for the end; (run dir, rc, stderr)."""
    gate = tmp_path / f"gate-{out}"
    gate.mkdir()
    recipe = write_recipe(tmp_path, at, signals, checkpoint_every)
    run_dir = tmp_path / out
    proc = start(["run", str(recipe), "--out", str(run_dir)], {**env, "PIPELINE_TEST_GATE": str(gate)})
    wait_for(gate / "reached", proc)
    for n in range(1, signals + 1):
        os.killpg(proc.pid, sig)
        if n < signals:
            wait_for(gate / f"signalled-{n}", proc)
    rc, _out, err = finish(proc)
    return run_dir, rc, err


@pytest.fixture(scope="session")
def reference_run(plugin_env, tmp_path_factory) -> Path:
    """The gated recipe run straight through (no gate folder, so the gate never waits)."""
    if "reference" not in _SHARED:
        folder = tmp_path_factory.mktemp("reference")
        run_dir = folder / "run"
        rc, _out, err = finish(start(["run", str(write_recipe(folder)), "--out", str(run_dir), "--quiet"], plugin_env))
        assert rc == 0, err
        _SHARED["reference"] = run_dir
    return _SHARED["reference"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def sigint_run(plugin_env, tmp_path_factory) -> tuple[Path, int, str]:
    """The gated recipe stopped by Ctrl-C at iteration 7: (run dir, exit code, stderr). Tests copy it
    before changing it."""
    if "sigint" not in _SHARED:
        _SHARED["sigint"] = gated_run(tmp_path_factory.mktemp("sigint"), plugin_env, signal.SIGINT, at=7)
    return _SHARED["sigint"]  # type: ignore[return-value]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_at_the_iteration_boundary_and_keeps_everything(tmp_path, plugin_env, sigint_run, sig):
    if sig == signal.SIGINT:
        run_dir, rc, err = sigint_run
    else:
        run_dir, rc, err = gated_run(tmp_path, plugin_env, sig, at=7)

    assert rc == 130, err
    assert "Traceback" not in err
    assert "interrupted at iteration 8" in err and f"--resume {run_dir}" in err
    data = record(run_dir)
    assert data["status"] == "interrupted"
    assert data["iterations_done"] == 8  # iteration 7 was finished, iteration 8 never started
    assert data["message"] == f"stopped by {signal.Signals(sig).name}"
    assert data["checkpoint"] == {"file": "checkpoint.pt", "iteration": 8}

    frames = read_frames(run_dir / "video.mp4")  # playable, and holds every frame so far
    assert len(frames) == 9  # the start and one per finished iteration
    assert frames[-1].std() > 5
    pngs = sorted(p.name for p in (run_dir / "images").glob("*.png"))
    assert pngs == ["000_class-3.png", "001_class-7.png", "grid.png"]
    assert [i["file"] for i in data["images"]] == ["000_class-3.png", "001_class-7.png"]
    assert (run_dir / "checkpoint.pt").stat().st_size > 0
    assert not list(run_dir.glob(".*.tmp"))  # no half-written file left behind


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_still_writes_the_record(tmp_path, plugin_env):
    run_dir, rc, err = gated_run(tmp_path, plugin_env, signal.SIGINT, at=7, signals=2, checkpoint_every=5)

    assert rc == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    data = record(run_dir)
    assert data["status"] == "interrupted"
    assert data["message"] == "stopped at once by a second interrupt"
    assert data["iterations_done"] == 7  # stopped inside iteration 7
    # the half-done iteration is not checkpointed: the last periodic checkpoint stays
    assert data["checkpoint"] == {"file": "checkpoint.pt", "iteration": 5}
    assert len(read_frames(run_dir / "video.mp4")) == 8
    assert len(data["images"]) == 2 and (run_dir / "images" / "grid.png").is_file()
    assert "--resume" in err


def test_a_second_signal_handled_inside_the_first_handler_still_stops_at_once(monkeypatch):
    """Python may run a second signal's handler in the middle of the first one (the CI saw it
    on a loaded machine): the second must still be the one that stops at once."""
    from pipeline_core.run import interrupts

    with interrupts.graceful_stop() as flag:
        handler = signal.getsignal(signal.SIGINT)
        real_signals = interrupts.signal.Signals
        nested = []

        def second_arrives(signum):  # called by the first handler after it has counted itself
            if not nested:
                nested.append(True)
                handler(signal.SIGINT, None)
            return real_signals(signum)

        monkeypatch.setattr(interrupts.signal, "Signals", second_arrives)
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGINT, None)
        monkeypatch.undo()
        assert nested and flag.finishing
        handler(signal.SIGINT, None)  # a third one, while the run writes its outputs: ignored


@pytest.mark.slow
def test_ctrl_c_on_the_real_mobilenet_leaves_a_consistent_run(cli, mobilenet_path, tmp_path):
    """No gate here: a real terminal-style Ctrl-C whenever the first checkpoint has appeared."""
    run_dir = tmp_path / "run"
    sets = [arg for s in [*MOBILENET_SETS, "iterations=300", "output.checkpoint_every=1"] for arg in ("--set", s)]
    proc = start(["run", str(RECIPES / "castle_from_flowers.yaml"), *sets, "--out", str(run_dir)],
                 {**os.environ, "OMP_NUM_THREADS": "1"})
    wait_for(run_dir / "checkpoint.pt", proc, timeout=300)
    os.killpg(proc.pid, signal.SIGINT)
    rc, _out, err = finish(proc)

    assert rc == 130, err
    assert "Traceback" not in err
    data = record(run_dir)
    done = data["iterations_done"]
    assert data["status"] == "interrupted" and 1 <= done < 300
    assert data["checkpoint"]["iteration"] == done
    assert len(read_frames(run_dir / "video.mp4")) == done + 1
    assert sorted(i["file"] for i in data["images"]) == ["000_castle.png", "001_castle.png"]


def _ffmpeg_writing(video: Path) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(video).encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finding the orphaned encoder needs /proc")
def test_sigkill_leaves_a_playable_video_and_a_whole_record_and_resume_repairs_the_video(tmp_path, plugin_env,
                                                                                         reference_run):
    gate = tmp_path / "gate"
    gate.mkdir()
    recipe = write_recipe(tmp_path, at=7, checkpoint_every=3)
    run_dir = tmp_path / "run"
    proc = start(["run", str(recipe), "--out", str(run_dir), "--quiet"], {**plugin_env, "PIPELINE_TEST_GATE": str(gate)})
    wait_for(gate / "reached", proc)
    time.sleep(0.5)  # let the writer thread hand the queued frames to the encoder
    proc.kill()  # SIGKILL: no handler, no finishing
    finish(proc)
    deadline = time.monotonic() + 30
    while _ffmpeg_writing(run_dir / "video.mp4") and time.monotonic() < deadline:
        time.sleep(0.05)  # the encoder, in its own session, finishes the file on its own

    data = record(run_dir)  # whole JSON despite the kill: every write of it was atomic
    assert data["status"] == "running" and data["checkpoint"] == {"file": "checkpoint.pt", "iteration": 6}
    assert len(read_frames(run_dir / "video.mp4")) == 8  # frames up to iteration 7, past the checkpoint

    rc, _out, err = finish(start(["run", "--resume", str(run_dir), "--quiet"], plugin_env))
    assert rc == 0, err
    # the reference checkpoints every 5 iterations, this run every 3: neither changes a byte
    assert len(read_frames(run_dir / "video.mp4")) == len(read_frames(reference_run / "video.mp4")) == 21
    for name in ("000_class-3.png", "001_class-7.png"):
        assert (run_dir / "images" / name).read_bytes() == (reference_run / "images" / name).read_bytes()
    assert record(run_dir)["resumed"][0]["from_iteration"] == 6


_IMPORT_STOP = """
import os, signal, sys, types
sys.path.insert(0, {folder!r})
from pipeline_core.run.interrupts import startup_signals
with startup_signals(exit_inside_imports={flag}):
    try:
        import stops_itself  # sends SIGINT to its own process while it is being imported
    except KeyboardInterrupt:
        print("raised")
"""


@pytest.mark.parametrize("flag", [True, False])
def test_a_stop_inside_an_import_leaves_at_once_for_the_command(flag, tmp_path):
    """Raising inside an import can unwind through an extension's C++ start-up and abort the
    process: for the command, a stop inside an import is the one line and 130 straight away."""
    (tmp_path / "stops_itself.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n"
                                               "import time\ntime.sleep(0.5)\n")
    done = subprocess.run([sys.executable, "-c", _IMPORT_STOP.format(folder=str(tmp_path), flag=flag)],
                          capture_output=True, text=True, timeout=60)
    if flag:
        assert done.returncode == 130 and done.stderr.strip() == "interrupted (Ctrl-C)" and not done.stdout
    else:
        assert done.returncode == 0 and done.stdout.strip() == "raised"
