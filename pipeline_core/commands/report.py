"""``pipeline report DIR``: rebuild the page of a run folder (report.html) or a sweep (atlas.html).

A run writes its report itself, at checkpoints and at the end; this command is for the other
times: a run killed outright (no chance to write its last report), a folder copied from a
machine with an older version, an evaluation added by hand, a sweep whose jobs have finished
since its atlas was written. The page is rebuilt from the folder's files alone.
"""

from __future__ import annotations

from pathlib import Path

from pipeline_core.errors import OutputError, RecipeError


def rebuild(folder: Path) -> Path:
    """The page of ``folder`` rebuilt; its path. One-line errors for a folder that holds neither."""
    from pipeline_core.output.report import SWEEP, refresh
    from pipeline_core.run.record import _why, read_record

    from pipeline_core import regular
    from pipeline_core.output.metrics import FILE as METRICS

    folder = Path(folder)
    if not folder.is_dir():
        raise RecipeError(f"{folder}: no such folder (give a run folder or a sweep folder)")
    for name in (SWEEP, "run.json", METRICS, "evaluation.json"):  # read whole: a FIFO would hang the page
        kind = regular.problem(folder / name)
        if kind:
            raise RecipeError(f"{folder / name} is {kind}, not a regular file: the page reads it whole; remove it "
                              "(or put the run's own file there) and run pipeline report again")
    if not (folder / SWEEP).is_file():
        if not (folder / "run.json").is_file():
            raise RecipeError(f"{folder} holds no run.json (a run folder) and no sweep.json (a sweep folder): "
                              "nothing to make a page of")
        read_record(folder)  # the one clear line about a run.json that is no run record
    try:
        return refresh(folder)
    except OSError as exc:
        raise OutputError(f"cannot write the page in {folder}: {_why(exc)}") from None
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
