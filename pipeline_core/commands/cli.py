"""The pipeline command: run image classifiers in reverse, driven by YAML recipes.

Exit codes: 0 done; 2 invalid recipe or arguments (one line saying where and how to fix it,
no traceback); 1 the run failed (a clear message; the traceback with --debug); 130
interrupted (Ctrl-C, SIGTERM or SIGHUP; a run still finishes its video and run.json).
"""

from __future__ import annotations

import os
import signal
import sys

from pipeline_core.commands.early import as_command, catch_startup_signals

# Started as the command (not imported by a test or a script): a Ctrl-C, SIGTERM or SIGHUP
# while the modules below are still being imported is one line and exit code 130, not a
# traceback; main() takes over from here.
_AS_COMMAND = as_command()
if _AS_COMMAND:
    catch_startup_signals()

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, NoReturn, Sequence  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402

from pipeline_core import __version__  # noqa: E402
from pipeline_core.errors import OutputError, PipelineError, RecipeError, _printable  # noqa: E402

err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
out_console = Console(highlight=False, soft_wrap=True, markup=False)


def _safe(text: Any) -> str:
    """Text for the terminal: control characters escaped, rich markup taken literally."""
    return escape(_printable(text))


def _registry(quiet: bool = False):
    from pipeline_core.host.manager import build_registry

    registry = build_registry()
    if not quiet:
        for line in registry.problems:
            err_console.print(f"[yellow]warning:[/] {_safe(line)}", markup=True)
    return registry


def _overrides(args: argparse.Namespace) -> list[str]:
    """Every change to the recipe the options make, in order: --add-step, --model, then --set, then
    --seed, --device and --threads (each error names the option that caused it)."""
    from pipeline_core.recipe.source import AddStep, Override

    sets: list[str] = [AddStep(text, f"--add-step {text}") for text in getattr(args, "add_step", None) or []]
    if getattr(args, "model", None):
        from pipeline_core.recipe.model_arg import model_overrides

        sets += model_overrides(args.model)
    sets += list(getattr(args, "set", None) or [])
    if getattr(args, "seed", None) is not None:
        sets.append(Override(f"seed={args.seed}", f"--seed {args.seed}"))
    if getattr(args, "device", None) is not None:
        sets.append(Override(f"device={args.device}", f"--device {args.device}"))
    if getattr(args, "threads", None) is not None:
        sets.append(Override(f"performance.threads={args.threads}", f"--threads {args.threads}"))
    return sets


# -- commands ----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline_core.recipe.loader import load_recipe
    from pipeline_core.run.device import pick_device
    from pipeline_core.run.engine import Run, prepare_resume
    from pipeline_core.run.progress import make_progress
    from pipeline_core.run.record import RunLock, default_run_dir, prepare_run_dir, run_lock

    registry = _registry(args.quiet)
    if args.resume is not None:
        run_dir = Path(args.resume)
        if (args.recipe or args.set or args.seed is not None or args.out is not None or args.force or args.model
                or args.threads is not None or args.add_step):
            raise RecipeError("--resume continues a run as it was recorded, in its own folder: "
                              "give no recipe, --set, --add-step, --model, --seed, --threads, --out or --force "
                              "with it")
        if not run_dir.is_dir():
            raise RecipeError(f"--resume {run_dir}: no such run folder")
        if not (run_dir / "run.json").is_file():
            raise RecipeError(f"--resume {run_dir}: the folder has no run.json, so it holds no run to continue")
        # locked before anything is read: a run still going in the folder is refused, naming it
        with RunLock.acquire(run_dir):
            recipe, resume = prepare_resume(run_dir, registry, _overrides(args))
            pick_device(recipe.model.device)
            return _execute(Run(recipe, registry, run_dir, make_progress(args.quiet, err_console), resume=resume),
                            args.quiet)
    if not args.recipe:
        raise RecipeError("give a recipe file (or --resume RUN_DIR); see recipes/ for examples")
    recipe = load_recipe(args.recipe, registry, _overrides(args))
    pick_device(recipe.model.device)  # an unusable device is refused before the folder is made
    run_dir = Path(args.out) if args.out is not None else default_run_dir(recipe.name)
    with run_lock(run_dir):  # held from before --force clears the folder until the run has ended
        prepare_run_dir(run_dir, args.force)
        return _execute(Run(recipe, registry, run_dir, make_progress(args.quiet, err_console)), args.quiet)


