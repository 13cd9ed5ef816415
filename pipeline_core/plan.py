"""What a step is told about its run in ``bind(plan)``, before anything heavy is loaded.

Steps receive the plan to check their parameters against the run: the number of iterations,
the batch size, the model's classes and input size. Everything here comes from the recipe and
from model *metadata*, so ``pipeline validate`` can catch a misspelt class name without
downloading or loading a model. The host makes the plan when it reads a recipe; a plugin's own
tests may make one directly (``Plan(iterations=4, batch=2, categories=[...], model_name="tiny",
model_size=32, seed=0)``) to call ``bind`` on a step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

from pipeline_core.errors import RecipeError

__all__ = ["Plan"]

_ClassRef = Union[int, str]


@dataclass
class Plan:
    """The run's shape and the model's classes, as the recipe and the model's metadata give them."""

    iterations: int
    batch: int
    categories: Sequence[str]
    model_name: str
    model_size: int | None
    seed: int
    #: the folder the recipe's relative paths are read from (its own folder)
    base_dir: Path = field(default_factory=Path.cwd)

    def class_index(self, ref: _ClassRef) -> int:
        """A class by index or by name (case, spaces and underscores ignored; for ImageNet-1k's
        classes any WordNet synonym, or the words of one: "lighthouse", "tabby cat")."""
        n = len(self.categories)
        if isinstance(ref, bool):
            raise RecipeError(f"expected a class name or index, got {ref!r}")
        if isinstance(ref, int):
            if not 0 <= ref < n:
                raise RecipeError(f"class index {ref} is out of range: {self.model_name} has classes 0..{n - 1}")
            return ref
        return self.names.index(ref)

    @functools.cached_property
    def names(self) -> Any:
        """The names the classes answer to (the host's tables, a private type: for ImageNet-1k
        every WordNet synonym); :meth:`class_index` is the public way to look a name up."""
        # the tables are the recipe reader's, loaded on the first lookup by name; imported here,
        # not at the top, so the public face never imports a private room when it is imported
        from pipeline_core.recipe.classnames import ClassNames

        return ClassNames(self.categories, self.model_name)

    def class_name(self, index: int) -> str:
        return str(self.categories[index]) if 0 <= index < len(self.categories) else str(index)

    def per_image(self, refs: _ClassRef | Sequence[_ClassRef]) -> list[int]:
        """Resolve one class or a list of classes to one class index per image of the batch.

        A single class applies to every image; a list is repeated when its length divides the
        batch (3 classes in a batch of 6 gives each class twice: two seeds per class).
        """
        if isinstance(refs, (list, tuple)):
            if not refs:
                raise RecipeError("the list of classes is empty")
            if self.batch % len(refs):
                raise RecipeError(
                    f"{len(refs)} classes do not divide the batch of {self.batch}; "
                    f"set 'batch' to a multiple of {len(refs)}"
                )
            indices = [self.class_index(r) for r in refs]
            return [indices[i % len(indices)] for i in range(self.batch)]
        return [self.class_index(refs)] * self.batch
