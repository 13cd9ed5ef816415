"""The hostile user: links, FIFOs, files changed behind the tool's back, names that are paths.

Each test does what such a user does (a real symbolic link, a real FIFO, a weights file really
overwritten, the real command in a subprocess where it matters) and checks the promise the
tool makes about it: nothing outside the folder the user named is written or removed, a result
is never reported finished when what it was made from changed or is gone, a file that is not a
regular file is refused instead of waited on, and every refusal is one line saying how to fix it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pipeline_core.commands.cli as cli
from pipeline_core.errors import RecipeError
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams
from pipeline_core.testing import make_registry, run_recipe_dict, tiny_recipe

REGISTRY = make_registry()

#: a plugin that gives the real command the tiny test model (for fast subprocess runs)
TINY_PLUGIN = '''
from pipeline_core.hookspecs import hookimpl
from pipeline_core.testing import TINY_MODEL


@hookimpl
def register_models(registry):
    registry.add_model(TINY_MODEL)
'''


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("site")
    (site / "pipeline_test_tiny.py").write_text(TINY_PLUGIN, encoding="utf-8")
    info = site / "pipeline_test_tiny-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pipeline-test-tiny\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pipeline_core.plugins]\ntest_tiny = pipeline_test_tiny\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def pipeline(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline_core", *args], env=env, cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return [line for line in proc.stderr.splitlines() if line.strip()]


def one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def write_recipe(folder: Path, name: str = "tiny.yaml", **changes) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(tiny_recipe(**changes), sort_keys=False), encoding="utf-8")
    return path


def users_pictures(folder: Path) -> dict[str, bytes]:
    """A folder of the user's own pictures, named as a run would name its images."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"000_class-3.png": b"my holiday", "grid.png": b"my grid", "001_cat.png": b"my cat",
             ".000_x.png.tmp": b"my temp", "notes.txt": b"mine"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def unchanged(folder: Path, files: dict[str, bytes]) -> None:
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files


# -- 1. nothing touched outside the folder the user named ----------------------------------------


@pytest.mark.slow
def test_force_removes_a_symlinked_images_folder_as_a_link_never_the_pictures_it_points_at(tiny_env, tmp_path):
    run_dir = tmp_path / "run"
    run_recipe_dict(tiny_recipe(iterations=1), run_dir, registry=REGISTRY)
    mine = users_pictures(tmp_path / "Pictures")
    import shutil

    shutil.rmtree(run_dir / "images")
    (run_dir / "images").symlink_to(tmp_path / "Pictures", target_is_directory=True)
    record = json.loads((run_dir / "run.json").read_text())
    record["files"] += ["images/001_cat.png", str(tmp_path / "Pictures" / "notes.txt"), "../Pictures/grid.png"]
    (run_dir / "run.json").write_text(json.dumps(record))

    proc = pipeline("run", str(write_recipe(tmp_path, iterations=1)), "--out", str(run_dir), "--force", "--quiet",
                    env=tiny_env)

    assert proc.returncode == 0, proc.stderr
    unchanged(tmp_path / "Pictures", mine)
    assert not (run_dir / "images").is_symlink() and (run_dir / "images" / "000_class-3.png").is_file()


