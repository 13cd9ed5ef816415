"""What is known about a run before anything heavy is loaded.

Steps receive the plan in ``bind`` to check their parameters against the run: the number of
iterations, the batch size, the model's classes and input size. Everything here comes from the
recipe and from model *metadata*, so ``pipeline validate`` can catch a misspelt class name
without downloading or loading a model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

from pipeline_core.errors import RecipeError
from pipeline_core.recipe.classnames import ClassNames, class_key  # noqa: F401 - class_key: imported from here

ClassRef = Union[int, str]


@dataclass
class Plan:
    iterations: int
    batch: int
    categories: Sequence[str]
    model_name: str
    model_size: int | None
    seed: int
    base_dir: Path = field(default_factory=Path.cwd)

    def class_index(self, ref: ClassRef) -> int:
        """A class by index or by name (case, spaces and underscores ignored; any synonym, see
        :mod:`~pipeline_core.recipe.classnames`)."""
        n = len(self.categories)
        if isinstance(ref, bool):
            raise RecipeError(f"expected a class name or index, got {ref!r}")
        if isinstance(ref, int):
            if not 0 <= ref < n:
                raise RecipeError(f"class index {ref} is out of range: {self.model_name} has classes 0..{n - 1}")
            return ref
        return self.names.index(ref)

    @functools.cached_property
    def names(self) -> ClassNames:
        """The names the classes answer to: for ImageNet-1k every WordNet synonym (classnames)."""
        return ClassNames(self.categories, self.model_name)

    def class_name(self, index: int) -> str:
        return str(self.categories[index]) if 0 <= index < len(self.categories) else str(index)

    def per_image(self, refs: ClassRef | Sequence[ClassRef]) -> list[int]:
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