def _execute(run: Any, quiet: bool) -> int:
    result = run.execute()
    run.progress.stop()
    _summary(result, quiet)
    return result.exit_code


def _summary(result, quiet: bool) -> None:
    if result.status == "completed":
        if not quiet:
            out_console.print(f"[green]done[/]: {_safe(result.run_dir)} ({result.iterations_done} iterations)",
                              markup=True)
            for image in result.record.get("images", []):
                top = image["top5"][0] if image["top5"] else None
                guess = f"{top['name']} {top['probability']:.2f}" if top else "-"
                out_console.print(_printable(f"  images/{image['file']}: model sees {guess}"))
    elif result.status == "interrupted":
        checkpoint = result.record.get("checkpoint")
        if checkpoint:
            then = f"continue from iteration {checkpoint['iteration']} with: pipeline run --resume {result.run_dir}"
        else:
            then = "no checkpoint was written, so it cannot be resumed (output.checkpoint_every sets one)"
        err_console.print(_printable(f"interrupted at iteration {result.iterations_done}: video, images and "
                                     f"run.json are in {result.run_dir}; {then}"))
    else:
        err_console.print(f"[red]error:[/] {_safe(result.message)} (record: {_safe(result.run_dir / 'run.json')})",
                          markup=True)


def _download_note(recipe) -> str:
    """What the first run will download: the main model's weights, then any ensemble member's."""
    notes = []
    if recipe.download is not None:
        url, file = recipe.download
        notes.append(f"; its first run downloads the weights of {recipe.model_spec.name} ({url}) into {file.parent} "
                     "(or set model.weights to a local file)")
    for i, found in enumerate(recipe.ensemble_downloads):
        if found is not None:
            url, file = found
            notes.append(f"; model.ensemble[{i}] ({recipe.ensemble[i][1].name}) downloads its weights ({url}) into "
                         f"{file.parent} (or give it weights=FILE)")
    return "".join(notes)


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline_core.recipe.loader import load_recipe

    registry = _registry()
    overrides = _overrides(args)
    several = len(args.recipe) > 1
    invalid = crashed = False
    for file in args.recipe:
        try:
            recipe = load_recipe(file, registry, overrides)
        except PipelineError as exc:
            invalid = True
            line = str(exc)
            if several and not line.startswith(str(file)):
                line = f"{file}: {line}"
            err_console.print(f"[red]error:[/] {_safe(line)}", markup=True)
            if args.debug:
                traceback.print_exc()
            continue
        except Exception as exc:  # noqa: BLE001 - one file's crash must not hide the others' results
            crashed = True
            err_console.print(f"[red]error:[/] {_safe(file)}: {_safe(type(exc).__name__)}: {_safe(exc)}"
                              + ("" if args.debug else " (--debug shows the traceback)"), markup=True)
            if args.debug:
                traceback.print_exc()
            continue
        out_console.print(_printable(
            f"{file}: valid ({len(recipe.steps)} steps, {recipe.plan.iterations} iterations, "
            f"batch {recipe.plan.batch}, model {recipe.model_spec.name}){_download_note(recipe)}"
        ))
    return 2 if invalid else 1 if crashed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline_core.commands.evaluate import evaluate_run, parse_model_arg, render
    from pipeline_core.run.threads import using_threads

    models = [parse_model_arg(text) for text in args.model]
    with using_threads(args.threads):
        data = evaluate_run(Path(args.run_dir), models, _registry(), device=args.device or "cpu",
                            batch_size=args.batch_size)
    out_console.print(render(data))
    out_console.print(f"wrote {_safe(Path(args.run_dir) / 'evaluation.json')}", markup=True)
    from pipeline_core.output.report import safe_refresh

    problem = safe_refresh(Path(args.run_dir))  # the page shows the new tables
    if problem:
        err_console.print(f"[yellow]warning:[/] {_safe(problem)}", markup=True)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipeline_core.commands.sweep import sweep

    return sweep(args.sweep, _registry(args.quiet), _overrides(args), axis=args.axis, batch=args.batch,
                 out=args.out, force=args.force, quiet=args.quiet, console=err_console,
                 say=lambda line: err_console.print(_printable(line)), max_jobs=args.max_jobs)


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline_core.commands.report import rebuild

    out_console.print(f"wrote {_safe(rebuild(Path(args.folder)))}", markup=True)
    return 0


