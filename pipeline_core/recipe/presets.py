"""The recipes behind :func:`pipeline_core.api.visualize`: the shipped recipes' settings as data.

``visualize(model, "labels:castle")`` should give what the best shipped recipe for that kind
of picture gives, not a second opinion. The recipes folder is not installed with the package,
so their steps are kept here as data; tests/test_api.py compares them with the YAML files, so
a recipe retuned there fails the test until this copy follows it.

- a class: recipes/best_class.yaml, the plausible mode (a decorrelated 1/f spectrum,
  skip-gradient on residual models, jitter, scale and rotation of the views blurred at first, the
  target's logit raised, photographs' feature statistics, Adam);
- a channel: recipes/inside/mobilenet_channels.yaml (a spectrum, small shifts and zooms);
- a neuron: recipes/inside/neurons.yaml (a spectrum, tiny shifts);
- a layer: recipes/inside/deepdream.yaml (DeepDream of a photo at three octaves).
"""

from __future__ import annotations

import copy
from typing import Any

_SPECTRUM_START = {"step": "init-noise", "scale": 0.0, "offset": 0.5, "size": 224}

CLASS = {
    "iterations": 256,
    "steps": [
        _SPECTRUM_START,
        {"step": "fourier-image", "decay": 1.25, "decorrelate": True, "noise": 0.01},
        {"step": "skip-gradient", "gamma": 0.5, "erosion": 0.4, "required": False},
        {"step": "jitter", "pixels": 16, "fill": "noise"},
        {"step": "random-scale", "scale": [0.8, 1.2]},
        {"step": "rotate", "on": "view", "degrees": 15},
        {"step": "jitter", "pixels": 4},
        {"step": "blur", "on": "view", "kernel": 9, "sigma": 2.0, "until": 0.4},
        {"step": "L1-loss", "target": None, "C": 10000, "lambda": 0},
        {"step": "bn-statistics", "source": "photos", "weight": 10, "required": False},
        {"step": "adam", "lr": 0.05, "until": 0.75},
        {"step": "adam", "lr": 0.02, "from": 0.75},
    ],
    "output": {"frame_every": 4, "fps": 15},
}

CHANNEL = {
    "iterations": 160,
    "steps": [
        {**_SPECTRUM_START, "size": 160},
        {"step": "fourier-image", "noise": 0.01},
        {"step": "jitter", "pixels": 8},
        {"step": "random-scale", "scale": [0.9, 1.1]},
        {"step": "channel", "layer": None, "channel": None},
        {"step": "adam", "lr": 0.05},
    ],
    "output": {"frame_every": 2, "fps": 15},
}

NEURON = {
    "iterations": 160,
    "steps": [
        _SPECTRUM_START,
        {"step": "fourier-image", "noise": 0.01},
        {"step": "jitter", "pixels": 2},
        {"step": "neuron", "layer": None, "channel": None},
        {"step": "adam", "lr": 0.05},
    ],
    "output": {"frame_every": 2, "fps": 15},
}

DEEPDREAM = {
    "iterations": 60,
    "steps": [
        {"step": "init-image", "images": None, "size": 320},
        {"step": "octave", "scales": [0.51, 0.71, 1.0], "mode": "bicubic"},
        {"step": "jitter", "pixels": 16},
        {"step": "layer", "layer": None},
        {"step": "gradient-step", "lr": 0.012, "normalize": "std", "clamp": True},
    ],
    "output": {"frame_every": 1, "fps": 15},
}

#: the shipped recipe each preset copies (relative to the repository), for the test that compares them
SOURCES = {"class": ("recipes/best_class.yaml", CLASS), "channel": ("recipes/inside/mobilenet_channels.yaml", CHANNEL),
           "neuron": ("recipes/inside/neurons.yaml", NEURON), "layer": ("recipes/inside/deepdream.yaml", DEEPDREAM)}


def preset(kind: str, fill: dict[str, Any], iterations: int | None = None) -> dict[str, Any]:
    """A copy of preset ``kind`` with the objective's (or init-image's) blanks filled from ``fill``."""
    data = copy.deepcopy(SOURCES[kind][1])
    data["seed"] = 0
    data["batch"] = 1
    for step in data["steps"]:
        for key, value in list(step.items()):
            if value is None:
                step[key] = fill[key]
    if iterations is not None:
        data["iterations"] = iterations
    return data
