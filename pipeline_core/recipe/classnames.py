"""Class names as people say them: a target by any of its names, not only the model's first.

torchvision's ImageNet categories hold one name per class, the first WordNet gives ("beacon"
for "beacon, lighthouse, beacon light, pharos"; "tabby" for "tabby, tabby cat"), so the names
people use were unknown classes. For a model whose classes are ImageNet-1k's (1000 names that
agree with ``imagenet_names.txt``, shipped with the package), a name is looked up, in order:

1. the model's own category name (case, spaces, '-' and '_' ignored), as before, unless it is
   also the first name of another class ("crane": the bird and the machine; "maillot";
   "Cardigan" the corgi and "cardigan" the sweater), which is ambiguous;
2. any WordNet synonym ("lighthouse", "tabby cat", "German shepherd dog", "pharos");
3. the words of a name: every word given appears, as a whole word, in one of the class's
   names ("shepherd" is the German shepherd, "cat" is one of several cats).

A name that fits several classes at the first step that finds any is an error listing the
candidates (index and name), never a silent choice; an index is always exact. Other models
(a ``categories`` list or file of their own) match their own names only, as before.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

from pipeline_core.errors import RecipeError, closest

DATA = Path(__file__).with_name("imagenet_names.txt")

#: how many candidates an ambiguous name's message lists before "and N more"
SHOWN = 8


def class_key(name: str) -> str:
    """A class name as recipes compare it: case, spaces, '_' and '-' ignored."""
    return " ".join(str(name).replace("_", " ").replace("-", " ").lower().split())


@functools.cache
def imagenet_names() -> tuple[tuple[str, ...], ...]:
    """Every WordNet name of each ImageNet-1k class, in index order (the first is WordNet's first)."""
    rows: list[tuple[str, ...]] = []
    for line in DATA.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            _index, _wnid, names = line.split("\t")
            rows.append(tuple(names.split(", ")))
    return tuple(rows)


def synonyms_of(categories: Sequence[str]) -> list[tuple[str, ...]] | None:
    """Per class, every name it answers to, when ``categories`` are ImageNet-1k's (nearly every
    name one of WordNet's for the class at that index); None for other class lists."""
    if len(categories) != 1000:
        return None
    names = imagenet_names()
    agree = sum(class_key(c) in {class_key(n) for n in names[i]} for i, c in enumerate(categories))
    if agree < 950:
        return None
    return [tuple(dict.fromkeys([str(c), *names[i]])) for i, c in enumerate(categories)]


class ClassNames:
    """The names a model's classes answer to, and the lookups recipes and ``pipeline classes`` use."""

    def __init__(self, categories: Sequence[str], model_name: str = "the model"):
        self.categories = [str(c) for c in categories]
        self.model_name = model_name
        found = synonyms_of(self.categories)
        #: whether the classes are ImageNet-1k's, so WordNet's names apply
        self.imagenet = found is not None
        self.synonyms = found or [(c,) for c in self.categories]

    @functools.cached_property
    def _keys(self) -> list[set[str]]:
        return [{class_key(n) for n in names} for names in self.synonyms]

    def _words(self, key: str) -> list[int]:
        wanted = set(key.split())
        return [i for i, keys in enumerate(self._keys) if any(wanted <= set(k.split()) for k in keys)]

    def candidates(self, name: str) -> list[int]:
        """The classes ``name`` names at the first of the module's three steps that finds any."""
        key = class_key(name)
        if not key:
            return []
        own = [i for i, c in enumerate(self.categories) if class_key(c) == key]
        if own:
            return sorted(set(own) | self._first_names(key))
        synonym = [i for i, keys in enumerate(self._keys) if key in keys]
        return synonym or (self._words(key) if self.imagenet else [])

    def _first_names(self, key: str) -> set[int]:
        """Classes whose first WordNet name is ``key`` (the model may have lengthened it: 'crane bird')."""
        if not self.imagenet:
            return set()
        names = imagenet_names()
        return {i for i, row in enumerate(names) if class_key(row[0]) == key}

    def describe(self, index: int) -> str:
        names = self.synonyms[index]
        others = [n for n in names[1:] if class_key(n) != class_key(names[0])][:2]
        return f"{index} {names[0]}" + (f" ({', '.join(others)})" if others else "")

    def index(self, name: str) -> int:
        """The one class ``name`` names; RecipeError naming the candidates or the nearest name."""
        found = self.candidates(name)
        if len(found) == 1:
            return found[0]
        if found:
            shown = "; ".join(self.describe(i) for i in found[:SHOWN])
            more = f"; and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
            raise RecipeError(f"'{name}' names {len(found)} classes of {self.model_name}: {shown}{more}; "
                              "give the index or a longer name ('pipeline classes MODEL --match TEXT' lists them)")
        raise RecipeError(f"unknown class '{name}' for {self.model_name}{self.did_you_mean(name)}")

    def did_you_mean(self, name: str) -> str:
        every = {n: i for i, names in enumerate(self.synonyms) for n in names}
        hint = closest(name, every)
        if hint is None:
            return ""
        i = every[hint]
        own = self.categories[i]
        return f"; did you mean '{hint}'?" if class_key(hint) == class_key(own) else \
            f"; did you mean '{hint}' (class {i}, {own})?"

    def matching(self, text: str) -> list[int]:
        """Classes any of whose names contains ``text`` (``pipeline classes --match``)."""
        key = class_key(text)
        return [i for i, keys in enumerate(self._keys) if any(key in k for k in keys)]
