"""A catalogue of bad input: each is exit code 2 and one line saying where and how to fix it.

Every command and every file the tool reads has its entries: recipes (the YAML, every
section, steps, photos, weights, class lists), ``--set`` and the other options of every
command, run folders given to ``--resume`` and ``evaluate`` (run.json and checkpoint.pt
foreign, truncated or tampered with) and output files. Most run in process through ``pipeline_core.commands.cli.main`` (fast); a few go through the real
command in a subprocess. Every entry checks the exact place the line points at (file:line,
step index and name, key) and a word of what is wrong, so a message that loses its location
or turns into a traceback fails here.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import pipeline_core.commands.cli as cli
from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind, TransformParams
from pipeline_core.testing import run_recipe_dict, tiny_recipe

#: A valid recipe on the tiny model; the cases below change one thing in it. Line numbers:
BASE = """\
iterations: 4
seed: 0
device: cpu
model:
  name: tiny-test-model
steps:
  - step: init-noise
    size: 32
  - step: blur
    kernel: 3
  - step: L1-loss
    target: 3
  - step: gradient-step
    lr: 0.01
output:
  video: false
"""
#  1 iterations  2 seed  3 device  4 model  5 name  6 steps  7 init-noise  8 size  9 blur
# 10 kernel  11 L1-loss  12 target  13 gradient-step  14 lr  15 output  16 video

INIT_NOISE = "  - step: init-noise\n    size: 32\n"
BLUR = "  - step: blur\n    kernel: 3\n"
L1 = "  - step: L1-loss\n    target: 3\n"
UPDATE = "  - step: gradient-step\n    lr: 0.01\n"


def sub(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


R = "recipe.yaml"
# (id, recipe text or None, arguments after the command, fragments the one line must hold)
CATALOGUE: list[tuple[str, str | bytes | None, list[str], list[str]]] = [
    # -- the file itself
    ("empty file", "", ["validate"], [f"{R}: the recipe is empty"]),
    ("only a comment", "# nothing here\n", ["validate"], [f"{R}:1:", "must be a mapping", "holds nothing"]),
    ("a list", "- iterations: 4\n- seed: 0\n", ["validate"], [f"{R}:1:", "must be a mapping", "holds a list"]),
    ("a string", "castle please\n", ["validate"], [f"{R}:1:", "holds a str"]),
    ("a number", "42\n", ["validate"], [f"{R}:1:", "holds a int"]),
    ("not UTF-8", b"\xff\xfe\x00bad", ["validate"], [R, "not UTF-8"]),
    ("YAML syntax", sub("iterations: 4", "iterations: [4"), ["validate"], [f"{R}:2:", "YAML syntax error"]),
    ("tab indentation", sub("    kernel: 3", "\tkernel: 3"), ["validate"], [f"{R}:10:", "YAML syntax error", "\\t"]),
    ("two documents", BASE + "---\niterations: 5\n", ["validate"], [f"{R}:17:", "YAML syntax error"]),
    ("python object tag", sub("seed: 0", 'seed: !!python/object/apply:os.system ["touch hacked"]'), ["validate"],
     [f"{R}:2:", "'!!python/object/apply:os.system' is not allowed", "plain data only"]),
    ("python name tag", sub("seed: 0", "seed: !!python/name:os.system"), ["validate"],
     [f"{R}:2:", "'!!python/name:os.system' is not allowed"]),
    ("custom tag", sub("seed: 0", "seed: !include other.yaml"), ["validate"], [f"{R}:2:", "'!include' is not allowed"]),
    ("duplicate key", sub("lr: 0.01", "lr: 0.01\n    lr: 0.02"), ["validate"],
     [f"{R}:15:", "'lr' appears twice (lines 14 and 15)"]),
    ("alias bomb", "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
     + "".join(f"{b}: &{b} [{', '.join(['*' + a] * 10)}]\n" for a, b in zip("abcde", "bcdef")), ["validate"],
     [R, "more than 200000 values"]),
    ("alias inside itself", "steps: &s [*s]\n", ["validate"], [f"{R}:1:", "nested more than 64 levels"]),
    ("non-string key", sub("seed: 0", "1: 2"), ["validate"], [f"{R}:2:", "keys must be names, got 1"]),
    # -- the top level
    ("unknown key", sub("iterations: 4", "iteration: 4"), ["validate"],
     [f"{R}:1:", "key 'iteration'", "did you mean 'iterations'"]),
    ("iterations text", sub("iterations: 4", "iterations: many"), ["validate"],
     [f"{R}:1:", "key 'iterations'", "valid integer", "'many'"]),
    ("iterations zero", sub("iterations: 4", "iterations: 0"), ["validate"], [f"{R}:1:", "greater than or equal to 1"]),
    ("iterations negative", sub("iterations: 4", "iterations: -5"), ["validate"], [f"{R}:1:", "(got -5)"]),
    ("iterations fractional", sub("iterations: 4", "iterations: 2.5"), ["validate"], [f"{R}:1:", "fractional"]),
    ("iterations huge", sub("iterations: 4", "iterations: 100000000000"), ["validate"],
     [f"{R}:1:", "less than or equal to 1000000"]),
    ("seed negative", sub("seed: 0", "seed: -1"), ["validate"], [f"{R}:2:", "key 'seed'"]),
    ("seed a date", sub("seed: 0", "seed: 2024-13-45"), ["validate"], [f"{R}:2:", "key 'seed'", "'2024-13-45'"]),
    ("unknown device", sub("device: cpu", "device: gpu"), ["validate"],
     [f"{R}:3:", "unknown device 'gpu'", "cuda:N"]),
    ("batch zero", sub("seed: 0", "batch: 0"), ["validate"], [f"{R}:2:", "key 'batch'"]),
    ("batch huge", sub("seed: 0", "batch: 100000"), ["validate"], [f"{R}:2:", "less than or equal to 4096"]),
    ("description a list", sub("seed: 0", "description: [1, 2]"), ["validate"], [f"{R}:2:", "key 'description'"]),
    ("steps empty", "iterations: 4\nmodel: {name: tiny-test-model}\nsteps: []\n", ["validate"],
     [f"{R}:3:", "key 'steps'", "at least 1 item"]),
    ("steps missing", "iterations: 4\nmodel: {name: tiny-test-model}\n", ["validate"], ["key 'steps'", "required"]),
    ("steps a string", "model: {name: tiny-test-model}\nsteps: blur\n", ["validate"], [f"{R}:2:", "valid list"]),
    ("steps a mapping", "model: {name: tiny-test-model}\nsteps: {step: blur}\n", ["validate"], [f"{R}:2:", "valid list"]),
    ("model a string", sub("model:\n  name: tiny-test-model", "model: mobilenet"), ["validate"],
     [f"{R}:4:", "key 'model'", "expected a mapping of keys, got 'mobilenet'"]),
    ("unknown model", sub("name: tiny-test-model", "name: resnet9000"), ["validate"],
     [f"{R}:5:", "key 'model.name'", "unknown model 'resnet9000'", "did you mean"]),
    ("weights missing", sub("name: tiny-test-model", "name: mobilenet_v2\n  weights: missing.pth"), ["validate"],
     [f"{R}:6:", "key 'model.weights'", "no weights file"]),
    ("std zero", sub("name: tiny-test-model", "name: tiny-test-model\n  std: [0, 1, 1]"), ["validate"],
     [f"{R}:6:", "key 'model.std'", "positive"]),
    ("mean too short", sub("name: tiny-test-model", "name: tiny-test-model\n  mean: [1, 2]"), ["validate"],
     [f"{R}:6:", "key 'model.mean'", "too few values"]),
    ("mean NaN", sub("name: tiny-test-model", "name: tiny-test-model\n  mean: [.nan, 0, 0]"), ["validate"],
     [f"{R}:6:", "model.mean.0", "finite number"]),
    ("model size zero", sub("name: tiny-test-model", "name: tiny-test-model\n  size: 0"), ["validate"],
     [f"{R}:6:", "key 'model.size'"]),
    ("categories empty", sub("name: tiny-test-model", "name: tiny-test-model\n  categories: []"), ["validate"],
     [f"{R}:6:", "key 'model.categories'", "empty"]),
    ("categories file missing", sub("name: tiny-test-model", "name: tiny-test-model\n  categories: none.txt"),
     ["validate"], [f"{R}:6:", "cannot read the class-name file"]),
    ("output fps zero", sub("  video: false", "  fps: 0"), ["validate"], [f"{R}:16:", "key 'output.fps'"]),
    ("frame_every zero", sub("  video: false", "  frame_every: 0"), ["validate"], [f"{R}:16:", "output.frame_every"]),
    ("checkpoint_every negative", sub("  video: false", "  checkpoint_every: -1"), ["validate"],
     [f"{R}:16:", "output.checkpoint_every"]),
    ("output typo", sub("  video: false", "  vidoe: false"), ["validate"], [f"{R}:16:", "did you mean 'video'"]),
    ("precision fp8", sub("output:", "performance: {precision: fp8}\noutput:"), ["validate"],
     [f"{R}:15:", "performance.precision", "'fp8'"]),
    ("threads zero", sub("output:", "performance: {threads: 0}\noutput:"), ["validate"],
     [f"{R}:15:", "performance.threads"]),
    # -- steps
    ("step not a mapping", sub(BLUR, "  - blur\n"), ["validate"], [f"{R}:9:", "step 1:", "must be a mapping"]),
    ("step without 'step'", sub(BLUR, "  - blur: {kernel: 3}\n"), ["validate"],
     [f"{R}:9:", "step 1:", "write '- step: blur'"]),
    ("unknown step", sub("step: blur", "step: blurr"), ["validate"],
     [f"{R}:9:", "step 1:", "unknown step 'blurr'", "did you mean 'blur'"]),
    ("step name a number", sub("step: blur", "step: 5"), ["validate"], [f"{R}:9:", "'step' must be a step name"]),
    ("unknown step key", sub("kernel: 3", "kernal: 3"), ["validate"],
     [f"{R}:10:", "step 1 (blur)", "key 'kernal'", "did you mean 'kernel'"]),
    ("even kernel", sub("kernel: 3", "kernel: 4"), ["validate"], [f"{R}:10:", "step 1 (blur)", "key 'kernel'", "odd"]),
    ("zero kernel", sub("kernel: 3", "kernel: 0"), ["validate"], [f"{R}:10:", "key 'kernel'"]),
    ("sigma text", sub("kernel: 3", "sigma: big"), ["validate"], [f"{R}:10:", "key 'sigma'", "'big'"]),
    ("sigma infinite", sub("kernel: 3", "sigma: .inf"), ["validate"], [f"{R}:10:", "key 'sigma'", "finite"]),
    ("transform on sideways", sub("kernel: 3", "on: sideways"), ["validate"],
     [f"{R}:10:", "key 'on'", "'image' or 'view'"]),
    ("sizes empty", sub(BLUR, "  - step: interpolate\n    sizes: []\n"), ["validate"],
     [f"{R}:10:", "step 1 (interpolate)", "key 'sizes'"]),
    ("sizes zero", sub(BLUR, "  - step: interpolate\n    sizes: [0, 32]\n"), ["validate"],
     [f"{R}:10:", "sizes must lie in 1..4096"]),
    ("size zero", sub("size: 32", "size: 0"), ["validate"], [f"{R}:8:", "step 0 (init-noise)", "key 'size'", "0x0"]),
    ("size negative", sub("size: 32", "size: -1"), ["validate"], [f"{R}:8:", "key 'size'"]),
    ("size huge", sub("size: 32", "size: 100000"), ["validate"], [f"{R}:8:", "1..4096", "100000x100000"]),
    ("size one number in a list", sub("size: 32", "size: [10]"), ["validate"],
     [f"{R}:8:", "key 'size'", "expected an integer or a list of 2 values, got [10]"]),
    ("until beyond the run", sub("kernel: 3", "until: 1.5"), ["validate"], [f"{R}:10:", "key 'until'", "[0, 1]"]),
    ("from after the end", sub("kernel: 3", "from: 100"), ["validate"],
     [f"{R}:9:", "step 1 (blur)", "would never run", "only 4 iterations"]),
    ("from after until", sub("kernel: 3", "from: 3\n    until: 2"), ["validate"], [f"{R}:9:", "would never run"]),
    ("every zero", sub("kernel: 3", "every: 0"), ["validate"], [f"{R}:10:", "key 'every'"]),
    ("until text", sub("kernel: 3", "until: soon"), ["validate"], [f"{R}:10:", "percentage like '75%'"]),
    ("from 150%", sub("kernel: 3", "from: 150%"), ["validate"], [f"{R}:10:", "0%..100%"]),
    ("unknown class", sub("target: 3", "target: class 33"), ["validate"],
     [f"{R}:12:", "step 2 (L1-loss)", "key 'target'", "unknown class 'class 33'", "did you mean"]),
    ("misspelt ImageNet class", sub("name: tiny-test-model", "name: mobilenet_v2").replace("target: 3", "target: castel"),
     ["validate"], [f"{R}:12:", "unknown class 'castel'", "did you mean 'castle'"]),
    ("class index too high", sub("target: 3", "target: 10"), ["validate"],
     [f"{R}:12:", "class index 10 is out of range", "0..9"]),
    ("class index negative", sub("target: 3", "target: -1"), ["validate"], [f"{R}:12:", "out of range"]),
    ("class true", sub("target: 3", "target: true"), ["validate"], [f"{R}:12:", "key 'target'", "got True"]),
    ("class a float", sub("target: 3", "target: 3.5"), ["validate"], [f"{R}:12:", "got 3.5"]),
    ("classes do not divide the batch", sub("seed: 0", "batch: 2").replace("target: 3", "target: [1, 2, 3]"),
     ["validate"], [f"{R}:12:", "3 classes do not divide the batch of 2"]),
    ("no such head", sub("target: 3", "target: 3\n    head: aux"), ["validate"],
     [f"{R}:13:", "has no head 'aux'"]),
    ("learning rate zero", sub("lr: 0.01", "lr: 0"), ["validate"], [f"{R}:14:", "step 3 (gradient-step)", "key 'lr'"]),
    ("learning rate infinite", sub("lr: 0.01", "lr: .inf"), ["validate"], [f"{R}:14:", "finite"]),
    ("adam betas", sub(UPDATE, "  - step: adam\n    betas: [1.5, 0.9]\n"), ["validate"],
     [f"{R}:14:", "step 3 (adam)", "betas must lie in [0, 1)"]),
    ("rotate zoom zero", sub(BLUR, "  - step: rotate\n    scale: [0, 1]\n"), ["validate"],
     [f"{R}:10:", "step 1 (rotate)", "0 < low"]),
    ("ramp out of range", sub(BLUR, "  - step: spectrum-jitter\n    strength: [0.5, 1]\n"), ["validate"],
     [f"{R}:10:", "step 1 (spectrum-jitter)", "a strength must lie in [0, 1), not 1.0"]),
    ("hue too large", sub(BLUR, "  - step: color-jitter\n    hue: 2\n"), ["validate"], [f"{R}:10:", "key 'hue'"]),
    ("octave split", sub(BLUR, "  - step: octave\n    scales: [0.5, 1]\n    split: [1]\n"), ["validate"],
     [f"{R}:11:", "step 1 (octave)", "key 'split'"]),
    ("octaves too many", sub(BLUR, "  - step: octave\n    scales: [0.5, 0.7, 0.8, 0.9, 1]\n"), ["validate"],
     [f"{R}:10:", "too few for 5 octaves"]),
    ("blend to itself", sub(L1, "  - step: target-blend\n    start: 3\n    end: 3\n"), ["validate"],
     [f"{R}:13:", "step 2 (target-blend)", "the same class"]),
    ("no init step", sub(INIT_NOISE, ""), ["validate"], [f"{R}:6:", "no init step"]),
    ("no objective", sub(L1, ""), ["validate"], [f"{R}:6:", "no objective step"]),
    ("no update", sub(UPDATE, ""), ["validate"], [f"{R}:6:", "no update step"]),
    ("init after the loop steps", sub(UPDATE, UPDATE + "  - step: init-noise\n"), ["validate"],
     [f"{R}:15:", "step 4 (init-noise)", "move it above"]),
    ("unknown writer", sub("  video: false", "  writers: [{writer: nope}]"), ["validate"],
     [f"{R}:16:", "unknown output writer 'nope'"]),
    # -- photos
    ("photo missing", sub(INIT_NOISE, "  - step: init-image\n    images: @/missing.png\n"), ["validate"],
     [f"{R}:8:", "step 0 (init-image)", "no such image file", "missing.png"]),
    ("photo is text", sub(INIT_NOISE, "  - step: init-image\n    images: @/notimage.png\n"), ["validate"],
     [f"{R}:8:", "notimage.png is not a readable image"]),
    ("photo cut short", sub(INIT_NOISE, "  - step: init-image\n    images: @/corrupt.png\n"), ["validate"],
     [f"{R}:8:", "corrupt.png is not a readable image"]),
    ("photo glob matches nothing", sub(INIT_NOISE, "  - step: init-image\n    images: '@/nothing*.png'\n"), ["validate"],
     [f"{R}:8:", "no photo matches"]),
    ("photo is a folder", sub(INIT_NOISE, "  - step: init-image\n    images: @/photos\n"), ["validate"],
     [f"{R}:8:", "is a folder, not an image", "'photos/*.jpg'"]),
    ("photos do not divide the batch",
     sub(INIT_NOISE, "  - step: init-image\n    images: [@/gray.png, @/rgba.png]\n").replace("seed: 0", "batch: 3"),
     ["validate"], [f"{R}:8:", "2 photos do not divide the batch of 3"]),
    # -- run-time checks of the recipe, still exit 2
    ("weights not a state dict", sub("name: tiny-test-model", "name: squeezenet1_1\n  weights: @/garbage.pth\n"
                                     "  categories: [a, b, c, d]"), ["run", "--out", "{tmp}/run", "--quiet"],
     ["model.weights:", "garbage.pth is not a PyTorch state dict", "corrupt"]),
    ("weights of another model", sub("name: tiny-test-model", "name: mobilenet_v2\n  weights: @/squeeze.pth\n"
                                     "  categories: [a, b, c, d]"), ["run", "--out", "{tmp}/run", "--quiet"],
     ["squeeze.pth does not fit torchvision's mobilenet_v2"]),
    ("device not here", BASE, ["run", "--device", "cuda:7", "--out", "{tmp}/run"],
     ["device 'cuda:7'"]),
    # -- arguments
    ("bad --device", BASE, ["run", "--device", "gpu", "--out", "{tmp}/run"],
     ["argument --device", "unknown device 'gpu'"]),
    ("bad --seed value", BASE, ["run", "--seed", "-1", "--out", "{tmp}/run"], ["--seed -1:", "key 'seed'"]),
    ("--seed not a number", BASE, ["run", "--seed", "abc"], ["pipeline run: argument --seed", "'abc'", "--help"]),
    ("--set without =", BASE, ["validate", "--set", "iterations"], ["--set iterations: expected KEY=VALUE"]),
    ("--set empty key", BASE, ["validate", "--set", "=3"], ["--set =3: the key is empty"]),
    ("--set bad YAML", BASE, ["validate", "--set", "steps=["], ["--set steps=[: the value is not valid YAML"]),
    ("--set python tag", BASE, ["validate", "--set", "seed=!!python/name:os.system"], ["--set seed="]),
    ("--set no such step", BASE, ["validate", "--set", "steps.9.kernel=3"], ["'steps.9' does not exist"]),
    ("--set wrong type", BASE, ["validate", "--set", "iterations=abc"], ["--set iterations=abc:", "key 'iterations'"]),
    ("--set bad step value", BASE, ["validate", "--set", "steps.1.kernel=4"],
     ["--set steps.1.kernel=4:", "step 1 (blur)", "key 'kernel'", "odd"]),
    ("--set into a number", BASE, ["validate", "--set", "iterations.x=4"], ["--set iterations.x=4: cannot set 'x'"]),
    ("unknown command", None, ["frobnicate"], ["invalid choice: 'frobnicate'"]),
    ("unknown option", BASE, ["run", "--bogus"], ["unrecognized arguments: --bogus"]),
    ("run without a recipe", None, ["run"], ["give a recipe file"]),
    ("recipe missing", None, ["validate", "{tmp}/nothing.yaml"], ["no such recipe file"]),
    ("recipe is a folder", None, ["validate", "{tmp}"], ["is a folder, not a recipe file"]),
    ("recipe is a device", None, ["validate", "/dev/zero"], ["/dev/zero is not a regular file"]),
    ("categories from a device", sub("name: tiny-test-model", "name: tiny-test-model\n  categories: /dev/zero"),
     ["validate"], [f"{R}:6:", "cannot read the class-name file /dev/zero"]),
    ("photo from a device", sub(INIT_NOISE, "  - step: init-image\n    images: /dev/zero\n"), ["validate"],
     [f"{R}:8:", "the photo /dev/zero is a character device, not a regular file"]),
    ("--out is a file", BASE, ["run", "--out", "{tmp}/notimage.png"], ["--out", "is a file, not a folder"]),
    ("--out under a file", BASE, ["run", "--out", "{tmp}/notimage.png/run"],
     ["cannot write to the run folder", "a part of the path is a file"]),
    ("--out not empty", BASE, ["run", "--out", "{tmp}/photos"], ["is not empty", "--force"]),
    ("resume nothing", None, ["run", "--resume", "{tmp}/no-run"], ["--resume", "no such run folder"]),
    ("resume not a run", None, ["run", "--resume", "{tmp}/photos"], ["the folder has no run.json"]),
    ("resume with a recipe", BASE, ["run", "--resume", "{tmp}/photos"], ["give no recipe, --set, --add-step, --model, --seed"]),
    ("resume a finished run", None, ["run", "--resume", "{tmp}/done"], ["has no checkpoint.pt", "already complete"]),
    ("resume a broken checkpoint", None, ["run", "--resume", "{tmp}/broken-checkpoint"],
     ["checkpoint", "cannot be read", "start the run again"]),
    ("replay a broken run.json", None, ["run", "{tmp}/broken/run.json", "--out", "{tmp}/replay"],
     ["run.json", "YAML syntax error"]),
    # -- recipes that used to pass validation and fail in the run, or get wrong advice
    ("objective window leaves iterations uncovered", sub("target: 3", "target: 3\n    until: 2"), ["validate"],
     [f"{R}:11:", "step 2 (L1-loss)", "no objective is active at iteration 2", "widen a window"]),
    ("objectives together leave a gap", sub(L1, L1 + "    until: 1\n  - step: cross-entropy\n    target: 3\n"
                                                "    from: 2\n"), ["validate"],
     [f"{R}:6:", "no objective is active at iteration 1", "all the objectives together"]),
    ("objective every leaves gaps", sub("target: 3", "target: 3\n    every: 2"), ["validate"],
     ["no objective is active at iteration 1"]),
    ("learning rate beyond float32", sub("lr: 0.01", "lr: 1.0e+39"), ["validate"],
     [f"{R}:14:", "step 3 (gradient-step)", "key 'lr'", "32-bit floats"]),
    ("integer beyond 64 bits", sub("kernel: 3", "kernel: 3\n    every: 100000000000000000000000"), ["validate"],
     [f"{R}:11:", "key 'every'", "64-bit integer"]),
    ("octave split overflows", sub(BLUR, "  - step: octave\n    scales: [0.5, 1]\n    split: [1.0e+308, 1.0e+308]\n"),
     ["validate"], [f"{R}:11:", "step 1 (octave)", "split.0", "32-bit floats"]),
    ("std too small", sub("name: tiny-test-model", "name: tiny-test-model\n  std: [1.0e-30, 1, 1]"), ["validate"],
     [f"{R}:6:", "key 'model.std'", "1e-06..10000"]),
    ("mean too large", sub("name: tiny-test-model", "name: tiny-test-model\n  mean: [1.0e+300, 0, 0]"), ["validate"],
     [f"{R}:6:", "key 'model.mean'", "-10000..10000"]),
    ("columns too many", sub("  video: false", "  columns: 34000"), ["validate"],
     [f"{R}:16:", "key 'output.columns'", "each video frame would be 1224002x20 px", "fewer output.columns"]),
    ("video frame too wide", sub("seed: 0", "batch: 8").replace("  video: false", "  tile: 4096"),
     ["validate"], [f"{R}:16:", "key 'output.tile'", "each video frame", "16394x", "smaller output.tile"]),
    ("layer head on a class objective", sub("target: 3", "target: 3\n    head: layer:features"), ["validate"],
     [f"{R}:13:", "step 2 (L1-loss)", "key 'head'", "a layer's activations", "head: logits"]),
    ("photo of an unknown user", sub(INIT_NOISE, "  - step: init-image\n    images: ~nosuchuser9/a.png\n"), ["validate"],
     [f"{R}:8:", "step 0 (init-image)", "'~nosuchuser9' names no user's home folder"]),
    ("weights of an unknown user", sub("name: tiny-test-model", "name: mobilenet_v2\n  weights: ~nosuchuser9/m.pth"),
     ["validate"], [f"{R}:6:", "key 'model.weights'", "no user's home folder"]),
    ("class names of an unknown user", sub("name: tiny-test-model", "name: tiny-test-model\n  categories: ~nosuchuser9/c"),
     ["validate"], [f"{R}:6:", "key 'model.categories'", "no user's home folder"]),
    # -- a problem made by an option names the option
    ("--set makes a window uncovered", BASE, ["validate", "--set", "steps.2.until=1"],
     ["--set steps.2.until=1:", "step 2 (L1-loss)", "no objective is active at iteration 1"]),
    ("--set makes a step never run", BASE, ["validate", "--set", "steps.1.from=9"],
     ["--set steps.1.from=9:", "step 1 (blur)", "would never run"]),
    ("--set iterations makes a step never run", sub("kernel: 3", "kernel: 3\n    from: 3"),
     ["validate", "--set", "iterations=2"], [f"{R}:9:", "would never run", "(with --set iterations=2)"]),
    ("--set weights of an unknown user", BASE, ["validate", "--set", "model.weights=~nosuchuser9/m.pth"],
     ["--set model.weights=~nosuchuser9/m.pth:", "no user's home folder"]),
    ("--set index not ASCII", BASE, ["validate", "--set", "steps.\u00b2.kernel=3"],
     ["no step is labelled or named '\u00b2'", "steps.0 (init-noise)", "steps.3 (gradient-step)"]),
    ("--set index not a number on a list", BASE, ["validate", "--set", "steps.first.kernel=3"],
     ["no step is labelled or named 'first'", "steps.0 (init-noise)", "steps.3 (gradient-step)"]),
    ("--set index out of range", BASE, ["validate", "--set", "steps.12=3"],
     ["'steps.12' does not exist", "'steps' has positions 0..3"]),
    ("--set index into a list value", BASE, ["validate", "--set", "steps.1.kernel.0=3"],
     ["cannot set '0'", "'steps.1.kernel' is a number"]),
    ("--set empty part", BASE, ["validate", "--set", "steps..kernel=3"], ["has an empty part"]),
    ("--set huge integer", BASE, ["validate", "--set", "seed=" + "9" * 5000], ["--set seed=", "a number of 5000 digits"]),
    ("--set huge float", BASE, ["validate", "--set", "steps.3.lr=" + "9" * 400], ["key 'lr'", "valid number"]),
    # -- options of every command
    ("--out empty", BASE, ["run", "--out", ""], ["argument --out", "the path is empty"]),
    ("--out blank", BASE, ["run", "--out", "  "], ["argument --out", "the path is empty"]),
    ("--resume empty", None, ["run", "--resume", ""], ["argument --resume", "the path is empty"]),
    ("--seed not ASCII", BASE, ["run", "--seed", "\u0663"], ["argument --seed", "expected a whole number"]),
    ("--seed huge", BASE, ["run", "--seed", "9" * 40, "--out", "{tmp}/run"], ["argument --seed", "whole number"]),
    ("--device malformed", BASE, ["run", "--device", "cuda:x"], ["argument --device", "unknown device 'cuda:x'"]),
    ("--model with a std of 0", BASE, ["run", "--model", "tiny-test-model,std=0", "--out", "{tmp}/run"],
     ["--model tiny-test-model,std=0:", "std", "positive"]),
    ("--model with label for a run", BASE, ["validate", "--model", "tiny-test-model,label=x"],
     ["'label=x' is not KEY=VALUE", "weights, mean, std, size, categories"]),
    ("--model unknown", BASE, ["validate", "--model", "resnet9000"], ["--model resnet9000:", "unknown model"]),
    ("--model a key twice", BASE, ["validate", "--model", "tiny-test-model,size=32,size=64"], ["size is given twice"]),
    ("validate without a file", None, ["validate"], ["the following arguments are required: recipe"]),
    ("recipe path with NUL", None, ["validate", "a\x00b.yaml"], ["NUL character"]),
    ("bench --json in a missing folder", BASE, ["bench", "--json", "{tmp}/no-such-folder/bench.json"],
     ["--json", "the folder", "no-such-folder does not exist"]),
    ("bench --json is a folder", BASE, ["bench", "--json", "{tmp}/photos"], ["--json", "is a folder"]),
    ("bench --json empty", BASE, ["bench", "--json", ""], ["argument --json", "the path is empty"]),
    ("bench --iterations zero", BASE, ["bench", "--iterations", "0"], ["argument --iterations", "at least 1"]),
    ("bench --rounds text", BASE, ["bench", "--rounds", "many"], ["argument --rounds", "whole number"]),
    ("bench --model bad", BASE, ["bench", "--model", "tiny-test-model,mean=.nan"], ["--model", "finite number"]),
    ("schema --out in a missing folder", None, ["schema", "--out", "{tmp}/no-such-folder/s.json"],
     ["--out", "does not exist"]),
    ("steps unknown", None, ["steps", "blurr"], ["unknown step 'blurr'", "did you mean 'blur'"]),
    ("evaluate --batch-size -1", None, ["evaluate", "{tmp}/done", "--model", "tiny-test-model", "--batch-size", "-1"],
     ["argument --batch-size", "at least 1"]),
    ("evaluate --model std 0", None, ["evaluate", "{tmp}/done", "--model", "tiny-test-model,std=0"],
     ["--model tiny-test-model,std=0:", "positive"]),
    ("evaluate --model mean NaN", None, ["evaluate", "{tmp}/done", "--model", "tiny-test-model,mean=nan"],
     ["finite number"]),
    ("evaluate --model weights of an unknown user", None,
     ["evaluate", "{tmp}/done", "--model", "mobilenet_v2,weights=~nosuchuser9/m.pth"], ["no user's home folder"]),
    ("evaluate --device malformed", None, ["evaluate", "{tmp}/done", "--model", "tiny-test-model", "--device", "cuda:x"],
     ["argument --device", "unknown device"]),
    # -- run folders given to evaluate: run.json foreign or tampered with
    ("evaluate a folder without a run", None, ["evaluate", "{tmp}/photos", "--model", "tiny-test-model"],
     ["no run.json"]),
    ("evaluate run.json not JSON", None, ["evaluate", "{tmp}/ev-not-json", "--model", "tiny-test-model"],
     ["run.json is not a run record (not JSON"]),
    ("evaluate run.json a list", None, ["evaluate", "{tmp}/ev-a-list", "--model", "tiny-test-model"],
     ["not a run record (it holds a list"]),
    ("evaluate images not a list", None, ["evaluate", "{tmp}/ev-images-number", "--model", "tiny-test-model"],
     ["its 'images' is not a list"]),
    ("evaluate image without a file", None, ["evaluate", "{tmp}/ev-no-file", "--model", "tiny-test-model"],
     ["not a run record this tool wrote", "the file None"]),
    ("evaluate image outside the folder", None, ["evaluate", "{tmp}/ev-escape", "--model", "tiny-test-model"],
     ["the file '../../run.json' is not an image name"]),
    ("evaluate target index text", None, ["evaluate", "{tmp}/ev-index-text", "--model", "tiny-test-model"],
     ["has no class index"]),
    ("evaluate target weight text", None, ["evaluate", "{tmp}/ev-weight-text", "--model", "tiny-test-model"],
     ["target weight", "not a number"]),
    ("evaluate image not a PNG", None, ["evaluate", "{tmp}/ev-not-png", "--model", "tiny-test-model"],
     ["is listed in run.json but is not a readable image"]),
    ("evaluate image missing", None, ["evaluate", "{tmp}/ev-png-gone", "--model", "tiny-test-model"],
     ["is listed in run.json but missing"]),
    # -- run folders given to --resume: run.json and checkpoint.pt foreign or tampered with
    ("resume run.json not JSON", None, ["run", "--resume", "{tmp}/rs-record-not-json"],
     ["run.json is not a run record (not JSON"]),
    ("resume run.json a list", None, ["run", "--resume", "{tmp}/rs-record-list"], ["it holds a list"]),
    ("resume run.json without a recipe", None, ["run", "--resume", "{tmp}/rs-record-no-recipe"],
     ["holds no 'recipe' mapping"]),
    ("resume run.json recipe of wrong types", None, ["run", "--resume", "{tmp}/rs-record-bad-recipe"],
     ["run.json:", "key 'iterations'", "'many'"]),
    ("resume run.json without a run id", None, ["run", "--resume", "{tmp}/rs-record-no-id"],
     ["cannot be matched to", "the record carries no run id"]),
    ("resume a checkpoint of another run", None, ["run", "--resume", "{tmp}/rs-other-run"],
     ["checkpoint.pt belongs to another run", "start the run again"]),
    ("resume a checkpoint without a run id", None, ["run", "--resume", "{tmp}/rs-ckpt-no-id"],
     ["the checkpoint carries no run id"]),
    ("resume a record with fewer iterations than the checkpoint", None, ["run", "--resume", "{tmp}/rs-fewer"],
     ["is at iteration 2 but the run's record has only 1 iterations"]),
    ("resume a checkpoint of another batch", None, ["run", "--resume", "{tmp}/rs-batch"],
     ["holds 3 images but the run's record has a batch of 1"]),
    ("resume a checkpoint that is a pickle", None, ["run", "--resume", "{tmp}/rs-pickle"],
     ["checkpoint", "cannot be read"]),
    ("resume a checkpoint that is JSON", None, ["run", "--resume", "{tmp}/rs-json"], ["cannot be read"]),
    ("resume a checkpoint that is a list", None, ["run", "--resume", "{tmp}/rs-list"],
     ["not a checkpoint of this tool (it holds a list"]),
    ("resume a checkpoint without its image", None, ["run", "--resume", "{tmp}/rs-no-image"], ["(no image)"]),
    ("resume a checkpoint with a text iteration", None, ["run", "--resume", "{tmp}/rs-text-iteration"],
     ["'iteration' is not a whole number"]),
    ("resume a checkpoint with a NaN image", None, ["run", "--resume", "{tmp}/rs-nan"], ["NaN or Inf"]),
    ("resume a checkpoint with unknown fields", None, ["run", "--resume", "{tmp}/rs-extra"], ["unknown field 'os'"]),
    ("resume a checkpoint of a step the recipe lacks", None, ["run", "--resume", "{tmp}/rs-stray-step"],
     ["the state of step 7"]),
    ("resume a checkpoint whose image state does not fit", None, ["run", "--resume", "{tmp}/rs-param"],
     ["does not fit this run", "start the run again"]),
    ("resume with --model", None, ["run", "--resume", "{tmp}/rs-other-run", "--model", "tiny-test-model"],
     ["give no recipe, --set, --add-step, --model"]),
]


class StopAtParams(TransformParams):
    at: int = 1


class StopAt(Step):
    """Sends its own process a SIGINT at iteration ``at``: a run stopped there, with a checkpoint."""

    name = "test-stop-at"
    kind = StepKind.TRANSFORM
    Params = StopAtParams

    def apply(self, ctx, x):
        if ctx.iteration == self.params.at:
            os.kill(os.getpid(), signal.SIGINT)
        return x


class StopAtPlugin:
    @hookimpl
    def register_steps(self, registry):
        registry.add_step(StopAt)


def paused_run(run_dir: Path, registry, at: int = 1, **changes: Any) -> Path:
    """A tiny run interrupted after iteration ``at`` (of 4): run.json and checkpoint.pt at ``at + 1``."""
    recipe = tiny_recipe(**changes)
    recipe["steps"].insert(1, {"step": "test-stop-at", "at": at, "on": "view"})
    result = run_recipe_dict(recipe, run_dir, registry=registry, check=False)
    assert result.status == "interrupted" and (run_dir / "checkpoint.pt").is_file(), result.message
    return run_dir


pytestmark = pytest.mark.plugins(StopAtPlugin())


def _variant(folder: Path, source: str, name: str, record: Callable[[Any], Any] | None = None,
             checkpoint: Callable[[Any], Any] | None = None) -> None:
    """A copy of run folder ``source`` whose run.json and/or checkpoint.pt ``record``/``checkpoint``
    rewrite (a str or bytes result is written as it is)."""
    dest = folder / name
    shutil.copytree(folder / source, dest)
    for file, change, load in (("run.json", record, lambda p: json.loads(p.read_text())),
                               ("checkpoint.pt", checkpoint, lambda p: torch.load(p, weights_only=True))):
        if change is None:
            continue
        out = change(load(dest / file))
        if isinstance(out, str):
            (dest / file).write_text(out)
        elif isinstance(out, bytes):
            (dest / file).write_bytes(out)
        elif file == "run.json":
            (dest / file).write_text(json.dumps(out))
        else:
            torch.save(out, dest / file)


def _with(data: dict, **changes: Any) -> dict:
    return {**data, **changes}


def _without(data: dict, key: str) -> dict:
    return {k: v for k, v in data.items() if k != key}


def _images(record: dict, change: Callable[[dict], Any]) -> dict:
    change(record["images"][0])
    return record


def _tampered_runs(folder: Path, registry) -> None:
    """Run folders with one thing wrong in run.json or checkpoint.pt, for evaluate and --resume."""
    v = _variant
    v(folder, "done", "ev-not-json", record=lambda r: '{"images": [')
    v(folder, "done", "ev-a-list", record=lambda r: [r])
    v(folder, "done", "ev-images-number", record=lambda r: _with(r, images=5))
    v(folder, "done", "ev-no-file", record=lambda r: _images(r, lambda e: e.pop("file")))
    v(folder, "done", "ev-escape", record=lambda r: _images(r, lambda e: e.update(file="../../run.json")))
    v(folder, "done", "ev-index-text", record=lambda r: _images(r, lambda e: e["targets"][0].update(index="x")))
    v(folder, "done", "ev-weight-text", record=lambda r: _images(r, lambda e: e["targets"][0].update(weight="x")))
    v(folder, "done", "ev-not-png")
    next((folder / "ev-not-png" / "images").glob("000_*.png")).write_text("not a picture")
    v(folder, "done", "ev-png-gone")
    next((folder / "ev-png-gone" / "images").glob("000_*.png")).unlink()

    paused_run(folder / "paused", registry)
    v(folder, "paused", "rs-record-not-json", record=lambda r: "{not json")
    v(folder, "paused", "rs-record-list", record=lambda r: [1, 2])
    v(folder, "paused", "rs-record-no-recipe", record=lambda r: _without(r, "recipe"))
    v(folder, "paused", "rs-record-bad-recipe", record=lambda r: _with(r, recipe=_with(r["recipe"], iterations="many")))
    v(folder, "paused", "rs-record-no-id", record=lambda r: _without(r, "run_id"))
    v(folder, "paused", "rs-other-run", checkpoint=lambda c: _with(c, run_id="0123456789abcdef" * 2))
    v(folder, "paused", "rs-ckpt-no-id", checkpoint=lambda c: _without(c, "run_id"))
    v(folder, "paused", "rs-fewer", record=lambda r: _with(r, recipe=_with(r["recipe"], iterations=1)))
    v(folder, "paused", "rs-batch", checkpoint=lambda c: _with(c, image=c["image"].repeat(3, 1, 1, 1)))
    v(folder, "paused", "rs-pickle", checkpoint=lambda c: pickle.dumps({"iteration": 2}))
    v(folder, "paused", "rs-json", checkpoint=lambda c: json.dumps({"iteration": 2}))
    v(folder, "paused", "rs-list", checkpoint=lambda c: [1, 2, 3])
    v(folder, "paused", "rs-no-image", checkpoint=lambda c: _without(c, "image"))
    v(folder, "paused", "rs-text-iteration", checkpoint=lambda c: _with(c, iteration="2"))
    v(folder, "paused", "rs-nan", checkpoint=lambda c: _with(c, image=c["image"] * float("nan")))
    v(folder, "paused", "rs-extra", checkpoint=lambda c: _with(c, os="system"))
    v(folder, "paused", "rs-stray-step", checkpoint=lambda c: _with(c, steps={7: {}}))
    v(folder, "paused", "rs-param", checkpoint=lambda c: _with(c, param={"bogus": torch.zeros(2)}))


@pytest.fixture(scope="module")
def files(tmp_path_factory, registry) -> Path:
    """Photos good and bad, weights, a finished run and a run with a broken checkpoint."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 50)) * 255).astype("uint8"), "L").save(folder / "gray.png")
    Image.fromarray((rng.random((40, 50, 4)) * 255).astype("uint8"), "RGBA").save(folder / "rgba.png")
    (folder / "corrupt.png").write_bytes((folder / "gray.png").read_bytes()[:60])
    (folder / "notimage.png").write_text("hello, I am text")
    (folder / "photos").mkdir()
    (folder / "photos" / "a.png").write_bytes((folder / "gray.png").read_bytes())
    (folder / "garbage.pth").write_bytes(b"garbage" * 10)
    import torchvision

    torch.save(torchvision.models.squeezenet1_1(num_classes=4).state_dict(), folder / "squeeze.pth")
    run_recipe_dict(tiny_recipe(iterations=2), folder / "done", registry=registry)
    run_recipe_dict(tiny_recipe(iterations=2), folder / "broken", registry=registry)
    (folder / "broken" / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really")
    (folder / "broken" / "run.json").write_text('{"recipe": {"iterations": 4,')
    shutil.copytree(folder / "done", folder / "broken-checkpoint")
    (folder / "broken-checkpoint" / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really")
    _tampered_runs(folder, registry)
    return folder


def one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert not captured.out.strip(), captured.out
    return lines[0]


@pytest.mark.parametrize("name, text, args, fragments", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_exit_code_2_and_one_line_that_points_at_it(name, text, args, fragments, files, in_process,
                                                                  capsys, monkeypatch, tmp_path):
    argv = [a.format(tmp=files) if a != "{tmp}/run" else str(tmp_path / "run") for a in args]
    if text is not None:  # "@/" stands for the folder of test inputs (photos, weights)
        recipe = tmp_path / R
        data = text if isinstance(text, bytes) else text.replace("@/", f"{files}/").encode("utf-8")
        recipe.write_bytes(data)
        argv.insert(1, str(recipe))

    code = in_process(argv)

    line = one_line(capsys)
    assert code == 2, line
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert not (files / "hacked").exists()


def test_the_catalogue_is_large():
    assert len(CATALOGUE) >= 40


def test_grayscale_rgba_palette_and_16_bit_photos_work(in_process, capsys, tmp_path):
    rng = np.random.default_rng(1)
    pixels = (rng.random((36, 48)) * 255).astype("uint8")
    Image.fromarray(pixels, "L").save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([pixels] * 3 + [pixels]), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([pixels] * 3)).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(pixels.astype("uint16") * 257).save(tmp_path / "deep.png")  # 16-bit grayscale
    Image.fromarray(np.dstack([pixels] * 3)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    recipe = tiny_recipe(iterations=1, output={"video": False})
    recipe["steps"][0] = {"step": "init-image", "size": 32, "fit": "crop",
                          "images": ["gray.png", "rgba.png", "palette.png", "deep.png", "cmyk.jpg"]}
    (tmp_path / "photos.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")

    code = in_process(["run", str(tmp_path / "photos.yaml"), "--out", str(tmp_path / "run"), "--quiet"])

    assert code == 0, capsys.readouterr().err
    outputs = [Image.open(tmp_path / "run" / "images" / f"{i:03d}_class-3.png") for i in range(5)]
    assert all(im.mode == "RGB" and im.size == (32, 32) for im in outputs)
    gray, _rgba, _palette, deep, _cmyk = [np.asarray(im, dtype=float) for im in outputs]
    assert abs(gray.mean() - deep.mean()) < 3  # 16-bit is scaled, not clipped to white
    assert gray.std() > 20 and deep.std() > 20


@pytest.mark.slow
def test_a_recipe_tag_never_runs_anything_through_the_real_command(cli, tmp_path):
    marker = tmp_path / "hacked"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(sub("seed: 0", f'seed: !!python/object/apply:os.system ["touch {marker}"]'), encoding="utf-8")
    proc = cli("validate", str(recipe))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{recipe}:2:" in lines[0] and "is not allowed" in lines[0], proc.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_unknown_step_through_the_real_command(cli, tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe()).replace("gradient-step", "gradient-stpe"), encoding="utf-8")
    proc = cli("run", str(recipe), "--out", str(tmp_path / "run"))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "unknown step 'gradient-stpe'" in lines[0] and "did you mean 'gradient-step'" in lines[0]
    assert not (tmp_path / "run").exists()  # nothing is made for a recipe that cannot run
    assert os.listdir(tmp_path) == ["typo.yaml"]


def test_a_photo_starts_upright_by_its_exif_orientation(in_process, capsys, tmp_path):
    from pipeline_plugins.photo_files import load_photo

    # stored 40 wide and 20 high, red left and blue right; orientation 6: the camera was turned, so
    # viewers rotate it a quarter turn clockwise: 20 wide, 40 high, red on top
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    assert Image.open(tmp_path / "phone.jpg").getexif()[0x0112] == 6

    photo = load_photo(tmp_path / "phone.jpg")
    assert tuple(photo.shape) == (3, 40, 20)
    top, bottom = photo[:, :20].mean((1, 2)), photo[:, 20:].mean((1, 2))
    assert top[0] > 0.9 > 0.1 > top[2] and bottom[2] > 0.9 > 0.1 > bottom[0]

    recipe = tiny_recipe(iterations=1, output={"video": False})
    recipe["steps"][0] = {"step": "init-image", "images": "phone.jpg", "size": [40, 20], "fit": "stretch"}
    recipe["steps"][-1]["lr"] = 1e-6
    (tmp_path / "phone.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert in_process(["run", str(tmp_path / "phone.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = np.asarray(Image.open(tmp_path / "run" / "images" / "000_class-3.png"), dtype=float)
    assert out.shape == (40, 20, 3) and out[:20, :, 0].mean() > 200 and out[20:, :, 2].mean() > 200


def test_a_photo_with_broken_exif_still_loads(tmp_path):
    from pipeline_plugins.photo_files import load_photo

    Image.fromarray(np.full((8, 12, 3), 128, dtype=np.uint8)).save(tmp_path / "odd.jpg", exif=b"Exif\x00\x00garbage")
    assert tuple(load_photo(tmp_path / "odd.jpg").shape) == (3, 8, 12)


ESC = "\x1b"


def test_text_from_a_recipe_never_reaches_the_terminal_with_control_characters(in_process, capsys, tmp_path):
    """Class names, targets, messages and file names are shown with their escapes, never obeyed."""
    names = [f"{ESC}]0;owned{chr(7)}class {i}{ESC}[2J" for i in range(10)]
    recipe = tiny_recipe(iterations=1, model={"name": "tiny-test-model", "categories": names},
                         description=f"{ESC}[31mred{ESC}[0m")
    recipe["steps"][1]["target"] = names[3]
    path = tmp_path / f"odd{ESC}[5mname.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")

    assert in_process(["validate", str(path)]) == 0
    assert in_process(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    recipe["steps"][1]["target"] = f"{ESC}[2Jno such class\u202e"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert in_process(["validate", str(path)]) == 2
    assert in_process(["validate", str(path), "--set", f"steps.1.lambda={ESC}[1m"]) == 2
    captured = capsys.readouterr()
    for text in (captured.out, captured.err):
        assert ESC not in text and chr(7) not in text and "\u202e" not in text, repr(text)
    assert "\\x1b[5mname.yaml: valid" in captured.out and "model sees \\x1b]0;owned\\x07class" in captured.out
    assert "unknown class '\\x1b[2Jno such class\\u202e'" in captured.err