def cmd_steps(args: argparse.Namespace) -> int:
    from pipeline_core.commands.listings import describe_steps

    out_console.print(describe_steps(_registry(), args.name))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    registry = _registry()
    for name, entry in sorted(registry.models.items()):
        heads = ", ".join(entry.obj.heads)
        extra = f"  heads: {heads}" if heads else ""
        out_console.print(f"{_safe(name)}  [dim]({_safe(entry.plugin)})[/]{_safe(extra)}", markup=True)
    for prefix, entry in sorted(registry.families.items()):  # every NAME its plugin knows, e.g. timm:convnext_tiny
        out_console.print(f"{_safe(prefix)}:NAME  [dim]({_safe(entry.plugin)})[/]", markup=True)
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from pipeline_core.commands.layers import as_json, list_layers, render
    from pipeline_core.run.threads import using_threads

    with using_threads(args.threads):
        name, side, rows = list_layers(args.model, _registry(quiet=True), size=args.size)
    sys.stdout.write((as_json(name, side, rows) if args.json else render(name, side, rows, args.match)) + "\n")
    return 0


def cmd_classes(args: argparse.Namespace) -> int:
    from pipeline_core.commands.classes import as_json, list_classes, render

    name, categories = list_classes(args.model, _registry(quiet=True))
    sys.stdout.write((as_json(name, categories, args.match) if args.json else render(name, categories, args.match))
                     + "\n")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from pipeline_core.commands.listings import describe_plugins

    out_console.print(describe_plugins(_registry(quiet=True), as_json=args.json))
    return 0


def _write_text(path: Path, text: str, option: str) -> None:
    from pipeline_core.run.record import _why

    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot write it: {_why(exc)}") from None


def cmd_schema(args: argparse.Namespace) -> int:
    from pipeline_core.recipe.schema import recipe_schema

    if args.out is not None:
        from pipeline_core.run.record import check_output_file  # the run room loads torch: only with --out

        check_output_file(Path(args.out), "--out")
    text = json.dumps(recipe_schema(_registry()), indent=2)
    if args.out is not None:
        _write_text(Path(args.out), text + "\n", "--out")
        out_console.print(f"wrote {_safe(args.out)}", markup=True)
    else:
        sys.stdout.write(text + "\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline_core.commands.bench import bench
    from pipeline_core.run.record import check_output_file

    if args.json is not None:  # before minutes of measuring, not after
        check_output_file(Path(args.json), "--json")
    sets = _overrides(argparse.Namespace(model=args.model, set=args.set, threads=args.threads,
                                         add_step=args.add_step))
    report = bench(args.recipe, _registry(), sets, iterations=args.iterations, warmup=args.warmup,
                   rounds=args.rounds, device=args.device, echo=err_console.print)
    for line in report.lines():
        out_console.print(line)
    if args.json is not None:
        _write_text(Path(args.json), json.dumps(report.to_dict(), indent=2) + "\n", "--json")
        out_console.print(f"wrote {_safe(args.json)}", markup=True)
    return 0


# -- argument types ----------------------------------------------------------------------------


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isascii() or not re.fullmatch(r"\s*[+-]?\d{1,30}\s*", text):
            raise argparse.ArgumentTypeError(f"expected a whole number, got {_printable(text)!r}")
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if value > 10**9:
            raise argparse.ArgumentTypeError(f"must be at most {10**9}, got {text.strip()[:30]}")
        return value

    return parse


def _threads(text: str) -> int:
    value = _count(1)(text)
    if value > 1024:
        raise argparse.ArgumentTypeError(f"must be at most 1024, got {value}")
    return value


def _integer(text: str) -> int:
    """A whole number as typed (its range is the recipe's to check): ASCII digits, a sign."""
    if not re.fullmatch(r"\s*[+-]?\d{1,30}\s*", text) or not text.isascii():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {_printable(text)!r}")
    return int(text)


def _path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the path is empty; give a file or folder")
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"the path {_printable(text)!r} holds a NUL character")
    return text


