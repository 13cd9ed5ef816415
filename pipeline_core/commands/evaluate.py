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

import os
from pathlib import Path
from typing import Any, Sequence

from pipeline_core.errors import OutputError, RecipeError, _printable
# the model argument and the scoring are libraries below the commands (several commands and the
# sweep wing share them); their names stay importable from here
from pipeline_core.recipe.model_arg import (  # noqa: F401
    MAX_CATEGORIES_BYTES, RUN_KEYS, EvalModel, build_module, model_overrides, parse_model_arg)
from pipeline_core.registry import Registry
from pipeline_core.run.device import pick_device
from pipeline_core.run.record import atomic_write_json
from pipeline_core.scoring.images import ScoredImage, final_target, load_images, read_run  # noqa: F401
from pipeline_core.scoring.score import FILE, SWEEP_FILE, ModelScore, Tally, build_adapter, score, target_in  # noqa: F401
from pipeline_core.sweep.scores import evaluate_sweep, render_sweep


def evaluate_run(run_dir: Path, models: Sequence[EvalModel], registry: Registry, device: str = "cpu",
                 batch_size: int = 16, write: bool = True) -> dict[str, Any]:
    """Score the run's final images with each model; write evaluation.json; return its contents."""
    run_dir = Path(run_dir)
    if not models:
        raise RecipeError("give at least one --model to score with (see 'pipeline models')")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RecipeError(f"--batch-size must be a whole number of at least 1, got {batch_size!r}")
    if (run_dir / SWEEP_FILE).is_file() and not (run_dir / "run.json").is_file():
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