def test_links_named_like_the_runs_own_files_are_removed_as_links(in_process, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_recipe_dict(tiny_recipe(iterations=1), run_dir, registry=REGISTRY)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    for name in ("checkpoint.pt", "video.mp4", ".write-test", "metrics.jsonl"):
        (run_dir / name).unlink(missing_ok=True)
        (run_dir / name).symlink_to(precious)

    assert in_process(["run", str(write_recipe(tmp_path, iterations=1)), "--out", str(run_dir), "--force",
                       "--quiet"]) == 0, capsys.readouterr().err
    assert precious.read_text() == "keep me"


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_kept(in_process, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (run_dir / ".lock").symlink_to(precious)

    assert in_process(["run", str(write_recipe(tmp_path, iterations=1)), "--out", str(run_dir), "--quiet"]) == 2
    line = one_line(capsys)
    assert ".lock is a symbolic link" in line and "remove it" in line
    assert precious.read_text() == "keep me"


@pytest.mark.parametrize("name", ["../../escaped", "/ABS/escaped", "a/b", ".."])
def test_a_sweep_name_that_is_a_path_is_refused_naming_the_file_and_line(name, tmp_path):
    from pipeline_core.sweep.spec import load_sweep

    name = name.replace("/ABS", str(tmp_path))
    write_recipe(tmp_path, "recipe.yaml")
    (tmp_path / "sweep.yaml").write_text(f"recipe: recipe.yaml\nname: {name}\naxes:\n  seed: [0, 1]\n")
    with pytest.raises(RecipeError) as info:
        load_sweep(tmp_path / "sweep.yaml")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'sweep.yaml'}:2:") and "not a plain name" in message
    assert "--out" in message


@pytest.mark.slow
def test_the_real_command_writes_nothing_for_a_sweep_named_out_of_its_folder(tiny_env, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    write_recipe(work, "recipe.yaml", iterations=1)
    (work / "sweep.yaml").write_text(f"recipe: recipe.yaml\nname: ../../escaped\naxes:\n  seed: [0]\n")
    before = sorted(p.name for p in tmp_path.iterdir())

    proc = pipeline("sweep", "sweep.yaml", "--quiet", env=tiny_env, cwd=work)

    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "sweep.yaml:2" in lines[0] and "not a plain name" in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path.parent / "escaped").exists() and not (work / "runs").exists()


def tiny_sweep(folder: Path, iterations: int = 1, name: str = "s") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_recipe(folder, "recipe.yaml", iterations=iterations)
    (folder / "sweep.yaml").write_text(f"name: {name}\nrecipe: recipe.yaml\naxes:\n  steps.1.target: 0-3\n"
                                       "batch: 2\n")
    return folder / "sweep.yaml"


def do_sweep(file: Path, out: Path, **kw):
    from pipeline_core.commands.sweep import sweep

    lines: list[str] = []
    code = sweep(str(file), kw.pop("registry", REGISTRY), kw.pop("sets", []), out=str(out), quiet=True,
                 say=lines.append, **kw)
    return code, lines


def test_a_sweep_never_clears_a_batch_folder_reached_through_a_link(tmp_path):
    file = tiny_sweep(tmp_path / "files")
    out = tmp_path / "out"
    assert do_sweep(file, out)[0] == 0
    # the batches' folder swapped for a link to the user's folder of look-alike run folders
    elsewhere = tmp_path / "elsewhere"
    (out / "runs").rename(elsewhere)
    (out / "runs").symlink_to(elsewhere, target_is_directory=True)
    before = {p: p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()}

    code, lines = do_sweep(file, out, force=True)

    assert code == 1
    assert any("would lead out of" in line and "symbolic link" in line for line in lines), lines
    assert {p: p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()} == before


def test_a_replay_from_inside_its_run_folder_goes_beside_it_not_into_it(in_process, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    run_dir = runs / "castle"
    run_recipe_dict(tiny_recipe(iterations=1), run_dir, registry=REGISTRY)
    monkeypatch.chdir(run_dir)

    assert in_process(["run", "run.json", "--quiet"]) == 0, capsys.readouterr().err
    assert not (run_dir / "runs").exists()
    assert (runs / "castle-2" / "run.json").is_file()
    monkeypatch.chdir(run_dir / "images")
    assert in_process(["run", "../run.json", "--quiet"]) == 0, capsys.readouterr().err
    assert not (run_dir / "images" / "runs").exists() and (runs / "castle-3" / "run.json").is_file()


# -- 2. never a result reported finished when what it was made from changed or is gone ---------

SWEEP_RECIPE = """\
iterations: 1
seed: 0
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
    size: 64
  - step: L1-loss
    target: 1
  - step: gradient-step
    lr: 0.05
output:
  video: false
"""


def test_an_overwritten_weights_file_runs_the_sweep_again_instead_of_reporting_the_old_images(
        mobilenet_path, tmp_path):
    import torch

    from pipeline_core.host.manager import build_registry

    registry = build_registry()
    weights = tmp_path / "model.pth"
    weights.write_bytes(mobilenet_path.read_bytes())
    (tmp_path / "recipe.yaml").write_text(SWEEP_RECIPE.format(weights=weights))
    (tmp_path / "sweep.yaml").write_text("name: w\nrecipe: recipe.yaml\naxes:\n  steps.1.target: [0]\nbatch: 1\n")
    out = tmp_path / "out"
    assert do_sweep(tmp_path / "sweep.yaml", out, registry=registry)[0] == 0
    first = json.loads((out / "sweep.json").read_text())

    # the same path, other numbers: the classifier's last layer turned around
    state = torch.load(weights, weights_only=True)
    state["classifier.1.weight"] = -state["classifier.1.weight"]
    torch.save(state, weights)
    code, lines = do_sweep(tmp_path / "sweep.yaml", out, registry=registry)

    assert code == 0, lines
    again = json.loads((out / "sweep.json").read_text())
    assert again["batches"][0]["run"] != first["batches"][0]["run"]  # another batch, run anew
    assert again["counts"] == {"completed": 1}
    old_top = first["jobs"][0]["top5"]
    new_top = again["jobs"][0]["top5"]
    assert old_top != new_top  # the new images are the new model's
    record = json.loads((out / again["batches"][0]["run"] / "run.json").read_text())
    assert record["status"] == "completed" and record["model"]["weights"] == str(weights)


def test_the_batch_identity_follows_the_contents_of_photos_and_is_read_once(tmp_path, monkeypatch):
    from pipeline_core.recipe.loader import load_recipe
    from pipeline_core.sweep.plan import fingerprint

    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 10, 10)).save(photo)
    recipe = tiny_recipe(steps=[{"step": "init-image", "images": "photo.png"}, {"step": "L1-loss", "target": 3},
                                {"step": "gradient-step", "lr": 0.01}])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    base = load_recipe(tmp_path / "r.yaml", REGISTRY)
    reads = []
    real_open = open

    def counting_open(path, *args, **kw):
        if str(path) == os.path.realpath(photo):
            reads.append(path)
        return real_open(path, *args, **kw)

    monkeypatch.setattr("builtins.open", counting_open)
    before = [fingerprint(base, [f"seed={i}"]) for i in range(20)]
    assert len(reads) == 1  # twenty batches, one read
    Image.new("RGB", (40, 40), (10, 200, 10)).save(photo)  # replaced in place
    assert fingerprint(base, ["seed=0"]) != before[0]


