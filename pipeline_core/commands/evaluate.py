"""``pipeline evaluate``: do other classifiers see the class a run aimed at?

The model that generated an image always "recognises" it: gradient descent made sure of that,
even for adversarial noise. Only an independent classifier says whether the image shows the
class in a way that carries over, which is the closest cheap stand-in for "a person would
recognise it". This module scores a finished run's final images (``run.json`` names each file
and its targets) with any models the registry can load, and reports, per model, the share of
images whose target is the model's top-1 and top-5 class and the mean probability of the
target, overall and per class.

Models are named as on the command line, ``NAME[,KEY=VALUE...]``: ``NAME`` is anything
``pipeline models`` lists (a torchvision name uses torchvision's ImageNet weights; a plugin
model brings its own), and the keys are those of a recipe's ``model:`` section, values read
as YAML::

    efficientnet-lite0
    resnet50
    mobilenet_v2,weights=../shared/models/mobilenet_v2_imagenet.pth,mean=0.5,std=0.5,size=224
    my_net,weights=net.pth,categories=classes.txt,label=my fine-tuned net

``mean``/``std`` may be one number for all three channels; ``label`` names the model in the
table and in evaluation.json. The values are checked by the same rules as a recipe's
``model:`` section (a std of 0, a NaN mean or a size of 3 px is refused before anything
loads). ``pipeline run`` and ``pipeline bench`` take the same ``--model`` (without ``label``):
it sets the recipe's model section, as the equivalent ``--set model.KEY=VALUE`` lines would.

An image the model scores NaN or Inf for is never a hit: it counts as not in the top 1 or
top 5, with probability 0, and the table says how many there were.

Targets are matched to the evaluator's classes by name (case, spaces and underscores
ignored) and otherwise by index when the evaluator has the same number of classes; an image
whose target the evaluator does not know is counted as not scored. A blend is scored against
its final target.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from pydantic import ValidationError

from pipeline_core import regular
from pipeline_core.errors import ModelLoadError, OutputError, PipelineError, RecipeError, _printable
from pipeline_core.model import ModelAdapter, ModelSpec
from pipeline_core.recipe.messages import describe
from pipeline_core.recipe.plan import class_key
from pipeline_core.recipe.sections import ModelSection
from pipeline_core.recipe.source import Override, expand_user
from pipeline_core.run.record import atomic_write_json
from pipeline_core.registry import Registry

FILE = "evaluation.json"
SWEEP_FILE = "sweep.json"
_SPEC_KEYS = ("weights", "mean", "std", "size", "categories", "label")
#: the keys ``pipeline run --model`` and ``pipeline bench --model`` take: a recipe's model section
RUN_KEYS = ("weights", "mean", "std", "size", "categories")
#: a class-name file larger than this is not one (a photo named by mistake, /dev/zero)
MAX_CATEGORIES_BYTES = 16 * 2**20


@dataclass
class EvalModel:
    """One model to score with: a registry name plus the recipe-style ``model:`` keys."""

    name: str
    weights: Path | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    size: int | None = None
    categories: list[str] | None = None
    label: str = ""
    text: str = ""

    def spec(self) -> ModelSpec:
        return ModelSpec(name=self.name, weights=self.weights, mean=self.mean, std=self.std, size=self.size,
                         categories=self.categories)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "weights": str(self.weights) if self.weights else None,
                "mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None,
                "size": self.size}


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets: ``a,mean=[1,2,3],b`` -> 3 parts."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _number(value: Any) -> Any:
    """A number as YAML would read it, and as Python does where YAML 1.1 does not ('1e-3')."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _triple(key: str, value: Any, text: str) -> tuple[float, float, float]:
    value = _number(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value,) * 3  # type: ignore[return-value]
    if isinstance(value, list) and len(value) == 3:
        items = [_number(v) for v in value]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            return tuple(items)  # type: ignore[return-value]
    raise RecipeError(f"--model {text}: {key} must be one number or three, like {key}=[0.5,0.5,0.5]")


