"""Errors that the command line turns into one human line.

Every problem a user can fix (a recipe, an argument, a missing file) is raised as a
:class:`PipelineError` subclass carrying *where* it happened, so the CLI can print
``file:line: step 3 (blur): key 'kernel': ...`` instead of a traceback.
"""

from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass
from typing import Iterable


__all__ = [
    "PipelineError",
    "RecipeError",
    "ModelLoadError",
    "OutputError",
    "RunFailed",
    "PluginError",
    "Location",
    "closest",
    "did_you_mean",
]

#: characters that reorder the text a terminal shows (bidirectional overrides and isolates)
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _printable(text: object) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``, ``\\n``), never obeyed.

    Recipes, file names, class lists and plugins' messages reach the terminal; an escape
    sequence among them must not recolour, move the cursor or retitle the window, and a
    newline must not split a one-line message.
    """
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif unicodedata.category(ch) == "Cc" or ch in _BIDI:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The nearest valid spelling of ``word``, for 'did you mean' hints."""
    pool = [str(c) for c in choices]
    lowered = {c.lower(): c for c in pool}
    match = difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    hint = closest(word, choices)
    return f"; did you mean '{hint}'?" if hint else ""


@dataclass
class Location:
    """Where in a recipe a problem sits. Every part is optional."""

    file: str | None = None
    line: int | None = None
    step_index: int | None = None
    step_name: str | None = None
    key: str | None = None

    def render(self) -> str:
        parts: list[str] = []
        if self.file:
            parts.append(f"{self.file}:{self.line}" if self.line else self.file)
        if self.step_index is not None:
            name = f" ({self.step_name})" if self.step_name else ""
            parts.append(f"step {self.step_index}{name}")
        if self.key:
            parts.append(f"key '{self.key}'")
        return ": ".join(parts)


class PipelineError(Exception):
    """Base of every error the user can act on. ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, location: Location | None = None):
        super().__init__(message)
        self.message = message
        self.location = location or Location()

    def __str__(self) -> str:
        where = self.location.render()
        text = f"{where}: {self.message}" if where else self.message
        # one line whatever the user typed: a newline or an escape sequence in a key, a class name
        # or a --set value is shown, not obeyed
        return _printable(text.replace("\r\n", "\n"))


class RecipeError(PipelineError):
    """The recipe or the command-line arguments are invalid (exit code 2)."""

    exit_code = 2


class ModelLoadError(PipelineError):
    """A model could not be built or its weights could not be had."""

    exit_code = 2


class OutputError(PipelineError):
    """The run folder cannot take the run's outputs (unwritable, or its disk too full): exit 2,
    since the fix is another --out, not another run."""

    exit_code = 2


class RunFailed(PipelineError):
    """The optimisation itself failed (NaN, out of memory, a step raised)."""

    exit_code = 1


class PluginError(PipelineError):
    """A plugin misbehaved; the host reports it and carries on without it."""