def _device(text: str) -> str:
    from pipeline_core.recipe.sections import DEVICE_PATTERN

    if not re.fullmatch(DEVICE_PATTERN, text.strip().lower()):
        raise argparse.ArgumentTypeError(f"unknown device {_printable(text)!r}: use auto, cpu, cuda, cuda:N or mps")
    return text.strip().lower()


def _plain(text: str) -> str:
    """Docstring text for --help: reST roles and literals (``x``, :mod:`x`) as plain words."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else
                  m.group(1), text)
    return re.sub(r"``([^`]+)``", r"\1", text)


# -- parser ------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (exit code 2) rather than the usage and a line."""

    def error(self, message: str) -> NoReturn:
        err_console.print(_printable(f"error: {self.prog}: {message} (see '{self.prog} --help')"))
        raise SystemExit(2)


SET_HELP = ("override a value by dotted path, read as YAML (e.g. model.size=224, steps.2.sigma=1); a step is "
            "named by its position, its label: or its step name when only one step has it (blur.sigma=1)")
ADD_STEP_HELP = ("add a step, a YAML mapping like '{step: blur, sigma: 1}', at the end or before/after a step "
                 "named as --set names one ('before:adam={step: blur}'); applied before --set (repeatable)")
THREADS_HELP = ("CPU threads for PyTorch (default: the cores not busy with other work when it starts, at least 1; "
                "for a run, sets the recipe's performance.threads)")

MODEL_HELP = ("the model, as 'pipeline models' names it, with the keys of a recipe's model section: "
              "mobilenet_v2,weights=m.pth,mean=0.5,std=0.5,size=224 (paths relative to this folder); "
              "sets the recipe's model section")


