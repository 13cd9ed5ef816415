"""The frame path off the hot loop: cheap conversions that keep their meaning, exact snapshots,
an encoder that yields to the loop, and a progress display that refreshes at a fixed rate."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_core.run import progress as progress_module
from pipeline_core.output.frames import MAX_FRAME_SIDE, auto_tile, compose, to_uint8
from pipeline_core.run.progress import Progress
from pipeline_core.output.pump import FramePump
from pipeline_core.writers import Writer


def _reference_uint8(images: torch.Tensor) -> np.ndarray:
    """The definition: clamp to [0, 1], scale to 255, round half to even, as PyTorch does it."""
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("seed", range(4))
def test_to_uint8_matches_the_pytorch_definition_bit_for_bit(seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(3, 3, 17, 23, generator=g) * 1.6 - 0.3  # values outside [0, 1] too
    assert np.array_equal(to_uint8(images), _reference_uint8(images))


def test_to_uint8_rounds_halves_to_even_and_maps_non_finite_values_to_bounds():
    levels = torch.tensor([0.5, 1.5, 2.5, 254.5]) / 255
    images = levels.view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    assert np.array_equal(to_uint8(images), _reference_uint8(images))
    odd = torch.tensor([float("nan"), float("inf"), -float("inf")]).view(1, 3, 1, 1)
    assert to_uint8(odd).reshape(-1).tolist() == [0, 255, 0]


def test_to_uint8_accepts_other_dtypes_and_leaves_its_input_alone():
    images = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    before = images.clone()
    out = to_uint8(images)
    assert out.dtype == np.uint8 and out.shape == (1, 4, 4, 3)
    assert torch.equal(images, before)


def test_compose_scales_images_to_the_tile_and_keeps_the_layout():
    images = torch.rand(2, 3, 30, 40)
    frame = compose(images, torch.randn(2, 10), [[1], [2]], tile=64, panels=True)
    # each image scaled so its longer side is 64 (48 x 64), with a panel beside it, even sides
    cols = 1  # two images with panels: about square
    assert frame.shape[1] == cols * (2 * 64 + 2) + (cols + 1) * 2
    assert frame.shape[0] == 2 * 48 + 3 * 2
    assert frame.dtype == np.uint8 and frame.flags["C_CONTIGUOUS"]




@pytest.mark.parametrize("tile", [None, 24, 50])
def test_compose_puts_each_image_s_pixels_in_its_cell(tile):
    """The grid holds exactly the pictures to_uint8 makes (resized as an RGB picture is), in batch order."""
    from PIL import Image

    images = torch.rand(3, 3, 20, 30) * 1.2 - 0.1
    frame = compose(images, None, tile=tile, columns=2, pad=2, panels=False)
    pics = to_uint8(images)
    for i, pic in enumerate(pics):
        if tile is not None:
            w, h = tile, round(20 * tile / 30)
            pic = np.asarray(Image.fromarray(np.ascontiguousarray(pic)).resize((w, h), Image.Resampling.BILINEAR))
        h, w = pic.shape[:2]
        r, c = divmod(i, 2)
        y, x = 2 + r * (h + 2), 2 + c * (w + 2)
        assert np.array_equal(frame[y: y + h, x: x + w], pic)

@pytest.mark.parametrize("n, side, panels", [(60, 224, True), (400, 224, False), (1000, 299, True), (7, 512, True)])
def test_auto_tile_keeps_big_batches_within_the_frame_budget(n, side, panels):
    tile = auto_tile(n, side, panels)
    assert tile is not None and 16 <= tile < side
    frame = compose(torch.rand(n, 3, 8, 8), torch.randn(n, 5) if panels else None, tile=tile, panels=panels)
    assert max(frame.shape[:2]) <= MAX_FRAME_SIDE
    # and the tile is the largest that fits: one pixel more would overflow
    bigger = compose(torch.rand(n, 3, 8, 8), torch.randn(n, 5) if panels else None, tile=tile + 1, panels=panels)
    assert max(bigger.shape[:2]) > MAX_FRAME_SIDE


def test_auto_tile_leaves_small_batches_at_their_own_size():
    assert auto_tile(4, 224, True) is None
    assert auto_tile(16, 128, False) is None
    # a batch too big even for the smallest tile gets the smallest tile, not zero
    assert auto_tile(100_000, 224, True) == 16

class _Keep(Writer):
    name = "keep"

    def __init__(self):
        super().__init__(None, None)
        self.frames: list[tuple[int, torch.Tensor]] = []
        self.niceness: list[int] = []

    def frame(self, iteration, images, logits):
        self.frames.append((iteration, images))
        if hasattr(os, "getpriority"):
            self.niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))


def test_snapshot_is_a_copy_the_loop_can_keep_changing():
    writer = _Keep()
    pump = FramePump([writer])
    image = torch.zeros(1, 3, 4, 4)
    pump.snapshot(1, image, None)
    image.add_(1)  # the loop's next update, in place
    pump.snapshot(2, image, torch.ones(1, 5))
    pump.close("completed")
    assert [i for i, _ in writer.frames] == [1, 2]
    assert writer.frames[0][1].max() == 0 and writer.frames[1][1].min() == 1
    assert pump.frames == 2 and pump.encode_cpu_seconds >= 0


def test_without_writers_nothing_is_copied_or_counted():
    pump = FramePump([])
    pump.snapshot(1, torch.zeros(1, 3, 4, 4), None)
    pump.close("completed")
    assert pump.frames == 0


class _Slow(_Keep):
    def frame(self, iteration, images, logits):
        import time

        time.sleep(0.2)
        super().frame(iteration, images, logits)


def test_wait_returns_once_the_queued_frames_are_written():
    writer = _Slow()
    pump = FramePump([writer])
    pump.snapshot(0, torch.zeros(1, 3, 4, 4), None)
    waiter = threading.Thread(target=pump.wait, daemon=True)
    waiter.start()
    waiter.join(5)
    assert not waiter.is_alive()  # wait() returned
    assert [i for i, _ in writer.frames] == [0]  # and only once the frame was written (the writer sleeps 0.2 s)
    pump.close("completed")


def test_wait_does_not_hang_when_the_writer_thread_is_gone():
    pump = FramePump([_Keep()])
    pump.close("completed")  # the thread has ended
    finished = threading.Event()
    waiter = threading.Thread(target=lambda: (pump.wait(), finished.set()), daemon=True)
    waiter.start()
    assert finished.wait(5)


@pytest.fixture
def encoders_opened(monkeypatch) -> list[list[str]]:
    """The ffmpeg command of every video encoder started while the test runs, in order."""
    from pipeline_core.output import video

    opened: list[list[str]] = []
    real = video.H264Pipe.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        opened.append(self.command)

    monkeypatch.setattr(video.H264Pipe, "__init__", spy)
    return opened


def test_the_encoder_starts_before_the_loop_clock(tmp_path, monkeypatch, encoders_opened):
    """ffmpeg's start-up is set-up time, like loading the model: the loop does not share its cores with it."""
    import json

    from pipeline_core.run.faults import NumericGuard
    from pipeline_core.testing import run_recipe_dict, tiny_recipe

    opened = encoders_opened

    at_loop_start = []
    real_keep = NumericGuard.keep

    def keep(self, ctx):  # first taken just after the loop's clock starts
        at_loop_start.append(len(opened))
        return real_keep(self, ctx)

    monkeypatch.setattr(NumericGuard, "keep", keep)
    run_recipe_dict(tiny_recipe(iterations=3, output={"video": True}), tmp_path / "run")
    timings = json.loads((tmp_path / "run" / "run.json").read_text())["timings"]
    assert timings["video_start_seconds"] >= 0
    assert len(opened) == 1 and at_loop_start[0] == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_writer_thread_runs_nicer_than_the_loop():
    writer = _Keep()
    pump = FramePump([writer])
    pump.snapshot(1, torch.zeros(1, 3, 4, 4), None)
    pump.close("completed")
    loop = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert writer.niceness and writer.niceness[0] > loop or loop == 19


