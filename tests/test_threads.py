"""The thread default (the free cores) and --threads on every command that computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline_core.commands import cli
from pipeline_core.run import threads
from pipeline_core.testing import make_registry, tiny_recipe

REGISTRY = make_registry()


@pytest.fixture
def no_env(monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    threads.default_threads.cache_clear()
    yield
    threads.default_threads.cache_clear()


@pytest.mark.parametrize("cores, load, expected", [
    (4, 0.0, 4), (4, 0.4, 4), (4, 1.0, 3), (4, 1.6, 2), (4, 3.6, 1), (4, 40.0, 1), (2, 1.0, 1), (1, 0.0, 1),
])
def test_the_default_is_the_cores_other_work_leaves_free(monkeypatch, no_env, cores, load, expected):
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(threads, "machine_load", lambda: load)
    assert threads.default_threads() == expected


def test_never_more_than_the_cores_this_process_may_use(monkeypatch, no_env):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 64)  # a big machine, idle ...
    monkeypatch.setattr(threads, "machine_load", lambda: 0.0)
    monkeypatch.setattr(threads, "usable_cores", lambda: 3)  # ... of which this process may use 3
    assert threads.default_threads() == 3


def test_an_explicit_omp_num_threads_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(threads, "machine_load", lambda: 0.0)
    threads.default_threads.cache_clear()
    try:
        assert threads.default_threads() == torch.get_num_threads()
    finally:
        threads.default_threads.cache_clear()


def test_the_machine_load_counts_work_running_now():
    assert threads.machine_load() >= 0.0
    assert 1 <= threads.free_cores() <= threads.usable_cores()


def _recipe(folder: Path) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(iterations=2)), encoding="utf-8")
    return path


def test_a_run_records_the_default_and_a_replay_keeps_it_whatever_the_load(in_process, tmp_path, monkeypatch,
                                                                            no_env):
    monkeypatch.setattr(threads, "free_cores", lambda: 2)
    assert in_process(["run", str(_recipe(tmp_path)), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["threads"] == 2 and record["recipe"]["performance"]["threads"] == 2
    threads.default_threads.cache_clear()
    monkeypatch.setattr(threads, "free_cores", lambda: 1)  # busier now: the replay still uses 2
    assert in_process(["run", str(tmp_path / "a" / "run.json"), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    replay = json.loads((tmp_path / "b" / "run.json").read_text())
    assert replay["threads"] == 2
    name = record["images"][0]["file"]
    assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()


def test_threads_option_sets_performance_threads(in_process, tmp_path, no_env):
    before = torch.get_num_threads()
    assert in_process(["run", str(_recipe(tmp_path)), "--threads", "1", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["threads"] == 1 and record["recipe"]["performance"]["threads"] == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("command", [
    ["run", "r.yaml"], ["sweep", "s.yaml"], ["bench", "r.yaml"], ["evaluate", "RUN", "--model", "m"],
    ["layers", "mobilenet_v2"],
])
def test_every_command_that_computes_takes_threads(command):
    args = cli.build_parser().parse_args([*command, "--threads", "3"])
    assert args.threads == 3
    if command[0] in ("run", "sweep", "bench"):
        sets = cli._overrides(args)
        assert "performance.threads=3" in sets
        assert next(s for s in sets if s == "performance.threads=3").shown == "--threads 3"


@pytest.mark.parametrize("value, message", [("0", "must be at least 1"), ("2000", "at most 1024"),
                                            ("two", "expected a whole number")])
def test_a_bad_thread_count_is_one_line(in_process, capsys, value, message):
    assert in_process(["run", "r.yaml", "--threads", value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--threads" in err and message in err


def test_resume_refuses_another_thread_count(in_process, tmp_path, capsys):
    (tmp_path / "run.json").write_text("{}")
    assert in_process(["run", "--resume", str(tmp_path), "--threads", "1"]) == 2
    assert "--threads" in capsys.readouterr().err
