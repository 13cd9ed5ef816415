"""The Python API: a recipe run, or a one-line picture, from a notebook or a script.

``run(recipe, model=net)`` is ``pipeline run recipe --model ...`` from Python: the same recipe
checks, the same engine (:class:`pipeline_core.run.engine.Run`), the same run folder with its
video, report and run.json, and the same one-line errors, raised as exceptions
(:class:`~pipeline_core.errors.PipelineError`). What Python adds is the model: an ``nn.Module``
in memory (:class:`Model` carries its preprocessing), lent to the run and handed back as it was,
with torch's global settings.

``visualize(model, "labels:castle")`` picks the settings of the shipped recipe for the kind of
picture asked for (a class, a channel, a neuron, DeepDream of a layer on a photo); ``layers``
and ``classes`` return what ``pipeline layers`` and ``pipeline classes`` print.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch
from torch import nn

from pipeline_core.errors import OutputError, RecipeError, RunFailed

__all__ = ["Model", "RunOutput", "run", "visualize", "layers", "classes"]

#: a recipe: a file, YAML text, or the mapping YAML would give
_RecipeLike = Union[str, Path, Mapping[str, Any]]
#: a model: an ``nn.Module``, one with its preprocessing (:class:`Model`), or a ``--model`` spec string
_ModelLike = Union[nn.Module, "Model", str]


@dataclass
class Model:
    """An ``nn.Module`` with what a run needs to feed it: the normalisation it was trained with,
    its input side and its class names in output order.

    Left out, ``mean``/``std``/``size`` come from the module's timm pretrained config when it has
    one, else ImageNet's; ``classes`` are ImageNet's names for 1000 outputs, else the indices.
    ``name`` is how run.json names it (default: the class name)."""

    module: nn.Module
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    size: int | None = None
    classes: Sequence[str] | None = None
    name: str | None = None


@dataclass
class RunOutput:
    """What a run left: its status, the final images and where its files are.

    ``images`` is a ``(B, 3, H, W)`` float tensor in [0, 1] on the CPU (``pil`` the same as PIL
    images); ``targets`` and ``probabilities`` give, per image, the class it was aimed at and the
    model's final probability of it (None without a class objective). In a notebook the output
    shows itself: the grid, the video and a link to the report."""

    status: str  #: completed, interrupted or failed
    run_dir: Path
    iterations_done: int
    message: str = ""
    images: torch.Tensor | None = None
    targets: list[str | None] = field(default_factory=list)
    probabilities: list[float | None] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def pil(self) -> list[Any]:
        from PIL import Image

        if self.images is None:
            return []
        pics = (self.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(p) for p in pics]

    def _file(self, name: str) -> Path | None:
        path = self.run_dir / name
        return path if path.is_file() else None

    @property
    def video(self) -> Path | None:
        return self._file("video.mp4")

    @property
    def report(self) -> Path | None:
        return self._file("report.html")

    @property
    def run_json(self) -> Path | None:
        return self._file("run.json")

    @property
    def grid(self) -> Path | None:
        return self._file("images/grid.png")

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """Every line of metrics.jsonl (the loss, each term, p(target) and top-1 over the iterations)."""
        from pipeline_core.output.notebook import read_metrics

        return read_metrics(self.run_dir)

    def _repr_html_(self) -> str:
        from pipeline_core.output.notebook import result_html

        return result_html(self)

    def _repr_png_(self) -> bytes | None:
        grid = self.grid
        return grid.read_bytes() if grid is not None else None

    def __repr__(self) -> str:
        return (f"RunOutput(status={self.status!r}, run_dir={str(self.run_dir)!r}, "
                f"iterations_done={self.iterations_done}, targets={self.targets!r})")


# -- run ------------------------------------------------------------------------------------


def run(recipe: _RecipeLike, *, model: _ModelLike | None = None, set: Mapping[str, Any] | Sequence[str] | None = None,
        out: str | Path | None = None, seed: int | None = None, device: str | None = None, progress: bool = True,
        save_model: bool = False, force: bool = False) -> RunOutput:
    """Run ``recipe`` as ``pipeline run`` does and return what it left.

    ``recipe``: a file (a run's run.json replays it), YAML text or a mapping. ``model``: an
    ``nn.Module`` (or :class:`Model`) used in place of the recipe's model, or a ``--model``
    spec string (``"mobilenet_v2,weights=m.pth,mean=0.5,std=0.5,size=224"``, ``"timm:resnet18"``).
    ``set``: overrides by dotted key (``{"steps.2.sigma": 1}`` or ``["iterations=8"]``). ``out``:
    the run folder (default a new one under runs/). ``save_model``: keep an in-memory model's
    state dict in the run folder (model_state.pt), so the run can be replayed from it. ``force``:
    replace the run in a non-empty ``out`` (its files go), for a cell run again.

    A bad recipe, option or model raises :class:`~pipeline_core.errors.PipelineError` with the
    line the command prints; a run that fails raises :class:`~pipeline_core.errors.RunFailed`
    (its record is written first). An interrupt (the kernel's stop button, Ctrl-C) ends the run
    at the next iteration and returns its partial output with status ``interrupted``.
    """
    return _call(recipe, model, set, out, seed, device, progress, save_model, None, force)


def _call(recipe: _RecipeLike, model: Any, sets: Any, out: Any, seed: Any, device: Any, progress: bool,
          save_model: bool, name: str | None, force: bool = False) -> RunOutput:
    """:func:`run`, with ``name`` for the default run folder (runs/NAME) of a recipe given as data."""
    from pipeline_core.run.borrowed import module_lent, torch_state_kept
    from pipeline_core.run.python_model import lend

    with torch_state_kept():
        torch.set_grad_enabled(True)  # as the command runs; a caller inside no_grad gets its mode back after
        registry = _registry()
        borrowed = lend(model, registry) if model is not None and not isinstance(model, str) else None
        try:
            if borrowed is None:
                return _run(recipe, registry, model, sets, out, seed, device, progress, None, save_model, name, force)
            with module_lent(borrowed.module):
                return _run(recipe, registry, None, sets, out, seed, device, progress, borrowed, save_model, name,
                            force)
        finally:
            if borrowed is not None:
                registry.models.pop(borrowed.name, None)


def _run(recipe: _RecipeLike, registry: Any, spec: str | None, sets: Any, out: Any, seed: Any, device: Any,
         progress: bool, borrowed: Any, save_model: bool, name: str | None, force: bool) -> RunOutput:
    from pipeline_core.recipe.loader import validate
    from pipeline_core.run.device import pick_device
    from pipeline_core.run.engine import Run
    from pipeline_core.run.record import _contents, default_run_dir, prepare_run_dir, run_lock

    source = _source(recipe, _overrides(spec, sets, seed, device, borrowed))
    checked = validate(source, registry)
    pick_device(checked.model.device)
    run_dir = Path(out) if out is not None else default_run_dir(name or checked.name)
    if not force and run_dir.is_dir() and _contents(run_dir):  # the command's check, in this API's words
        raise OutputError(f"the run folder {run_dir} is not empty; pass force=True to replace its run or "
                          "out= another folder")
    with run_lock(run_dir):
        prepare_run_dir(run_dir, force)
        if borrowed is not None:
            if save_model:
                borrowed.save(run_dir)
            checked.model_note = borrowed.note
        engine = Run(checked, registry, run_dir, _progress(progress))
        try:
            result = engine.execute()
        finally:
            engine.progress.stop()
    output = _output(result, engine)
    if result.status == "failed":
        error = RunFailed(f"{result.message} (record: {result.run_dir / 'run.json'})")
        error.output = output  # type: ignore[attr-defined]
        raise error
    if result.status == "interrupted":
        engine.progress.message(f"interrupted at iteration {result.iterations_done}: the images, video and "
                                f"run.json are in {result.run_dir}")
    return output


_REGISTRY: Any = None


def _registry() -> Any:
    """The plugins' registry, built once per process (models lent by Python are taken out again)."""
    global _REGISTRY
    if _REGISTRY is None:
        from pipeline_core.host.manager import build_registry

        _REGISTRY = build_registry()
        for line in _REGISTRY.problems:
            import warnings

            warnings.warn(line, stacklevel=3)
    return _REGISTRY


def _source(recipe: _RecipeLike, overrides: list[str]) -> Any:
    """The recipe as the loader's :class:`Source`, overrides applied."""
    from pipeline_core.recipe.loader import load_source
    from pipeline_core.recipe.source import Source, apply_override, parse

    if isinstance(recipe, Mapping):
        source = Source(data=json.loads(json.dumps(dict(recipe), default=str)), file="recipe", base_dir=Path.cwd())
    elif isinstance(recipe, str) and ("\n" in recipe or re.match(r"\s*[\w-]+\s*:\s", recipe)):
        source = parse(recipe, "recipe", Path.cwd())
    elif isinstance(recipe, (str, Path)):
        return load_source(recipe, overrides)
    else:
        raise RecipeError(f"recipe: expected a file, YAML text or a mapping, got {type(recipe).__name__}")
    if not isinstance(source.data, dict):
        raise RecipeError("recipe: the YAML text is not a mapping of keys (iterations, model, steps, ...)")
    for text in overrides:
        apply_override(source, text)
    return source


def _overrides(spec: str | None, sets: Any, seed: Any, device: Any, borrowed: Any) -> list[str]:
    """The keyword arguments as the command's overrides, each labelled as the caller wrote it."""
    from pipeline_core.recipe.model_arg import model_overrides
    from pipeline_core.recipe.source import Override

    found: list[str] = []
    if spec is not None:
        found += [Override(str(o), f"model={spec!r}") for o in model_overrides(spec)]
    if borrowed is not None:
        found += borrowed.overrides()
    if isinstance(sets, Mapping):
        found += [Override(f"{k}={json.dumps(v)}", f"set {k}={v!r}") for k, v in sets.items()]
    elif sets is not None:
        if isinstance(sets, str):
            sets = [sets]
        found += [Override(str(s), f"set {s}") for s in sets]
    if seed is not None:
        found.append(Override(f"seed={int(seed)}", f"seed={seed}"))
    if device is not None:
        found.append(Override(f"device={json.dumps(str(device))}", f"device={device!r}"))
    return found


def _progress(show: bool) -> Any:
    from pipeline_core.run.progress import make_progress

    if not show:
        return make_progress(True)
    from pipeline_core.output.notebook import in_notebook
    from pipeline_core.run.progress import notebook_progress

    if in_notebook():
        return notebook_progress()
    from rich.console import Console

    return make_progress(False, Console(stderr=True))


def _output(result: Any, engine: Any) -> RunOutput:
    from pipeline_core.output.notebook import final_images

    images, targets, probs = final_images(result, engine)
    return RunOutput(result.status, Path(result.run_dir), result.iterations_done, result.message, images,
                     targets, probs, result.record)


# -- visualize ------------------------------------------------------------------------------


def visualize(model: _ModelLike, what: str, *, photo: str | Path | None = None, iterations: int | None = None,
              size: int | None = None, out: str | Path | None = None, seed: int | None = None,
              device: str | None = None, progress: bool = True, force: bool = False) -> RunOutput:
    """One picture of what ``model`` sees, with the shipped recipes' settings.

    ``what``: ``"labels:castle"`` (or ``"labels:483"``) a class from noise; ``"LAYER:CHANNEL"``
    (``"features.14:3"``) a channel; ``"neuron:LAYER:CHANNEL"`` one neuron at the centre of the
    layer's grid; ``"LAYER"`` alone DeepDream of ``photo`` through that layer. ``iterations``
    and ``size`` (the image's side) shorten or shrink the recipe."""
    from pipeline_core.recipe.presets import preset

    kind, fill = _parse_what(what, photo)
    data = preset(kind, fill, iterations)
    if size is not None:
        data["steps"][0]["size"] = int(size)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{kind}-{what.strip().rsplit(':', 1)[-1]}")[:60]
    return _call(data, model, None, out, seed, device, progress, False, slug, force)


def _parse_what(what: str, photo: str | Path | None) -> tuple[str, dict[str, Any]]:
    if not isinstance(what, str) or not what.strip():
        raise RecipeError(f"visualize: say what to show, e.g. 'labels:castle', 'features.14:3' or 'features.14'; "
                          f"got {what!r}")
    text = what.strip()
    if text.startswith("labels:"):
        target = text[len("labels:"):].strip()
        return "class", {"target": int(target) if target.isdigit() else target}
    neuron = text.startswith("neuron:")
    if neuron:
        text = text[len("neuron:"):]
    layer, sep, channel = text.rpartition(":") if ":" in text else (text, "", "")
    if sep:
        if not channel.strip().isdigit():
            raise RecipeError(f"visualize {what!r}: the channel after ':' must be a number, e.g. 'features.14:3'")
        return ("neuron" if neuron else "channel"), {"layer": layer, "channel": int(channel)}
    if neuron:
        raise RecipeError(f"visualize {what!r}: name the neuron's channel, e.g. 'neuron:features.14:3'")
    if photo is None:
        raise RecipeError(f"visualize {what!r}: a layer alone is DeepDream of a photo: give photo=PATH "
                          f"(or 'LAYER:CHANNEL' for a channel from noise)")
    return "layer", {"layer": layer, "images": [str(Path(photo).expanduser().resolve())]}


# -- layers and classes ----------------------------------------------------------------------


def layers(model: _ModelLike, *, size: int | None = None) -> list[dict[str, Any]]:
    """What ``pipeline layers`` lists: per module path, its type, one image's output shape and
    its channel count, in definition order (dicts with path, type, shape, channels, calls)."""
    from dataclasses import asdict

    from pipeline_core.commands.layers import list_layers
    from pipeline_core.run.borrowed import module_lent, torch_state_kept
    from pipeline_core.run.python_model import lend

    with torch_state_kept():
        registry = _registry()
        if isinstance(model, str):
            return [asdict(r) for r in list_layers(model, registry, size=size)[2]]
        borrowed = lend(model, registry)
        try:
            with module_lent(borrowed.module):
                return [asdict(r) for r in list_layers(borrowed.name, registry, size=size)[2]]
        finally:
            registry.models.pop(borrowed.name, None)


def classes(model: _ModelLike) -> list[str]:
    """What ``pipeline classes`` lists: the model's class names in output order."""
    from pipeline_core.commands.classes import list_classes
    from pipeline_core.run.python_model import lend

    registry = _registry()
    if isinstance(model, str):
        return list_classes(model, registry)[1]
    borrowed = lend(model, registry)
    registry.models.pop(borrowed.name, None)
    return list(borrowed.info.categories)