def test_progress_is_due_at_a_fixed_rate_not_every_iteration(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    p = Progress()
    due = []
    for _ in range(100):  # 100 iterations of 10 ms each: 1 s
        due.append(p.due())
        clock[0] += 0.01
    assert sum(due) == 2  # at 0 s and 0.5 s (the interval), never per iteration


def _counting_bar(stale_after: float):
    import io

    from rich.console import Console

    from pipeline_core.run.progress import BarProgress

    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    bar = BarProgress(console)
    bar.stale_after = stale_after
    draws = []
    real = bar.bar.refresh

    def refresh():
        draws.append(threading.current_thread().name)
        real()

    bar.bar.refresh = refresh
    return bar, console, draws


def test_the_bar_is_redrawn_by_the_loop_while_it_reports():
    """A refresh thread took the interpreter lock and a core from the loop four times a second."""
    import time

    bar, console, draws = _counting_bar(stale_after=2.0)  # the watchdog looks at 1 s and finds a recent draw
    bar.start(10, "demo")
    bar.update(7, 0.125, 0.5)
    assert "7/10" in console.file.getvalue() and "0.125" in console.file.getvalue()  # drawn at once
    for i in range(12):  # a loop reporting every 0.1 s for 1.2 s: the watchdog never needs to draw
        time.sleep(0.1)
        bar.update(i % 10, 0.1, None)
    bar.stop()
    assert "progress-watchdog" not in draws


def test_the_bar_keeps_moving_through_a_slow_iteration():
    import time

    bar, console, draws = _counting_bar(stale_after=0.2)
    bar.start(10, "demo")
    time.sleep(1.3)  # one slow iteration, no report from the loop
    bar.stop()
    assert draws.count("progress-watchdog") >= 2
    assert not [t for t in threading.enumerate() if t.name == "progress-watchdog"]


def test_the_last_iteration_always_reports(tmp_path, registry):
    """The bar ends on the run's last numbers, however the 4 Hz clock fell."""
    from pipeline_core.run.engine import Run
    from pipeline_core.recipe.loader import load_recipe
    from pipeline_core.testing import tiny_recipe

    class Never(Progress):
        def __init__(self):
            super().__init__()
            self.updates = []

        def due(self):
            return False

        def update(self, done, loss, prob):
            self.updates.append(done)

    import yaml

    recipe = tiny_recipe(iterations=5)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    bar = Never()
    result = Run(load_recipe(path, registry), registry, tmp_path / "run", bar, device="cpu").execute()
    assert result.status == "completed" and bar.updates == [5]


def test_shrink_scales_the_longer_side_without_autograd():
    from pipeline_core.output.pump import shrink

    images = torch.rand(2, 3, 299, 200, requires_grad=True)
    small = shrink(images, 128)
    assert small.shape == (2, 3, 128, 86) and not small.requires_grad
    expected = torch.nn.functional.interpolate(images.detach(), size=(128, 86), mode="bilinear", antialias=True)
    torch.testing.assert_close(small, expected)
    assert shrink(images, 400) is images  # never enlarged


def test_frames_are_shrunk_on_the_device_only_when_every_writer_accepts_it(tmp_path):
    from pipeline_core.output.video import VideoWriter
    from pipeline_core.writers import FrameInfo

    def info(tile):
        return FrameInfo(run_dir=tmp_path, batch=1, iterations=1, categories=["a"], targets=[[0]], fps=5, tile=tile,
                         columns=None)

    with_tile = FramePump([VideoWriter(None, info(128))])
    assert with_tile.max_side == 128
    full = FramePump([VideoWriter(None, info(128)), _Keep()])  # a writer that wants full resolution
    assert full.max_side is None
    no_tile = FramePump([VideoWriter(None, info(None))])
    assert no_tile.max_side is None
    for pump in (with_tile, full, no_tile):
        pump.close("completed")


def test_a_cpu_run_encodes_with_one_x264_thread(tmp_path, encoders_opened):
    """On the CPU the cores belong to the model: the encoder gets one thread, not x264's ~1.5 per core."""
    from pipeline_core.testing import run_recipe_dict, tiny_recipe

    seen = encoders_opened
    run_recipe_dict(tiny_recipe(iterations=2, output={"video": True}), tmp_path / "run")
    assert len(seen) == 1
    command = seen[0]
    assert command[command.index("-threads") + 1] == "1"
    assert (tmp_path / "run" / "video.mp4").stat().st_size > 0


def test_the_pipe_to_the_encoder_is_widened(tmp_path):
    """A frame crosses in one or two writes, not sixteen 64 KiB ones that each wake ffmpeg and the writer."""
    if not sys.platform.startswith("linux"):
        pytest.skip("pipe sizes are a Linux setting")
    import fcntl

    from pipeline_core.output.video import PIPE_BYTES, H264Pipe

    limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    encoder = H264Pipe(tmp_path / "v.mp4", (640, 480), fps=10)
    try:
        size = fcntl.fcntl(encoder._proc.stdin.fileno(), getattr(fcntl, "F_GETPIPE_SZ", 1032))
        assert size >= min(PIPE_BYTES, limit, 640 * 480 * 3) > 65536
        encoder.write(np.zeros((480, 640, 3), np.uint8))
    finally:
        encoder.close()
    assert (tmp_path / "v.mp4").stat().st_size > 0
    small = H264Pipe(tmp_path / "small.mp4", (32, 24), fps=10)  # a small frame keeps the default, not less
    try:
        assert fcntl.fcntl(small._proc.stdin.fileno(), getattr(fcntl, "F_GETPIPE_SZ", 1032)) >= 65536
    finally:
        small.close()


def test_an_encoder_failure_says_what_ffmpeg_said(tmp_path):
    from pipeline_core.output.video import H264Pipe

    encoder = H264Pipe(tmp_path / "missing-folder" / "v.mp4", (64, 48), fps=10)
    with pytest.raises(RuntimeError, match="video encoder") as info:
        try:
            encoder.write(np.zeros((48, 64, 3), np.uint8))
        finally:
            encoder.close()
    assert "missing-folder" in str(info.value) and "No such file" in str(info.value)  # the file, and ffmpeg's words


@pytest.mark.slow
def test_a_run_with_a_big_batch_makes_video_frames_within_the_budget(tmp_path):
    import imageio_ffmpeg
    from PIL import Image

    from pipeline_core.testing import run_recipe_dict, tiny_recipe

    run_recipe_dict(tiny_recipe(iterations=1, batch=2000, output={"video": True}), tmp_path / "run")
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "run" / "video.mp4"))
    width, height = next(reader)["size"]
    reader.close()
    assert max(width, height) <= MAX_FRAME_SIDE
    # without the automatic tile, 2000 images of 32 px with their panels need about 2200 px
    assert max(compose(torch.zeros(2000, 3, 32, 32), torch.zeros(2000, 10), panels=True).shape[:2]) > MAX_FRAME_SIDE
    with Image.open(tmp_path / "run" / "images" / "grid.png") as grid:
        assert max(grid.size) <= 8192