def build_parser() -> argparse.ArgumentParser:
    lines = (__doc__ or "").strip().split("\n\n")
    p = _Parser(prog="pipeline", description=_plain(lines[0]), epilog=_plain(" ".join(lines[1:]).replace("\n", " ")))
    p.add_argument("--version", action="version", version=f"pipeline {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of failures")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")

    def recipe_args(sp: argparse.ArgumentParser, nargs: str | None = None) -> None:
        sp.add_argument("recipe", nargs=nargs, type=_path, help="recipe YAML (or a run's run.json to replay it)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help=SET_HELP)
        sp.add_argument("--add-step", action="append", metavar="[before:STEP=|after:STEP=]YAML", default=[],
                        help=ADD_STEP_HELP)
        sp.add_argument("--model", metavar="NAME[,KEY=VALUE...]", help=MODEL_HELP)

    run = command("run", "run a recipe")
    recipe_args(run, nargs="?")
    run.add_argument("--out", type=_path, help="run folder (default: a new folder under runs/ named after the recipe)")
    run.add_argument("--device", type=_device, help="auto, cpu, cuda, cuda:N or mps (overrides the recipe)")
    run.add_argument("--seed", type=_integer, help="overrides the recipe's seed")
    run.add_argument("--threads", type=_threads, metavar="N", help=THREADS_HELP)
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--force", action="store_true", help="replace the run in a non-empty run folder (its files go)")
    run.add_argument("--resume", metavar="RUN_DIR", type=_path, help="continue an interrupted run from its checkpoint")
    run.set_defaults(func=cmd_run)

    val = command("validate", "check recipes without running them (several files: one line each)")
    recipe_args(val, nargs="+")
    val.set_defaults(func=cmd_validate)

    ev = command("evaluate", "score a run's final images with other classifiers")
    ev.add_argument("run_dir", metavar="RUN_DIR", type=_path, help="a run folder (with run.json and images/), or a sweep folder "
                    "(with sweep.json: every finished job, by class and by value of each axis)")
    ev.add_argument("--model", action="append", required=True, metavar="NAME[,KEY=VALUE...]",
                    help="a model to score with, as 'pipeline models' names it; keys as in a recipe's model "
                         "section, e.g. mobilenet_v2,weights=m.pth,mean=0.5,std=0.5,size=224, and label=NAME "
                         "(repeatable)")
    ev.add_argument("--device", type=_device, help="cpu (default), auto, cuda, cuda:N or mps")
    ev.add_argument("--batch-size", type=_count(1), default=16, help="images per forward pass (default 16)")
    ev.add_argument("--threads", type=_threads, metavar="N", help=THREADS_HELP.split(";")[0] + ")")
    ev.set_defaults(func=cmd_evaluate)

    sw = command("sweep", "run a recipe over every combination of a few settings (under torchrun: shared among "
                          "processes, GPUs and machines)")
    sw.add_argument("sweep", metavar="FILE", type=_path, help="sweep YAML: recipe:, axes: and batch: (see recipes/atlas.yaml)")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help=SET_HELP)
    sw.add_argument("--add-step", action="append", metavar="[before:STEP=|after:STEP=]YAML", default=[],
                    help=ADD_STEP_HELP)
    sw.add_argument("--model", metavar="NAME[,KEY=VALUE...]", help=MODEL_HELP)
    sw.add_argument("--axis", action="append", metavar="KEY=VALUES", default=[],
                    help="replace an axis's values: a YAML list, or for a target all or a range "
                         "(--axis target=0-9); KEY may be the last part of the axis's dotted key")
    sw.add_argument("--batch", metavar="N|auto", help="images per run for the per-image axes (overrides the file)")
    sw.add_argument("--out", type=_path, help="sweep folder (default: runs/NAME, NAME from the sweep file)")
    sw.add_argument("--device", type=_device, help="auto, cpu, cuda, cuda:N or mps (under torchrun auto and cuda "
                                                   "mean cuda:LOCAL_RANK)")
    sw.add_argument("--threads", type=_threads, metavar="N", help=THREADS_HELP.replace("a run", "every run"))
    sw.add_argument("--quiet", action="store_true", help="no progress display")
    sw.add_argument("--force", action="store_true", help="run every batch again, finished ones too")
    sw.add_argument("--max-jobs", type=_count(1), metavar="N", help="run a sweep of more than 100000 jobs (refused "
                    "without it: give its number of jobs to confirm)")
    sw.set_defaults(func=cmd_sweep)

    rep = command("report", "rebuild the page of a run folder (report.html) or a sweep folder (atlas.html)")
    rep.add_argument("folder", metavar="DIR", type=_path, help="a run folder (run.json) or a sweep folder (sweep.json)")
    rep.set_defaults(func=cmd_report)

    steps = command("steps", "list the steps, their parameters and defaults")
    steps.add_argument("name", nargs="?", help="show one step only")
    steps.set_defaults(func=cmd_steps)

    models = command("models", "list the models recipes can name")
    models.set_defaults(func=cmd_models)

    layers = command("layers", "list a model's layers (the paths layer objectives name), their output shapes and channels")
    layers.add_argument("model", metavar="MODEL", help=MODEL_HELP.replace("; sets the recipe's model section", ""))
    layers.add_argument("--size", type=_count(8), help="input side in pixels (default: the model's own)")
    layers.add_argument("--match", metavar="TEXT", help="only the layers whose path or type contains TEXT")
    layers.add_argument("--json", action="store_true", help="machine-readable output")
    layers.add_argument("--threads", type=_threads, metavar="N", help=THREADS_HELP.split(";")[0] + ")")
    layers.set_defaults(func=cmd_layers)

    classes = command("classes", "list a model's classes (the names and indices a target can name)")
    classes.add_argument("model", metavar="MODEL", help=MODEL_HELP.replace("; sets the recipe's model section", ""))
    classes.add_argument("--match", metavar="TEXT", help="only the classes whose name contains TEXT (or whose "
                                                         "index is TEXT)")
    classes.add_argument("--json", action="store_true", help="machine-readable output")
    classes.set_defaults(func=cmd_classes)

    plugins = command("plugins", "list loaded plugins and what they register")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=cmd_plugins)

    schema = command("schema", "print the JSON Schema of recipes (for editors)")
    schema.add_argument("--out", type=_path, help="write it to this file")
    schema.set_defaults(func=cmd_schema)

    be = command("bench", "measure the engine's speed on a recipe against a bare loop of the same maths")
    recipe_args(be)
    be.add_argument("--iterations", type=_count(1), default=20, help="iterations per measured run (default 20)")
    be.add_argument("--warmup", type=_count(0), default=2, help="iterations of an uncounted first run of each loop (default 2)")
    be.add_argument("--rounds", type=_count(1), default=3, help="runs of each loop, alternating; medians are reported (default 3)")
    be.add_argument("--device", type=_device, help="auto, cpu, cuda, cuda:N or mps (overrides the recipe)")
    be.add_argument("--threads", type=_threads, metavar="N", help=THREADS_HELP.replace("a run", "both loops"))
    be.add_argument("--json", metavar="FILE", type=_path, help="also write every figure to this JSON file")
    be.set_defaults(func=cmd_bench)

    return p