class DeleteFinishedParams(TransformParams):
    folder: str


class DeleteFinished(Step):
    """Removes every run folder in ``folder`` whose run.json says it completed (a user tidying up)."""

    name = "test-delete-finished"
    kind = StepKind.TRANSFORM
    Params = DeleteFinishedParams

    def apply(self, ctx, x):
        import shutil

        for run in Path(self.params.folder).glob("*/run.json"):
            try:
                done = json.loads(run.read_text()).get("status") == "completed"
            except (OSError, ValueError):
                done = False
            if done:
                shutil.rmtree(run.parent)
        return x


class DeletePlugin:
    @hookimpl
    def register_steps(self, registry):
        registry.add_step(DeleteFinished)


def test_a_finished_batch_whose_folder_is_removed_mid_sweep_is_not_reported_completed(tmp_path):
    registry = make_registry(DeletePlugin())
    folder = tmp_path / "files"
    file = tiny_sweep(folder)
    out = tmp_path / "out"
    recipe = tiny_recipe(iterations=1)
    recipe["steps"].append({"step": "test-delete-finished", "folder": str(out / "runs")})
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    code, lines = do_sweep(file, out, registry=registry)

    assert code == 1, lines
    data = json.loads((out / "sweep.json").read_text())
    assert data["counts"] == {"completed": 2, "pending": 2}, data["counts"]
    assert any("no longer hold the finished run" in line and "start the same command again" in line
               for line in lines), lines