def _read_categories(path: Path, text: str) -> list[str]:
    try:
        if not path.is_file() or path.stat().st_size > MAX_CATEGORIES_BYTES:
            raise OSError
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError):
        raise RecipeError(f"--model {text}: cannot read the class-name file {path}") from None


def parse_model_arg(text: str, base: Path | None = None, keys: Sequence[str] = _SPEC_KEYS) -> EvalModel:
    """Read ``NAME[,KEY=VALUE...]`` (see the module docstring); paths are relative to ``base``.

    The values pass the checks of a recipe's ``model:`` section (:class:`ModelSection`)."""
    base = base or Path.cwd()
    parts = _split_top(text)
    if not parts or "=" in parts[0]:
        raise RecipeError(f"--model {text!r}: start with a model name (see 'pipeline models')")
    model = EvalModel(name=parts[0], text=text)
    given: dict[str, Any] = {"name": model.name}
    for part in parts[1:]:
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in keys:
            raise RecipeError(f"--model {text}: '{part}' is not KEY=VALUE with KEY one of {', '.join(keys)}")
        if key in given:
            raise RecipeError(f"--model {text}: {key} is given twice; keep one")
        raw = raw.strip()
        try:
            value = yaml.safe_load(raw) if key not in ("weights", "label") else raw
        except (yaml.YAMLError, ValueError, OverflowError, RecursionError):
            raise RecipeError(f"--model {text}: cannot read the value of {key}: {raw!r}") from None
        if key == "weights":
            if not raw:
                raise RecipeError(f"--model {text}: weights is empty; give a state-dict file")
            path = expand_user(raw, f"--model {text}")
            model.weights = path if path.is_absolute() else base / path
            kind = regular.problem(model.weights)
            if kind:  # a FIFO would make the weights' reader wait for ever
                raise RecipeError(f"--model {text}: the weights {model.weights} are {kind}, not a regular file")
            if not model.weights.is_file():
                raise RecipeError(f"--model {text}: no weights file at {model.weights}")
            given[key] = str(model.weights)
        elif key in ("mean", "std"):
            given[key] = _triple(key, value, text)
        elif key == "size":
            if not isinstance(value, int) or isinstance(value, bool):
                raise RecipeError(f"--model {text}: size must be a whole number of pixels, got {raw!r}")
            given[key] = value
        elif key == "categories":
            if isinstance(value, list):
                given[key] = [str(v) for v in value]
            else:
                path = expand_user(raw, f"--model {text}")
                given[key] = _read_categories(path if path.is_absolute() else base / path, text)
            if not given[key]:
                raise RecipeError(f"--model {text}: the list of class names is empty")
        elif key == "label":
            model.label = raw
    try:
        section = ModelSection.model_validate({k: v for k, v in given.items() if k != "label"})
    except ValidationError as exc:
        errors = exc.errors()
        key, msg = describe(errors[0], ModelSection, errors)
        raise RecipeError(f"--model {text}: {key or 'the model'}: {msg}") from None
    model.mean, model.std, model.size = section.mean, section.std, section.size
    if isinstance(section.categories, list):
        model.categories = list(section.categories)
    if not model.label:
        model.label = model.name + (f" ({model.weights.name})" if model.weights else "")
    return model


def model_overrides(text: str, base: Path | None = None) -> list[Override]:
    """``pipeline run --model SPEC``: the recipe's model section as SPEC says, as overrides.

    Every key of the section SPEC can name is set (those it leaves out to null, so nothing of
    the recipe's own model, such as its mean or weights, is mixed with the new one); paths are
    made absolute from ``base`` (the shell's folder)."""
    model = parse_model_arg(text, base, RUN_KEYS)
    values = {"name": model.name, "weights": str(model.weights) if model.weights else None,
              "mean": list(model.mean) if model.mean else None, "std": list(model.std) if model.std else None,
              "size": model.size, "categories": model.categories}
    return [Override(f"model.{key}={json.dumps(value)}", f"--model {text}") for key, value in values.items()]


# -- the run's images ------------------------------------------------------------------------------


@dataclass
class ScoredImage:
    file: str
    target_index: int
    target_name: str


