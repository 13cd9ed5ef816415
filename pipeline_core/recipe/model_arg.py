"""A model named on the command line, ``NAME[,KEY=VALUE...]``: read as a recipe's ``model:`` section.

``pipeline run --model``, ``pipeline bench --model``, ``pipeline layers``, ``pipeline classes``
and ``pipeline evaluate`` (runs and sweeps) all take a model this way, so it is read here, once,
below the commands: ``NAME`` is anything ``pipeline models`` lists, the keys are those of a
recipe's ``model:`` section (values read as YAML; ``mean``/``std`` may be one number for all
three channels) and are checked by the same rules (a std of 0, a NaN mean or a size of 3 px is
refused before anything loads); ``label`` (evaluate only) names the model in tables. Building
the named model goes through the registry exactly as a run builds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import yaml
from pydantic import ValidationError

from pipeline_core import regular
from pipeline_core.errors import ModelLoadError, PipelineError, RecipeError
from pipeline_core.model import ModelSpec
from pipeline_core.recipe.messages import describe
from pipeline_core.recipe.sections import ModelSection
from pipeline_core.recipe.source import Override, expand_user
from pipeline_core.registry import Registry

if TYPE_CHECKING:  # only the models it builds need torch; --model for a listing or a check does not
    import torch

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
    """Split on commas outside brackets and quotes: ``a,mean=[1,2,3],weights="x,y.pth"`` -> 3 parts.

    A quote counts only where it opens a value (right after ``=``) and closes it (right before
    a comma or the end), so an apostrophe inside a path (``O'Brien/w.pth``) is an ordinary
    character."""
    parts, depth, current, quote = [], 0, [], ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and (i + 1 == len(text) or text[i + 1] == ","):
                quote = ""
        elif ch in "\"'" and i > 0 and text[i - 1] == "=":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def unquoted(raw: str) -> str:
    """A path or label as written, without the quotes that let it hold a comma or a bracket."""
    return raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'" else raw


def quoted_path(path: Path | str) -> str:
    """``path`` as ``--model`` reads it back: in quotes (double, or single when it holds a double
    quote) when it holds a comma or a bracket; nothing is escaped, so any character survives."""
    text = str(path)
    if not any(ch in text for ch in ",[]()"):
        return text
    return f"'{text}'" if '"' in text else f'"{text}"'


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
        if key in ("weights", "label"):
            raw = unquoted(raw)
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
                split = any("=" not in p for p in parts[1:])  # a path cut at a comma: the rest is no KEY=VALUE
                raise RecipeError(f"--model {text}: no weights file at {model.weights}"
                                  + ("; a path with a comma goes in quotes: weights=\"PATH\"" if split else ""))
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
    values["ensemble"] = []  # the members were the recipe's model's company: --set model.ensemble=[...] adds some
    return [Override(f"model.{key}={json.dumps(value)}", f"--model {text}") for key, value in values.items()]


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


def module_from_arg(text: str, registry: Registry, base: Path | None = None) -> tuple[torch.nn.Module, Any, str]:
    """(module, its ModelInfo, model name) for a ``NAME[,KEY=VALUE...]`` argument, from the skeleton
    where the model has one (nothing downloaded); the listing commands share it. Weights named in
    the argument are loaded as a run loads them, so a file that is not this model's weights (a
    text file, another architecture's) is one clear line, not a listing of something else."""
    model = parse_model_arg(text, base, RUN_KEYS)
    module, info = build_module(model, registry, skeleton=getattr(model, "weights", None) is None)
    return module, info, model.name
