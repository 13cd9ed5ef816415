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
table and in evaluation.json.

Targets are matched to the evaluator's classes by name (case, spaces and underscores
ignored) and otherwise by index when the evaluator has the same number of classes; an image
whose target the evaluator does not know is counted as not scored. A blend is scored against
its final target.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from pipeline_core.errors import ModelLoadError, PipelineError, RecipeError
from pipeline_core.model import ModelAdapter, ModelSpec
from pipeline_core.recipe.plan import class_key
from pipeline_core.run.record import atomic_write_json
from pipeline_core.registry import Registry

FILE = "evaluation.json"
_SPEC_KEYS = ("weights", "mean", "std", "size", "categories", "label")


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


def _triple(key: str, value: Any, text: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)  # type: ignore[return-value]
    raise RecipeError(f"--model {text}: {key} must be one number or three, like {key}=[0.5,0.5,0.5]")


def parse_model_arg(text: str, base: Path | None = None) -> EvalModel:
    """Read ``NAME[,KEY=VALUE...]`` (see the module docstring); paths are relative to ``base``."""
    base = base or Path.cwd()
    parts = _split_top(text)
    if not parts or "=" in parts[0]:
        raise RecipeError(f"--model {text!r}: start with a model name (see 'pipeline models')")
    model = EvalModel(name=parts[0], text=text)
    for part in parts[1:]:
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in _SPEC_KEYS:
            raise RecipeError(f"--model {text}: '{part}' is not KEY=VALUE with KEY one of {', '.join(_SPEC_KEYS)}")
        raw = raw.strip()
        try:
            value = yaml.safe_load(raw) if key not in ("weights", "label") else raw
        except yaml.YAMLError:
            raise RecipeError(f"--model {text}: cannot read the value of {key}: {raw!r}") from None
        if key == "weights":
            path = Path(raw).expanduser()
            model.weights = path if path.is_absolute() else base / path
            if not model.weights.is_file():
                raise RecipeError(f"--model {text}: no weights file at {model.weights}")
        elif key in ("mean", "std"):
            setattr(model, key, _triple(key, value, text))
        elif key == "size":
            if not isinstance(value, int) or isinstance(value, bool) or not 8 <= value <= 4096:
                raise RecipeError(f"--model {text}: size must be a whole number of pixels, got {raw!r}")
            model.size = value
        elif key == "categories":
            if isinstance(value, list):
                model.categories = [str(v) for v in value]
            else:
                path = Path(raw).expanduser()
                path = path if path.is_absolute() else base / path
                try:
                    model.categories = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
                except OSError:
                    raise RecipeError(f"--model {text}: cannot read the class-name file {path}") from None
        elif key == "label":
            model.label = raw
    if not model.label:
        model.label = model.name + (f" ({model.weights.name})" if model.weights else "")
    return model


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
    return max(targets, key=lambda t: t.get("final_weight", t.get("weight", 1.0)))


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[ScoredImage]]:
    """run.json and, per final image, its file and final target."""
    record_path = run_dir / "run.json"
    if not record_path.is_file():
        raise RecipeError(f"{run_dir} is not a run folder: it has no run.json")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{record_path} is not readable JSON ({exc})") from None
    images = []
    for entry in record.get("images") or []:
        target = final_target(entry.get("targets") or [])
        if target is None:
            continue
        images.append(ScoredImage(entry["file"], int(target["index"]), str(target["name"])))
    if not images:
        raise RecipeError(f"{run_dir}: run.json lists no final images with a target (status: {record.get('status')})")
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
        with Image.open(path) as im:
            array = np.array(im.convert("RGB"))
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

    def add(self, rank: int, prob: float) -> None:
        self.n += 1
        self.top1 += rank == 1
        self.top5 += rank <= 5
        self.prob += prob

    def summary(self) -> dict[str, Any]:
        n = max(self.n, 1)
        return {"images": self.n, "top1": round(self.top1 / n, 4), "top5": round(self.top5 / n, 4),
                "mean_target_probability": round(self.prob / n, 4)}


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


def build_adapter(model: EvalModel, registry: Registry, device: torch.device) -> ModelAdapter:
    """Load a scoring model exactly as a run would (same registry, weights and preprocessing)."""
    try:
        model_def = registry.model(model.name)
    except KeyError as exc:
        raise RecipeError(f"--model {model.text or model.name}: {exc.args[0]} (see 'pipeline models')") from None
    spec = model.spec()
    info = model_def.describe(spec)
    try:
        module = model_def.build(spec)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's or torchvision's builder failed
        raise ModelLoadError(f"could not build model '{model.name}': {exc}") from exc
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
            rank = int((p > p[index]).sum()) + 1
            prob = float(p[index])
            result.overall.add(rank, prob)
            result.per_class.setdefault(item.target_name, Tally()).add(rank, prob)
            top = int(p.argmax())
            result.images.append({"file": item.file, "target": item.target_name, "rank": rank,
                                  "target_probability": round(prob, 6),
                                  "top1": str(cats[top]) if top < len(cats) else str(top),
                                  "top1_probability": round(float(p[top]), 6)})
    return result


def evaluate_run(run_dir: Path, models: Sequence[EvalModel], registry: Registry, device: str = "cpu",
                 batch_size: int = 16, write: bool = True) -> dict[str, Any]:
    """Score the run's final images with each model; write evaluation.json; return its contents."""
    from pipeline_core.run.device import pick_device

    run_dir = Path(run_dir)
    if not models:
        raise RecipeError("give at least one --model to score with (see 'pipeline models')")
    record, images = read_run(run_dir)
    pictures = load_images(run_dir, images)
    dev = pick_device(device)
    scores = []
    for model in models:
        adapter = build_adapter(model, registry, dev)
        scores.append(score(adapter, model, pictures, images, batch_size))
        del adapter
    data = {
        "run": str(run_dir),
        "recipe": record.get("recipe_file"),
        "generator": (record.get("model") or {}).get("name"),
        "status": record.get("status"),
        "iterations_done": record.get("iterations_done"),
        "images": len(images),
        "models": [s.as_dict() for s in scores],
    }
    if write:
        atomic_write_json(run_dir / FILE, data)
    return data


def render(data: dict[str, Any]) -> Any:
    """The evaluation as rich tables: one overall row per model, then one table per model by class."""
    from rich.console import Group
    from rich.table import Table

    overall = Table(title=f"{data['run']}: {data['images']} images by {data.get('generator') or '?'}")
    for col in ("model", "images", "top-1", "top-5", "mean p(target)"):
        overall.add_column(col, justify="left" if col == "model" else "right")
    tables: list[Any] = [overall]
    for m in data["models"]:
        o = m["overall"]
        overall.add_row(m["model"], str(o["images"]), f"{o['top1']:.0%}", f"{o['top5']:.0%}",
                        f"{o['mean_target_probability']:.3f}")
        if len(m["per_class"]) > 1:
            per = Table(title=f"by class: {m['model']}")
            for col in ("class", "images", "top-1", "top-5", "mean p(target)"):
                per.add_column(col, justify="left" if col == "class" else "right")
            for name, c in m["per_class"].items():
                per.add_row(name, str(c["images"]), f"{c['top1']:.0%}", f"{c['top5']:.0%}",
                            f"{c['mean_target_probability']:.3f}")
            tables.append(per)
        if m["unscored"]:
            tables.append(f"{m['model']}: {len(m['unscored'])} images not scored (target class unknown to it)")
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