def final_target(targets: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The class an image ends up aimed at: the one with the largest final weight (blends)."""
    if not targets:
        return None
    return max(targets, key=_weight)


def _weight(target: dict[str, Any]) -> float:
    value = target.get("final_weight", target.get("weight", 1.0))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def _entry_problem(entry: Any) -> str | None:
    """Why an entry of run.json's "images" is not one a run writes, or None."""
    if not isinstance(entry, dict):
        return f"an entry is a {type(entry).__name__}, not a mapping"
    name = entry.get("file")
    if not isinstance(name, str) or not re.fullmatch(r"[^/\\]+\.png", name) or name.startswith("."):
        return f"the file {name!r} is not an image name in images/"
    targets = entry.get("targets")
    if targets is None:
        return None
    if not isinstance(targets, list):
        return f"the targets of {name} are not a list"
    for t in targets:
        if not isinstance(t, dict):
            return f"a target of {name} is not a mapping"
        index, cls = t.get("index"), t.get("name")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 10**9:
            return f"a target of {name} has no class index"
        if not isinstance(cls, (str, int)) or isinstance(cls, bool):
            return f"a target of {name} has no class name"
        if math.isnan(_weight(t)):
            return f"a target weight of {name} is not a number"
    return None


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[ScoredImage]]:
    """run.json and, per final image, its file and final target."""
    from pipeline_core.run.record import read_record

    record_path = run_dir / "run.json"
    if not record_path.is_file():
        raise RecipeError(f"{run_dir} is not a run folder: it has no run.json")
    record = read_record(run_dir)
    entries = record.get("images")
    if entries is not None and not isinstance(entries, list):
        raise RecipeError(f"{record_path} is not a run record: its 'images' is not a list")
    images = []
    for entry in entries or []:
        problem = _entry_problem(entry)
        if problem:
            raise RecipeError(f"{record_path} is not a run record this tool wrote: {problem}")
        target = final_target(entry.get("targets") or [])
        if target is None:
            continue
        images.append(ScoredImage(entry["file"], int(target["index"]), str(target["name"])))
    if not images:
        status = record.get("status")
        raise RecipeError(f"{run_dir}: run.json lists no final images with a target "
                          f"(status: {status if isinstance(status, str) else '?'})")
    return record, images


def load_images(run_dir: Path, images: Sequence[ScoredImage]) -> list[torch.Tensor]:
    """The final PNGs as (3, H, W) tensors in [0, 1], exactly as the run saved them."""
    import numpy as np
    from PIL import Image

    out = []
    for item in images:
        path = run_dir / "images" / item.file
        if not path.is_file():
            raise RecipeError(f"{path} is listed in run.json but missing")
        try:
            with Image.open(path) as im:
                if im.width * im.height > 4096 * 4096 * 4:
                    raise ValueError("too large")
                array = np.array(im.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise RecipeError(f"{path} is listed in run.json but is not a readable image "
                              f"({type(exc).__name__})") from None
        out.append(torch.from_numpy(array).permute(2, 0, 1).float() / 255.0)
    return out


# -- scoring ---------------------------------------------------------------------------------------


def target_in(categories: Sequence[str], index: int, name: str) -> int | None:
    """The evaluator's index for a generator's class: by name, else by index if the lists agree in size."""
    wanted = class_key(name)
    if 0 <= index < len(categories) and class_key(categories[index]) == wanted:
        return index
    for i, cat in enumerate(categories):
        if class_key(cat) == wanted:
            return i
    if re.fullmatch(r"\d+", name) and 0 <= index < len(categories):
        return index  # the generator had no names: trust the index
    return None


@dataclass
class Tally:
    n: int = 0
    top1: int = 0
    top5: int = 0
    prob: float = 0.0
    #: images whose scores held NaN or Inf (counted as misses)
    non_finite: int = 0

    def add(self, rank: int, prob: float) -> None:
        self.n += 1
        self.top1 += rank == 1
        self.top5 += rank <= 5
        self.prob += prob

    def summary(self) -> dict[str, Any]:
        n = max(self.n, 1)
        summary = {"images": self.n, "top1": round(self.top1 / n, 4), "top5": round(self.top5 / n, 4),
                   "mean_target_probability": round(self.prob / n, 4)}
        if self.non_finite:
            summary["non_finite"] = self.non_finite
        return summary


@dataclass
class ModelScore:
    model: EvalModel
    overall: Tally = field(default_factory=Tally)
    per_class: dict[str, Tally] = field(default_factory=dict)
    images: list[dict[str, Any]] = field(default_factory=list)
    unscored: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.label,
            "spec": self.model.describe(),
            "overall": self.overall.summary(),
            "per_class": {name: t.summary() for name, t in sorted(self.per_class.items())},
            "unscored": self.unscored,
            "images": self.images,
        }


