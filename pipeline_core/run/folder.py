"""A run folder's life: run.json from the first moment, the writers, checkpoints, and the end.

The promise of a run folder is that however the run ends (completed, failed, interrupted, a
second Ctrl-C) it holds a playable video of what happened, the images so far and a record
that says what happened. Everything that keeps that promise is here, apart from the loop,
so that changing how a run ends never means reading the iteration.

Besides those, the folder gets metrics.jsonl (the numbers at the progress display's cadence,
:mod:`pipeline_core.output.metrics`) and report.html, a page that shows all of it
(:mod:`pipeline_core.output.report`), written at the end and at checkpoints. The report is a
view of the other files: failing to write it is a warning in run.json, never a failed run.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline_core.context import RunContext
from pipeline_core.output.frames import MAX_GRID_SIDE, auto_tile, compose, frame_box, to_uint8
from pipeline_core.output.metrics import FILE as METRICS_FILE, MetricsLog
from pipeline_core.output.pump import FramePump
from pipeline_core.output.video import VideoWriter
from pipeline_core.recipe.loader import Recipe
from pipeline_core.registry import Registry
from pipeline_core.run import confine
from pipeline_core.run.checkpoint import Checkpoint, join_segments, save_checkpoint, trim_video
from pipeline_core.run.record import RunRecord, check_free_space, new_run_id, save_png, versions
from pipeline_core.run.faults import step_label
from pipeline_core.step import Step, StepKind
from pipeline_core.writers import FrameInfo, Writer

REPORT_FILE = "report.html"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "image"


def primary_targets(targets: list[list[dict[str, Any]]]) -> list[int | None]:
    """Per image, the class whose probability is shown and recorded: the final target (of a blend,
    the one with the largest final weight); None for an image no objective aims at a class."""
    return [max(t, key=lambda d: d.get("final_weight", d.get("weight", 1.0)))["index"] if t else None
            for t in targets]


def determinism(device: torch.device, deterministic: bool) -> tuple[bool, str]:
    """Whether a replay gives the same bytes, and under which conditions (for run.json)."""
    if device.type == "cpu":
        return True, ("bitwise repeatable on the CPU with the same PyTorch version, CPU kind and thread count "
                      "(recipe.performance.threads holds it, so a replay uses the same)")
    if device.type == "cuda" and deterministic:
        return True, ("deterministic GPU kernels were asked for (cuDNN deterministic, CUBLAS_WORKSPACE_CONFIG); "
                      "repeatable on the same GPU model, driver and PyTorch version, except for the operations "
                      "listed under determinism_warnings, which have no deterministic GPU kernel")
    return False, (f"{device.type.upper()} kernels (convolution and interpolation backward, grid sampling) "
                   "are not bitwise deterministic, so a replay differs in the last bits; set "
                   "performance.deterministic: true for repeatable GPU runs (somewhat slower)")


class RunFolder:
    """The files of one run: run.json, the video (in segments across resumes), checkpoints, images."""

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device, targets: list[list[dict[str, Any]]],
                 resume: Checkpoint | None = None, labels: list[str | None] | None = None):
        self.recipe = recipe
        self.run_dir = run_dir
        self.device = device
        self.targets = targets
        #: per image, what names its PNG when no class is aimed at (a layer objective's words)
        self.labels = labels or [None] * len(targets)
        self.resume = resume
        #: which video segment this run writes: 0 is video.mp4, each resume adds one
        self.segment = resume.segment + 1 if resume is not None else 0
        #: what went wrong at the end without failing the run, for its message
        self.notes: list[str] = []
        self.record = RunRecord(run_dir, self._base_record())
        self.metrics: MetricsLog | None = None
        #: when a checkpoint last wrote the report, and how long that took (it is kept rare)
        self._report_at, self._report_cost = 0.0, 0.0
        if resume is not None:
            self.record.started -= resume.wall_seconds
            self._carry_over()

    # -- the start -------------------------------------------------------------------------
    def _base_record(self) -> dict[str, Any]:
        recipe, spec, info = self.recipe, self.recipe.model_spec, self.recipe.model_info
        deterministic, note = determinism(self.device, recipe.model.performance.deterministic)
        resolved = recipe.resolved()
        resolved.setdefault("performance", {})["threads"] = torch.get_num_threads()
        source = Path(recipe.source.file)
        if spec.weights:
            weights = str(spec.weights)
        elif spec.kwargs.get("pretrained") is False:
            weights = "random (model.kwargs.pretrained: false)"
        else:  # the name's own: torchvision's ImageNet weights, timm's pretrained ones, a plugin's
            weights = "timm pretrained" if spec.name.startswith("timm:") else "torchvision default"
        model: dict[str, Any] = {"name": spec.name, "weights": weights,
                                 "mean": list(info.mean), "std": list(info.std), "size": info.size}
        if recipe.ensemble:  # the picture is the ensemble's: every member, as the recipe names it
            model["ensemble"] = list(recipe.model.model.ensemble)
        if recipe.model_note is not None:  # lent from Python: no file or name rebuilds it
            model["weights"] = "in memory"
            model["in_memory"] = recipe.model_note
        return {
            "status": "running",
            # what a checkpoint must carry to be resumed under this record (a resume keeps it)
            "run_id": self.resume.run_id if self.resume is not None else new_run_id(),
            "recipe_file": str(source.resolve()) if source.exists() else recipe.source.file,
            "recipe": resolved,
            "seed": recipe.plan.seed,
            "device": str(self.device),
            "deterministic": deterministic,
            "determinism_note": note,
            "threads": torch.get_num_threads(),
            "versions": versions(),
            "iterations": recipe.plan.iterations,
            "iterations_done": 0,
            "batch": recipe.plan.batch,
            "model": model,
        }

    def _carry_over(self) -> None:
        """A resumed run keeps its history: the original recipe file and every earlier resume."""
        assert self.resume is not None
        try:
            before = json.loads((self.run_dir / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = {}
        if not isinstance(before, dict):
            before = {}
        data = self.record.data
        if before.get("recipe_file"):
            data["recipe_file"] = before["recipe_file"]
        earlier = before.get("resumed") if isinstance(before.get("resumed"), list) else []
        data["resumed"] = [*earlier, {"from_iteration": self.resume.iteration, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
        # the checkpoint resumed from stays until a newer one replaces it
        data["checkpoint"] = {"file": "checkpoint.pt", "iteration": self.resume.iteration}

    def check_space(self, ctx: RunContext) -> None:
        """Refuse to start when the run folder's disk cannot take the outputs (rough upper bound), or
        when its images would be written through a link out of it (found now, not at the end)."""
        assert ctx.param is not None
        confine.inside(self.run_dir, "images")
        out, plan = self.recipe.model.output, self.recipe.plan
        pixels = ctx.param.image().numel()
        state = sum(v.numel() for v in ctx.param.state_dict().values())
        checkpoint = (pixels + 3 * state) * 4 if out.checkpoint_every or plan.iterations > 1 else 0
        frames = (1 + plan.iterations // out.frame_every) if out.video else 0
        need = 2 * checkpoint + 2 * pixels + frames * pixels // 2 + (1 << 20)
        check_free_space(self.run_dir, need)

    def start_metrics(self, primary: "torch.Tensor | None") -> MetricsLog:
        """metrics.jsonl, from the start or (resumed) from the checkpoint's iteration on."""
        self.metrics = MetricsLog(self.run_dir / METRICS_FILE, primary, started=self.record.started,
                                  resume_from=self.resume.iteration if self.resume is not None else None)
        return self.metrics

    def close_metrics(self) -> str | None:
        """Close metrics.jsonl; a one-line problem if the last numbers could not be written."""
        if self.metrics is None:
            return None
        try:
            self.metrics.close()
        except Exception as exc:  # noqa: BLE001 - the numbers are a view of the run, not the run
            return f"metrics.jsonl could not be finished ({type(exc).__name__}: {exc})"
        return None

    def start_writers(self, ctx: RunContext, registry: Registry) -> FramePump:
        """The video (a new segment after a resume) and the recipe's writers, behind one pump."""
        out, plan = self.recipe.model.output, self.recipe.plan
        if self.resume is not None and out.video:
            self._video_to_checkpoint()
        tile = out.tile
        if tile is None:
            tile = auto_tile(plan.batch, max(ctx.image.shape[-2:]), out.video and out.logits_panel, out.columns)
        info = FrameInfo(run_dir=self.run_dir, batch=plan.batch, iterations=plan.iterations,
                         categories=list(self.recipe.model_info.categories),
                         targets=[[t["index"] for t in ts] for ts in self.targets], fps=out.fps,
                         tile=tile, columns=out.columns, frames=ctx.state.get("frames"))
        writers: list[Writer] = []
        if out.video:
            name = "video.mp4" if self.segment == 0 else f".video.part{self.segment}.mp4"
            writers.append(VideoWriter(None, info, logits_panel=out.logits_panel, path=self.run_dir / name,
                                       encoder_threads=1 if self.device.type == "cpu" else None,
                                       primary=primary_targets(self.targets),
                                       history=self.metrics.history if self.metrics is not None else None,
                                       objectives=[step_label(step) for spec, step in
                                                   zip(self.recipe.steps, self.recipe.steps_bound)
                                                   if spec.cls.kind == StepKind.OBJECTIVE]))
        for options in out.writers:
            cls = registry.writer(options["writer"])
            params = cls.Params.model_validate({k: v for k, v in options.items() if k != "writer"})
            writers.append(cls(params, info))
        return FramePump(writers)

    def _video_to_checkpoint(self) -> None:
        """Make video.mp4 end at the checkpoint's frame: a run killed outright (SIGKILL, power
        cut, a second Ctrl-C) may have encoded frames past its last checkpoint."""
        assert self.resume is not None
        join_segments(self.run_dir)
        out = self.recipe.model.output
        expected = 1 + self.resume.iteration // out.frame_every
        found = trim_video(self.run_dir / "video.mp4", expected, out.fps)
        if found < expected:
            self.record.data["video_note"] = (f"{expected - found} frame(s) before iteration {self.resume.iteration} "
                                              "were lost when the run was stopped; the video skips them")

    def checkpoint(self, ctx: RunContext, steps: list[Step], done: int) -> None:
        save_checkpoint(self.run_dir, Checkpoint.capture(ctx, steps, done, self.segment,
                                                         time.time() - self.record.started,
                                                         run_id=self.record.data["run_id"]))
        self.record.update(iterations_done=done, checkpoint={"file": "checkpoint.pt", "iteration": done})
        # the report at a checkpoint costs the loop its time: at most 5% of the run's, at most every 10 s
        now = time.monotonic()
        if now - self._report_at >= max(10.0, 20 * self._report_cost):
            self._report_at = now
            problem = self.write_report()
            self._report_cost = time.monotonic() - now
            if problem:
                self.record.update(report_warning=problem)

    # -- the end ---------------------------------------------------------------------------
    def close_writers(self, pump: FramePump | None, status: str, timings: dict[str, float]) -> tuple[list[str], str | None]:
        """Drain and close the writers; the files they wrote, and the pump's error if any."""
        files: list[str] = []
        error = None
        if pump is not None:
            t_close = time.perf_counter()
            files = pump.close(status)
            timings["drain_seconds"] = round(time.perf_counter() - t_close, 3)  # frames still queued
            error = None if pump.error is None else str(pump.error)
            timings["encode_seconds"] = round(pump.encode_seconds, 3)
            timings["encode_cpu_seconds"] = round(pump.encode_cpu_seconds, 3)
            timings["frames"] = pump.frames
        return files, error

    def join_video(self, files: list[str]) -> list[str]:
        """The segments of every resume joined into video.mp4 (the segments stay if that fails)."""
        joined = join_segments(self.run_dir)
        return sorted({f for f in files if not f.startswith(".video.part")} | ({"video.mp4"} if joined else set()))

    def save_images(self, ctx: RunContext) -> list[dict[str, Any]]:
        """The final PNGs and grid first, then the model's top five for each, so that a batch too
        big to score (a run that failed for lack of memory) still leaves its images."""
        assert ctx.param is not None
        final = ctx.param.image().detach().float().clamp(0, 1)
        # never through a link out of the run folder (confine says why)
        images_dir = confine.inside(self.run_dir, "images")
        pics = to_uint8(final)
        # photos of other shapes kept whole on one canvas (init-image's fit: whole): each PNG is
        # its own photo's frame, (top, left, height, width) as fractions of the canvas, and
        # grid.png draws each image cut to the same frame (never the canvas's filled margin)
        frames = ctx.state.get("frames") or [None] * pics.shape[0]
        H, W = pics.shape[1:3]
        names = []
        for i in range(pics.shape[0]):
            targets = self.targets[i]
            label = targets[-1]["name"] if targets else self.labels[i] or "image"
            names.append(f"{i:03d}_{_slug(label)}.png")
            pic = pics[i]
            if frames[i] is not None:
                top, left, h, w = frame_box(frames[i], H, W)
                pic = pic[top:top + h, left:left + w]
            save_png(images_dir / names[-1], np.ascontiguousarray(pic))
        columns = self.recipe.model.output.columns
        tile = auto_tile(final.shape[0], max(final.shape[-2:]), False, columns, budget=MAX_GRID_SIDE)
        save_png(images_dir / "grid.png", compose(final, tile=tile, columns=columns, frames=frames))
        probs = self._final_probabilities(ctx, final)
        cats = self.recipe.model_info.categories
        out = []
        primary = primary_targets(self.targets)
        for i, name in enumerate(names):
            top5 = []
            entry: dict[str, Any] = {"file": name, "targets": self.targets[i], "top5": top5}
            if probs is not None:
                p, idx = probs[i].topk(min(5, probs.shape[1]))
                top5 += [{"index": int(k), "name": str(cats[int(k)]) if int(k) < len(cats) else str(int(k)),
                          "probability": round(float(v), 6)} for v, k in zip(p, idx)]
                if primary[i] is not None and 0 <= primary[i] < probs.shape[1]:
                    entry["target_probability"] = round(float(probs[i, primary[i]]), 6)
            out.append(entry)
        return out

    def _final_probabilities(self, ctx: RunContext, final: torch.Tensor) -> torch.Tensor | None:
        """Softmax of the model on the final images, in smaller pieces if the whole batch does not
        fit; None (and a note in the message) if the images cannot be scored at all."""
        if not bool(torch.isfinite(final).all()):
            return None
        chunk = final.shape[0]
        while True:
            try:
                with torch.no_grad():
                    logits = torch.cat([ctx.model(part).logits.float() for part in final.split(chunk)])
                return torch.softmax(logits, 1).cpu()
            except torch.cuda.OutOfMemoryError as exc:
                if ctx.device.type == "cuda":
                    torch.cuda.empty_cache()
                if chunk == 1:
                    first = (str(exc).strip().splitlines() or [""])[0]
                    self.notes.append(f"the final images were saved but not scored: {type(exc).__name__}: {first}")
                    return None
                chunk = max(1, chunk // 4)

    def write_record(self, status: str, message: str, done: int, images: list[dict[str, Any]],
                     files: list[str], timings: dict[str, float]) -> str | None:
        """The final run.json; a one-line problem if it could not be written (a full disk)."""
        listed = set(files) | {"run.json"} | ({"images/grid.png"} if images else set()) | {f"images/{i['file']}" for i in images}
        if (self.run_dir / METRICS_FILE).is_file():
            listed.add(METRICS_FILE)
        listed.add(REPORT_FILE)  # written next, from this record; a failure takes it out again
        self.record.data.pop("report_warning", None)  # a checkpoint's; the final report says anew
        try:
            self.record.update(status=status, message=message or None, iterations_done=done, images=images,
                               files=sorted(listed), timings={**self.record.data.get("timings", {}), **timings})
        except OSError as exc:
            return f"run.json could not be written ({exc.strerror or exc})"
        return None

    def write_report(self) -> str | None:
        """report.html from the folder's files as they are now; a one-line problem if it failed."""
        from pipeline_core.output.report import safe_write_report

        if self.metrics is not None:
            self.metrics.poll()
        return safe_write_report(self.run_dir)

    def finish_report(self) -> str | None:
        """The final report; if it fails, run.json says so (and no longer lists report.html)."""
        problem = self.write_report()
        if problem:
            files = [f for f in self.record.data.get("files", []) if f != REPORT_FILE]
            try:
                self.record.update(report_warning=problem, files=files)
            except OSError:
                pass
        return problem