#: runs a command and prints the peak memory of that command alone (its own RUSAGE_CHILDREN)
_PEAK = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)); "
         "sys.stderr.write(p.stderr); sys.exit(p.returncode)")


def _peak(*args: str, env: dict[str, str], cwd: Path, timeout: float = 240) -> tuple[subprocess.CompletedProcess, int]:
    proc = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "pipeline_core", *args], env=env,
                          cwd=cwd, text=True, capture_output=True, timeout=timeout)
    return proc, int(proc.stdout.strip() or 0)


@pytest.mark.slow
def test_a_million_job_sweep_says_its_size_at_once_and_is_refused_before_it_is_built(tiny_env, tmp_path):
    import time

    write_recipe(tmp_path, "recipe.yaml", iterations=1)
    hundred = "[" + ", ".join(str(i) for i in range(100)) + "]"
    lrs = "[" + ", ".join(f"0.{i + 1:03d}" for i in range(100)) + "]"
    (tmp_path / "sweep.yaml").write_text(f"name: huge\nrecipe: recipe.yaml\naxes:\n  seed: {hundred}\n"
                                         f"  steps.2.lr: {lrs}\n  iterations: {hundred.replace('[0, ', '[100, ')}\n")
    _, baseline = _peak("validate", "recipe.yaml", env=tiny_env, cwd=tmp_path)  # the same imports, no sweep
    t0 = time.monotonic()
    proc, peak = _peak("sweep", "sweep.yaml", "--quiet", "--out", str(tmp_path / "out"), env=tiny_env, cwd=tmp_path)
    took = time.monotonic() - t0

    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc)
    assert lines[0] == "sweep huge: 1000000 jobs", lines
    assert "more than --max-jobs 100000" in lines[1] and "--max-jobs 1000000" in lines[1]
    assert peak < baseline + 300 * 2**20, f"{peak / 2**20:.0f} MiB against {baseline / 2**20:.0f} MiB to validate"
    assert took < 200
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("axis, message", [
    ("5-2", "the range 5-2 runs backwards (from 5 down to 2); write it 2-5"),
    ("0-99999999999", "the range 0-99999999999 holds 100000000000 classes"),
    ("0-3,9-7", "the range 9-7 runs backwards"),
])
def test_a_wrong_range_says_what_is_wrong_with_the_range(axis, message, tmp_path):
    from pipeline_core.sweep.spec import load_sweep

    file = tiny_sweep(tmp_path)
    file.write_text(file.read_text().replace("0-3", axis))
    with pytest.raises(RecipeError) as info:
        load_sweep(file)
    assert str(info.value).startswith(f"{file}:4: the axis 'steps.1.target': {message}")
    assert "unknown class" not in str(info.value)
    with pytest.raises(RecipeError) as info:
        load_sweep(tiny_sweep(tmp_path / "o"), [f"target={axis}"])
    assert str(info.value).startswith(f"--axis target={axis}: the axis 'steps.1.target': {message}")


# -- 3. a file that is not a regular file is refused, never waited on; user text is text ---------


@pytest.fixture
def finished_run(tmp_path) -> Path:
    run_dir = tmp_path / "run"
    run_recipe_dict(tiny_recipe(iterations=3, batch=2, steps=[
        {"step": "init-noise", "size": 32}, {"step": "L1-loss", "target": [1, 2]},
        {"step": "gradient-step", "lr": 0.01}]), run_dir, registry=REGISTRY)
    assert (run_dir / "metrics.jsonl").is_file()
    return run_dir


