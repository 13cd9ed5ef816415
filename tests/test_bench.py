"""``pipeline bench`` and benchmarks/bench.py: they run, print every figure, and compare like with like.

No assertion here is about speed (timings on a shared CPU are noise); what is checked is that
the figures exist and that the engine and the bare loop did the same arithmetic: on the CPU
their final images must be identical.
"""

from __future__ import annotations

import json
import mmap
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import MOBILENET, ROOT
from pipeline_core.commands.bench import BenchReport, bench, compare_images
from pipeline_core.commands.measure import MemoryWatch
from pipeline_core.run import memory
from pipeline_core.testing import tiny_recipe

BENCH_RECIPE = ROOT / "benchmarks" / "mobilenet_cpu.yaml"


def _recipe_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(**changes), sort_keys=False), encoding="utf-8")
    return path


def test_bench_on_the_tiny_model_reports_every_figure_and_identical_images(tmp_path, registry):
    recipe = _recipe_file(
        tmp_path,
        steps=[
            {"step": "init-noise", "scale": 0.04, "offset": 0.5, "size": 40},
            {"step": "color-jitter", "brightness": 0.1, "contrast": 0.1},
            {"step": "blur", "kernel": 3, "until": 0.5},
            {"step": "interpolate", "sizes": [40, 32], "mode": "bilinear"},
            {"step": "L1-loss", "target": [1, 2]},
            {"step": "adam", "lr": 0.05},
        ],
        batch=2,
        output={"video": True, "frame_every": 1},
    )
    echoed: list[str] = []
    report = bench(recipe, registry, iterations=2, warmup=1, rounds=2, echo=echoed.append)
    assert isinstance(report, BenchReport)
    assert len(report.engine) == len(report.bare) == 2
    assert report.batch == 2 and report.iterations == 2 and report.video and report.frame_every == 1
    for m in report.engine + report.bare:
        assert m.iterations == 2 and m.batch == 2 and m.seconds > 0 and m.image_iterations_per_second > 0
        assert m.peak_rss_bytes and m.peak_rss_bytes > 0 and m.cpu_seconds is not None
    engine = report.engine[0]
    assert engine.frames == 3  # the first image, then one per iteration
    assert engine.encode_seconds is not None and engine.encode_cpu_seconds is not None
    assert engine.encoder_process_cpu_seconds is not None
    assert report.ratio and report.ratio > 0 and report.memory_ratio and report.memory_ratio > 0
    # same steps, same seeds, same arithmetic: colour jitter's draws, Adam's moments, the resize cycle
    assert report.agreement is not None and report.agreement.identical
    assert [line.split(":")[0] for line in echoed] == ["warm-up", "round 1/2", "round 1/2", "round 2/2", "round 2/2"]

    text = "\n".join(report.lines())
    for figure in ("image-iterations/s", "peak RSS", "ratio engine/bare", "writer thread", "ffmpeg",
                   "final images: identical", "machine:"):
        assert figure in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ratio"] == pytest.approx(report.ratio)
    assert data["rounds"] == 2 and len(data["rounds_detail"]["engine"]) == 2
    assert data["machine"]["torch"] == torch.__version__


def test_bench_keeps_the_recipe_iterations_when_asked_and_honours_video_off(tmp_path, registry):
    recipe = _recipe_file(tmp_path, iterations=3)
    report = bench(recipe, registry, iterations=None, warmup=0, rounds=1)
    assert report.iterations == 3 and not report.video and report.frame_every is None
    assert report.engine[0].frames == 0
    assert report.agreement is not None and report.agreement.identical


def test_image_comparison_counts_differences():
    a = np.zeros((1, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 1, 1, 0] = 3
    agreement = compare_images(a, b)
    assert (agreement.max_difference, agreement.values_differing, agreement.values) == (3, 1, 48)
    assert not agreement.identical and "3/255" in agreement.describe()


def test_the_memory_figures_are_read_on_every_system():
    rss, free, lifetime = memory.current_rss(), memory.available_bytes(), memory.lifetime_peak()
    assert rss is not None and free is not None and lifetime is not None
    assert rss > 2**20 and lifetime > 2**20 and free > 0  # bytes, not KiB or pages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the resettable peak-RSS mark is Linux's")
def test_memory_watch_sees_a_peak_inside_the_block_only():
    with MemoryWatch(torch.device("cpu")) as before:
        pass
    with MemoryWatch(torch.device("cpu")) as during:
        # 64 MiB of fresh pages, touched (malloc could hand back memory that is already resident)
        block = mmap.mmap(-1, 64 * 2**20)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
        block.close()
    assert during.exact and during.peak - during.before >= 60 * 2**20
    assert before.peak - before.before < 60 * 2**20


# -- the command line and the benchmark script, on the real MobileNetV2 ----------------------------------


@pytest.mark.slow
def test_pipeline_bench_command_prints_the_figures_and_writes_json(cli, mobilenet_path, tmp_path):
    out = tmp_path / "bench.json"
    proc = cli("bench", str(BENCH_RECIPE), "--set", f"model.weights={mobilenet_path}", "--iterations", "2",
               "--warmup", "0", "--rounds", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for figure in ("image-iterations/s", "ratio engine/bare", "peak RSS", "frames:", "starting the encoder",
                   "final images: identical"):
        assert figure in proc.stdout
    data = json.loads(out.read_text())
    assert data["batch"] == 4 and data["iterations"] == 2 and data["device"] == "cpu"
    assert data["engine_image_iterations_per_second"] > 0 and data["bare_image_iterations_per_second"] > 0
    assert data["images"]["identical"]


def test_pipeline_bench_rejects_a_bad_count_in_one_line(cli, tmp_path):
    proc = cli("bench", str(BENCH_RECIPE), "--iterations", "0")
    assert proc.returncode == 2
    assert "--iterations" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_benchmark_script_hand_written_loop_matches_the_engine(mobilenet_path, tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench as script
    finally:
        sys.path.pop(0)
    out = tmp_path / "cpu.json"
    assert script.main(["--iterations", "2", "--warmup", "0", "--rounds", "1", "--set", f"model.weights={MOBILENET}",
                        "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["images"]["identical"]  # the hand-written loop and the engine did the same arithmetic
    assert data["ratio"] > 0 and data["encoder_process_cpu_seconds"] is not None


def test_gpu_suite_recipes_are_valid_and_fit_the_hand_written_loop(tmp_path, registry):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench as script
    finally:
        sys.path.pop(0)
    from pipeline_core.recipe.loader import load_recipe

    weights = script._inception_weights(tmp_path)
    for batch, precision in ((1, "fp32"), (64, "bf16")):
        path = script.gpu_recipe(tmp_path, weights, batch, precision, iterations=50, frame_every=10, tile=128)
        recipe = load_recipe(path, registry)
        assert recipe.plan.batch == batch and recipe.model_info.size == 299 and recipe.model_spec.name == "inception_v3"
        perf = recipe.model.performance
        assert perf.precision == precision and perf.channels_last == (precision != "fp32")
        assert recipe.model.output.video and recipe.model.output.frame_every == 10
        spec = script.LoopSpec.of(recipe)
        assert spec.noise_shape == (299, 299) and spec.blur is not None and len(spec.targets) == batch