def _interrupted(exc: BaseException) -> int:
    """The one line of a stop before (or outside) a run; further signals cannot cut it short."""
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        name = exc.args[0] if exc.args and isinstance(exc.args[0], str) else "Ctrl-C"
        err_console.print(f"interrupted ({name})")
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, old)
    return 130


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline_core.run.interrupts import startup_signals

    try:
        with startup_signals(exit_inside_imports=_AS_COMMAND) as stopped:  # SIGINT, SIGTERM and SIGHUP outside a run: one line, 130
            parser = build_parser()
            try:
                args = parser.parse_args(argv)
            except SystemExit as exc:  # argparse already printed its one-line message (or the help)
                return 2 if exc.code not in (0, None) else 0
            if not getattr(args, "func", None):
                parser.print_help()
                return 2
            return _dispatch(args, stopped)
    except KeyboardInterrupt as exc:
        code = _interrupted(exc)
        if _AS_COMMAND:
            # An interrupt that landed inside an extension's own start-up code (torch runs Python
            # snippets from C while it imports) leaves the interpreter marked "interrupted", and
            # it would end by killing itself with SIGINT (-2) instead of exiting 130. Nothing is
            # left to clean up before a run has started: flush and leave with the code we mean.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code


def _dispatch(args: argparse.Namespace, stopped: Any) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        if stopped.signal_name and not isinstance(exc, SystemExit):
            # a library caught the interrupt and failed on (an import cut in half): it was the stop
            raise KeyboardInterrupt(stopped.signal_name) from None
        return _failure(args, exc)


def _failure(args: argparse.Namespace, exc: BaseException) -> int:
    try:
        raise exc
    except PipelineError as exc:
        err_console.print(f"[red]error:[/] {_safe(exc)}", markup=True)
        if args.debug:
            traceback.print_exc()
        return exc.exit_code
    except RecursionError:
        err_console.print("[red]error:[/] the input is nested too deeply to be read", markup=True)
        return 2
    except OSError as exc:  # a file or folder the user named cannot be used (a name too long, no access)
        from pipeline_core.run.record import _why

        where = f"{exc.filename}: " if exc.filename else ""
        err_console.print(f"[red]error:[/] {_safe(where)}{_safe(_why(exc))}", markup=True)
        if args.debug:
            traceback.print_exc()
        return 2
    except Exception as exc:  # noqa: BLE001 - never a bare traceback for users
        err_console.print(f"[red]error:[/] {_safe(type(exc).__name__)}: {_safe(exc)}"
                          + ("" if args.debug else " (--debug shows the traceback)"), markup=True)
        if args.debug:
            traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