@pytest.mark.parametrize("name", ["metrics.jsonl", "run.json", "evaluation.json"])
def test_report_refuses_a_fifo_instead_of_waiting_on_it(tiny_env, finished_run, name):
    (finished_run / name).unlink(missing_ok=True)
    os.mkfifo(finished_run / name)

    proc = pipeline("report", str(finished_run), env=tiny_env, timeout=120)  # a hang fails here, not for ever

    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and f"{finished_run / name} is a FIFO (named pipe), not a regular file" in lines[0]


def test_the_readers_never_wait_on_a_fifo(tmp_path):
    from pipeline_core.output.metrics import read_metrics
    from pipeline_core.output.report import _read_json
    from pipeline_core.regular import NotRegularFile, read_text

    os.mkfifo(tmp_path / "pipe")
    assert read_metrics(tmp_path / "pipe") == [] and _read_json(tmp_path / "pipe") is None
    with pytest.raises(NotRegularFile, match="is a FIFO"):
        read_text(tmp_path / "pipe")


@pytest.mark.parametrize("what", ["weights", "photo"])
def test_a_fifo_as_weights_or_photo_is_one_line_naming_it(what, in_process, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe")
    if what == "weights":
        recipe = tiny_recipe(model={"name": "tiny-test-model", "weights": "pipe"})
    else:
        recipe = tiny_recipe(steps=[{"step": "init-image", "images": "pipe"}, {"step": "L1-loss", "target": 3},
                                    {"step": "gradient-step", "lr": 0.01}])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert in_process(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    line = one_line(capsys)
    assert f"{tmp_path / 'pipe'}" in line and "a FIFO (named pipe), not a regular file" in line
    assert "r.yaml:" in line


MATH = "$\\frac{$ cat"  # a class name that mathtext cannot parse


@pytest.mark.slow
def test_a_class_name_with_dollars_is_drawn_as_text_and_the_report_is_written(tiny_env, tmp_path):
    names = [MATH if i == 1 else f"$x_{i}$ dog" for i in range(10)]
    recipe = tiny_recipe(iterations=3, batch=2, model={"name": "tiny-test-model", "categories": names}, steps=[
        {"step": "init-noise", "size": 32}, {"step": "L1-loss", "target": [1, 2]},
        {"step": "gradient-step", "lr": 0.01}])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))

    proc = pipeline("run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"), "--quiet", env=tiny_env)

    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "o" / "run.json").read_text())
    assert "report_warning" not in record and "report.html" in record["files"]
    page = (tmp_path / "o" / "report.html").read_text()
    assert "$\\frac{$ cat" in page and "$x_2$ dog" in page  # the legend says the names as they are
    (tmp_path / "o" / "report.html").unlink()
    proc = pipeline("report", str(tmp_path / "o"), env=tiny_env)
    assert proc.returncode == 0 and (tmp_path / "o" / "report.html").is_file(), proc.stderr


# -- 4. one line, and the right fix --------------------------------------------------------------


def test_a_nan_in_a_direction_says_nan_is_not_allowed(in_process, tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe()).replace(
        "- step: L1-loss\n  target: 3\n",
        "- step: direction\n  layer: features.2\n  direction: [.nan, 1, 1, 1, 1, 1, 1, 1]\n"))
    assert in_process(["validate", str(tmp_path / "r.yaml")]) == 2
    line = one_line(capsys)
    assert ("step 1 (direction): key 'direction': expected a finite number (item 0 of the list), got nan: NaN is "
            "not allowed") in line, line
    assert "expected a text or a list" not in line
    assert in_process(["validate", str(tmp_path / "r.yaml"), "--set",
                       "steps.1.direction=[1, .inf, 1, 1, 1, 1, 1, 1]"]) == 2
    assert "(item 1 of the list), got inf: infinity is not allowed" in one_line(capsys)