def build_module(model: EvalModel, registry: Registry, where: str = "",
                 skeleton: bool = False) -> tuple[torch.nn.Module, Any]:
    """The model's module and its preprocessing, as a run would build them; ``skeleton``: the
    plugin's weightless architecture where it has one (enough for shapes, no download)."""
    try:
        model_def = registry.model(model.name)
    except KeyError as exc:
        raise RecipeError(f"{where}{exc.args[0]} (see 'pipeline models')") from None
    spec = model.spec()
    make = (model_def.skeleton or model_def.build) if skeleton else model_def.build
    try:
        module = make(spec)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's or torchvision's builder failed
        raise ModelLoadError(f"could not build model '{model.name}': {exc}") from exc
    return module, model_def.describe(spec)


def build_adapter(model: EvalModel, registry: Registry, device: torch.device) -> ModelAdapter:
    """Load a scoring model exactly as a run would (same registry, weights and preprocessing)."""
    module, info = build_module(model, registry, where=f"--model {model.text or model.name}: ")
    return ModelAdapter(module, info, device=device)


@torch.no_grad()
def score(adapter: ModelAdapter, model: EvalModel, pictures: Sequence[torch.Tensor],
          images: Sequence[ScoredImage], batch_size: int = 16) -> ModelScore:
    """Rank of each image's target among the model's classes, and its probability."""
    result = ModelScore(model)
    cats = adapter.categories
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pics = pictures[start:start + batch_size]
        size = adapter.size or pics[0].shape[-1]
        # photos of different sizes: bring each to the model's side first so they stack
        batch = torch.stack([torch.nn.functional.interpolate(p[None], size=(size, size), mode="bilinear",
                                                             align_corners=False, antialias=True)[0]
                             if tuple(p.shape[-2:]) != (size, size) else p for p in pics]).to(adapter.device)
        probs = torch.softmax(adapter(batch).logits.float(), dim=1).cpu()
        for item, p in zip(chunk, probs):
            index = target_in(cats, item.target_index, item.target_name)
            if index is None:
                result.unscored.append(item.file)
                continue
            finite = bool(torch.isfinite(p).all())
            if finite:
                rank = int((p > p[index]).sum()) + 1
                prob = float(p[index])
            else:  # NaN compares false with everything: it would rank first; it is never a hit
                rank, prob = len(p) + 1, 0.0
            tallies = [result.overall, result.per_class.setdefault(item.target_name, Tally())]
            for tally in tallies:
                tally.add(rank, prob)
                tally.non_finite += not finite
            top = int(p.nan_to_num(nan=-1.0).argmax())
            result.images.append({"file": item.file, "target": item.target_name, "rank": rank,
                                  "target_probability": round(prob, 6),
                                  "top1": str(cats[top]) if top < len(cats) else str(top),
                                  "top1_probability": round(float(p[top]), 6) if finite else None,
                                  **({} if finite else {"non_finite": True})})
    return result