@pytest.mark.parametrize("number", ["9" * 5000, "0x" + "f" * 5000, "-" + "1" * 4400])
@pytest.mark.parametrize("key", ["iterations: 4", "seed: 0", "  target: 3"])
def test_a_five_thousand_digit_integer_is_one_line_naming_its_line(number, key, in_process, tmp_path, capsys):
    text = yaml.safe_dump(tiny_recipe())
    assert key in text
    lines = text.splitlines()
    line_no = next(i for i, line in enumerate(lines, 1) if line == key)
    (tmp_path / "r.yaml").write_text(text.replace(key, key.rsplit(" ", 1)[0] + " " + number))
    assert in_process(["validate", str(tmp_path / "r.yaml")]) == 2
    line = one_line(capsys)
    assert f"r.yaml:{line_no}: a number of" in line and "no setting takes a number that long" in line, line
    assert "set_int_max_str_digits" not in line and len(line) < 400
    assert f"a number of {4400 if number.startswith('-') else 5000 if number[1] != 'x' else 6050} digits" in line


def big_png(path: Path, side: int) -> Path:
    """A real, valid grey PNG of side x side pixels, written row by row (it never sits in memory)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * side
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_a_9800_px_photo_is_one_line_with_the_limit_before_it_takes_any_memory(tiny_env, tmp_path):
    big_png(tmp_path / "huge.png", 9800)
    recipe = tiny_recipe(steps=[{"step": "init-image", "images": "huge.png"}, {"step": "L1-loss", "target": 3},
                                {"step": "gradient-step", "lr": 0.01}])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(tiny_recipe()))

    _, baseline = _peak("validate", str(tmp_path / "small.yaml"), env=tiny_env, cwd=tmp_path)
    proc, peak = _peak("validate", str(tmp_path / "r.yaml"), env=tiny_env, cwd=tmp_path)

    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "DecompressionBomb" not in proc.stderr
    assert "huge.png is 9800x9800 pixels (96.0 megapixels), more than the 50 megapixels" in lines[0]
    assert "PIPELINE_MAX_PHOTO_PIXELS=" in lines[0] and "r.yaml:" in lines[0]
    # decoding it would take 9800 x 9800 x 3 bytes (275 MiB) and four times that as floats
    assert peak < baseline + 200 * 2**20, f"{peak / 2**20:.0f} MiB against {baseline / 2**20:.0f} MiB"


def test_the_photo_limit_is_raised_by_its_variable(monkeypatch, tmp_path):
    from PIL import Image

    from pipeline_plugins.photo_files import load_photo

    Image.new("RGB", (300, 200), (10, 20, 30)).save(tmp_path / "p.png")
    monkeypatch.setenv("PIPELINE_MAX_PHOTO_PIXELS", "50000")
    with pytest.raises(RecipeError, match="300x200 pixels .* more than the 0.05 megapixels"):
        load_photo(tmp_path / "p.png")
    monkeypatch.setenv("PIPELINE_MAX_PHOTO_PIXELS", "60000")
    assert tuple(load_photo(tmp_path / "p.png").shape) == (3, 200, 300)


def test_a_corrupt_file_in_torchs_weights_cache_is_named_with_how_to_fix_it(monkeypatch, tmp_path, capsys):
    import torch

    from pipeline_core.host.manager import build_registry
    from pipeline_plugins.torchvision_models import _cache_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = _cache_path("mobilenet_v2")
    assert str(cached).startswith(str(tmp_path)), torch.hub.get_dir()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"garbage" * 1000)
    registry = build_registry()
    monkeypatch.setattr(cli, "_registry", lambda quiet=False: registry)
    write_recipe(tmp_path, "r.yaml", model={"name": "mobilenet_v2"}, iterations=1)

    code = cli.main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"), "--quiet"])

    assert code in (1, 2)
    line = one_line(capsys)
    assert f"the cached weights of mobilenet_v2 at {cached} cannot be read" in line
    assert f"delete it (rm {cached})" in line
    assert cached.read_bytes() == b"garbage" * 1000  # told, not deleted behind the user's back


#: a sitecustomize that sends its own process a SIGINT the moment a given module starts importing
KILL_AT_IMPORT = '''
import os, signal, sys

class _KillAt:
    def find_spec(self, name, path=None, target=None):
        if name == os.environ.get("PIPELINE_TEST_KILL_AT"):
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, _KillAt())
'''


@pytest.mark.parametrize("module", ["pipeline_core.commands.cli", "rich.console", "argparse"])
def test_ctrl_c_while_the_command_is_importing_is_one_line_and_130(module, tiny_env, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(KILL_AT_IMPORT)
    env = {**tiny_env, "PYTHONPATH": os.pathsep.join([str(tmp_path), tiny_env["PYTHONPATH"]]),
           "PIPELINE_TEST_KILL_AT": module}
    proc = pipeline("--version", env=env, timeout=120)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.strip() == "interrupted (Ctrl-C)", proc.stderr


# -- 5. layers reads the weights it is given -------------------------------------------------------


@pytest.mark.parametrize("what", ["text", "other"])
def test_layers_with_a_text_file_or_another_models_weights_fails_in_one_line(what, mobilenet_path, tmp_path):
    import torch
    import torchvision

    if what == "text":
        (tmp_path / "w.pth").write_text("these are not weights\n")
        expected = "is not a PyTorch state dict (the file is corrupt, cut short or not a PyTorch file)"
    else:
        torch.save(torchvision.models.squeezenet1_1(num_classes=4).state_dict(), tmp_path / "w.pth")
        expected = "does not fit torchvision's mobilenet_v2"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = pipeline("layers", f"mobilenet_v2,weights={tmp_path / 'w.pth'}", "--match", "features.18", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and f"{tmp_path / 'w.pth'}" in lines[0] and expected in lines[0], lines
    assert not proc.stdout.strip()
    good = pipeline("layers", f"mobilenet_v2,weights={mobilenet_path}", "--match", "features.18.0", env=env)
    assert good.returncode == 0 and "features.18.0" in good.stdout, good.stderr


def test_only_a_real_run_record_moves_the_default_folder(tmp_path):
    from pipeline_core.run.confine import outputs_root

    (tmp_path / "run.json").write_text('{"a": "file that happens to be called run.json"}')
    (tmp_path / "project").mkdir()
    assert outputs_root(tmp_path / "project") == tmp_path / "project" / "runs"
    run_dir = tmp_path / "project" / "runs" / "castle"
    run_recipe_dict(tiny_recipe(iterations=1), run_dir, registry=REGISTRY)
    assert outputs_root(run_dir / "images") == tmp_path / "project" / "runs"


def test_a_resume_whose_images_folder_became_a_link_is_refused_before_it_runs(monkeypatch, tmp_path, capsys):
    from test_bad_input import StopAtPlugin, paused_run

    registry = make_registry(StopAtPlugin())
    monkeypatch.setattr(cli, "_registry", lambda quiet=False: registry)
    run_dir = paused_run(tmp_path / "run", registry, at=1)
    mine = users_pictures(tmp_path / "Pictures")
    import shutil

    shutil.rmtree(run_dir / "images")
    (run_dir / "images").symlink_to(tmp_path / "Pictures", target_is_directory=True)

    assert cli.main(["run", "--resume", str(run_dir), "--quiet"]) == 2
    line = one_line(capsys)
    assert "would lead out of" in line and "remove the link" in line
    unchanged(tmp_path / "Pictures", mine)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["iterations_done"] == 2  # nothing ran: the checkpoint stays
    assert (run_dir / "checkpoint.pt").is_file()