def evaluate_run(run_dir: Path, models: Sequence[EvalModel], registry: Registry, device: str = "cpu",
                 batch_size: int = 16, write: bool = True) -> dict[str, Any]:
    """Score the run's final images with each model; write evaluation.json; return its contents."""
    from pipeline_core.run.device import pick_device

    run_dir = Path(run_dir)
    if not models:
        raise RecipeError("give at least one --model to score with (see 'pipeline models')")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RecipeError(f"--batch-size must be a whole number of at least 1, got {batch_size!r}")
    if (run_dir / SWEEP_FILE).is_file() and not (run_dir / "run.json").is_file():
        from pipeline_core.sweep.scores import evaluate_sweep

        return evaluate_sweep(run_dir, models, registry, device, batch_size, write)
    record, images = read_run(run_dir)
    if write and not os.access(run_dir, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {run_dir / FILE}: permission denied; copy the run folder somewhere writable")
    pictures = load_images(run_dir, images)
    dev = pick_device(device)
    scores = []
    for model in models:
        adapter = build_adapter(model, registry, dev)
        scores.append(score(adapter, model, pictures, images, batch_size))
        del adapter
    generator = record.get("model")
    data = {
        "run": str(run_dir),
        "recipe": record.get("recipe_file") if isinstance(record.get("recipe_file"), str) else None,
        "generator": generator.get("name") if isinstance(generator, dict) and isinstance(generator.get("name"), str)
        else None,
        "status": record.get("status") if isinstance(record.get("status"), str) else None,
        "iterations_done": record.get("iterations_done") if isinstance(record.get("iterations_done"), int) else None,
        "images": len(images),
        "models": [s.as_dict() for s in scores],
    }
    if write:
        try:
            atomic_write_json(run_dir / FILE, data)
        except OSError as exc:
            raise OutputError(f"cannot write {run_dir / FILE}: {exc.strerror or exc}") from None
    return data


def render(data: dict[str, Any]) -> Any:
    """The evaluation as rich tables: one overall row per model, then one table per model by class."""
    from rich.console import Group
    from rich.table import Table

    from rich.text import Text

    if data.get("kind") == "sweep":
        from pipeline_core.sweep.scores import render_sweep

        return render_sweep(data)

    def cell(value: Any) -> Text:  # names come from recipes and class lists: shown, never obeyed
        return Text(_printable(value))

    overall = Table(title=Text(_printable(f"{data['run']}: {data['images']} images by "
                                          f"{data.get('generator') or '?'}")))
    for col in ("model", "images", "top-1", "top-5", "mean p(target)"):
        overall.add_column(col, justify="left" if col == "model" else "right")
    tables: list[Any] = [overall]
    for m in data["models"]:
        o = m["overall"]
        overall.add_row(cell(m["model"]), str(o["images"]), f"{o['top1']:.0%}", f"{o['top5']:.0%}",
                        f"{o['mean_target_probability']:.3f}")
        if len(m["per_class"]) > 1:
            per = Table(title=Text(_printable(f"by class: {m['model']}")))
            for col in ("class", "images", "top-1", "top-5", "mean p(target)"):
                per.add_column(col, justify="left" if col == "class" else "right")
            for name, c in m["per_class"].items():
                per.add_row(cell(name), str(c["images"]), f"{c['top1']:.0%}", f"{c['top5']:.0%}",
                            f"{c['mean_target_probability']:.3f}")
            tables.append(per)
        if m["unscored"]:
            tables.append(Text(_printable(f"{m['model']}: {len(m['unscored'])} images not scored "
                                          "(target class unknown to it)")))
        if o.get("non_finite"):
            tables.append(Text(_printable(f"{m['model']}: {o['non_finite']} images scored NaN or Inf, counted as "
                                          "misses (the model's weights or preprocessing are broken)")))
    return Group(*tables)


def markdown(data: dict[str, Any], per_class: bool = False) -> str:
    """The overall table in Markdown (for the gallery)."""
    lines = ["| model | images | top-1 | top-5 | mean p(target) |", "|---|---:|---:|---:|---:|"]
    for m in data["models"]:
        o = m["overall"]
        lines.append(f"| {m['model']} | {o['images']} | {o['top1']:.0%} | {o['top5']:.0%} | "
                     f"{o['mean_target_probability']:.3f} |")
        if per_class and len(m["per_class"]) > 1:
            for name, c in m["per_class"].items():
                lines.append(f"| &nbsp;&nbsp;{name} | {c['images']} | {c['top1']:.0%} | {c['top5']:.0%} | "
                             f"{c['mean_target_probability']:.3f} |")
    return "\n".join(lines)
