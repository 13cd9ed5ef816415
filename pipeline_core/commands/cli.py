"""The ``pipeline`` command.

Exit codes: 0 done; 2 invalid recipe or arguments (one line, no traceback); 1 the run failed
(a clear message; the traceback with ``--debug``); 130 interrupted (the video and run.json are
still finished).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import NoReturn, Sequence

from rich.console import Console
from rich.markup import escape

from pipeline_core.errors import PipelineError, RecipeError

err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
out_console = Console(highlight=False, soft_wrap=True, markup=False)


def _registry(quiet: bool = False):
    from pipeline_core.host.manager import build_registry

    registry = build_registry()
    if not quiet:
        for line in registry.problems:
            err_console.print(f"[yellow]warning:[/] {escape(line)}", markup=True)
    return registry


def _overrides(args: argparse.Namespace) -> list[str]:
    from pipeline_core.recipe.source import Override

    sets = list(getattr(args, "set", None) or [])
    if getattr(args, "seed", None) is not None:
        sets.append(Override(f"seed={args.seed}", f"--seed {args.seed}"))
    if getattr(args, "device", None) is not None:
        sets.append(Override(f"device={args.device}", f"--device {args.device}"))
    return sets


# -- commands ----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline_core.run.engine import Run, load_resume
    from pipeline_core.run.progress import make_progress
    from pipeline_core.recipe.loader import load_recipe
    from pipeline_core.run.record import default_run_dir, prepare_run_dir

    from pipeline_core.run.device import pick_device

    registry = _registry(args.quiet)
    resume = None
    if args.resume:
        run_dir = Path(args.resume)
        if args.recipe or args.set or args.seed is not None or args.out or args.force:
            raise RecipeError("--resume continues a run as it was recorded, in its own folder: "
                              "give no recipe, --set, --seed, --out or --force with it")
        if not run_dir.is_dir():
            raise RecipeError(f"--resume {run_dir}: no such run folder")
        if not (run_dir / "run.json").is_file():
            raise RecipeError(f"--resume {run_dir}: the folder has no run.json, so it holds no run to continue")
        resume = load_resume(run_dir)
        recipe = load_recipe(run_dir / "run.json", registry, _overrides(args))
        pick_device(recipe.model.device)
    else:
        if not args.recipe:
            raise RecipeError("give a recipe file (or --resume RUN_DIR); see recipes/ for examples")
        recipe = load_recipe(args.recipe, registry, _overrides(args))
        pick_device(recipe.model.device)  # an unusable device is refused before the folder is made
        run_dir = Path(args.out) if args.out else default_run_dir(recipe.name)
        run_dir = prepare_run_dir(run_dir, args.force)
    run = Run(recipe, registry, run_dir, make_progress(args.quiet, err_console), resume=resume)
    result = run.execute()
    run.progress.stop()
    _summary(result, args.quiet)
    return result.exit_code


def _summary(result, quiet: bool) -> None:
    if result.status == "completed":
        if not quiet:
            out_console.print(f"[green]done[/]: {escape(str(result.run_dir))} ({result.iterations_done} iterations)", markup=True)
            for image in result.record.get("images", []):
                top = image["top5"][0] if image["top5"] else None
                guess = f"{top['name']} {top['probability']:.2f}" if top else "-"
                out_console.print(f"  images/{image['file']}: model sees {guess}")
    elif result.status == "interrupted":
        checkpoint = result.record.get("checkpoint")
        if checkpoint:
            then = f"continue from iteration {checkpoint['iteration']} with: pipeline run --resume {result.run_dir}"
        else:
            then = "no checkpoint was written, so it cannot be resumed (output.checkpoint_every sets one)"
        err_console.print(f"interrupted at iteration {result.iterations_done}: video, images and run.json are in "
                          f"{result.run_dir}; {then}")
    else:
        err_console.print(f"[red]error:[/] {escape(result.message)} (record: {escape(str(result.run_dir / 'run.json'))})", markup=True)


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline_core.recipe.loader import load_recipe

    recipe = load_recipe(args.recipe, _registry(), _overrides(args))
    out_console.print(
        f"{args.recipe}: valid ({len(recipe.steps)} steps, {recipe.plan.iterations} iterations, "
        f"batch {recipe.plan.batch}, model {recipe.model_spec.name})"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline_core.commands.evaluate import evaluate_run, parse_model_arg, render

    models = [parse_model_arg(text) for text in args.model]
    data = evaluate_run(Path(args.run_dir), models, _registry(), device=args.device or "cpu",
                        batch_size=args.batch_size)
    out_console.print(render(data))
    out_console.print(f"wrote {escape(str(Path(args.run_dir) / 'evaluation.json'))}")
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
        out_console.print(f"{escape(name)}  [dim]({escape(entry.plugin)})[/]{escape(extra)}", markup=True)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from pipeline_core.commands.listings import describe_plugins

    out_console.print(describe_plugins(_registry(quiet=True), as_json=args.json))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from pipeline_core.recipe.schema import recipe_schema

    text = json.dumps(recipe_schema(_registry()), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        out_console.print(f"wrote {args.out}")
    else:
        sys.stdout.write(text + "\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline_core.commands.bench import bench

    report = bench(args.recipe, _registry(), args.set, iterations=args.iterations, warmup=args.warmup,
                   rounds=args.rounds, device=args.device, echo=err_console.print)
    for line in report.lines():
        out_console.print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        out_console.print(f"wrote {args.json}")
    return 0


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


# -- parser ------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (exit code 2) rather than the usage and a line."""

    def error(self, message: str) -> NoReturn:
        err_console.print(f"error: {self.prog}: {message} (see '{self.prog} --help')")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pipeline", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--debug", action="store_true", help="show tracebacks of failures")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def recipe_args(sp: argparse.ArgumentParser, optional: bool = False) -> None:
        sp.add_argument("recipe", nargs="?" if optional else None, help="recipe YAML (or a run's run.json to replay it)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="override a value by dotted path, read as YAML (e.g. model.size=224, steps.2.sigma=1)")

    run = sub.add_parser("run", help="run a recipe")
    recipe_args(run, optional=True)
    run.add_argument("--out", help="run folder (default: a new folder under runs/ named after the recipe)")
    run.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (overrides the recipe)")
    run.add_argument("--seed", type=int, help="overrides the recipe's seed")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--force", action="store_true", help="overwrite a non-empty run folder")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check a recipe without running it")
    recipe_args(val)
    val.set_defaults(func=cmd_validate)

    ev = sub.add_parser("evaluate", help="score a run's final images with other classifiers")
    ev.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (with run.json and images/)")
    ev.add_argument("--model", action="append", required=True, metavar="NAME[,KEY=VALUE...]",
                    help="a model to score with, as 'pipeline models' names it; keys as in a recipe's model "
                         "section, e.g. mobilenet_v2,weights=m.pth,mean=0.5,std=0.5,size=224 (repeatable)")
    ev.add_argument("--device", help="cpu (default), auto, cuda, cuda:N or mps")
    ev.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    ev.set_defaults(func=cmd_evaluate)

    steps = sub.add_parser("steps", help="list the steps, their parameters and defaults")
    steps.add_argument("name", nargs="?", help="show one step only")
    steps.set_defaults(func=cmd_steps)

    models = sub.add_parser("models", help="list the models recipes can name")
    models.set_defaults(func=cmd_models)

    plugins = sub.add_parser("plugins", help="list loaded plugins and what they register")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=cmd_plugins)

    schema = sub.add_parser("schema", help="print the JSON Schema of recipes (for editors)")
    schema.add_argument("--out", help="write it to this file")
    schema.set_defaults(func=cmd_schema)

    be = sub.add_parser("bench", help="measure the engine's speed on a recipe against a bare loop of the same maths")
    recipe_args(be)
    be.add_argument("--iterations", type=_count(1), default=20, help="iterations per measured run (default 20)")
    be.add_argument("--warmup", type=_count(0), default=2, help="iterations of an uncounted first run of each loop (default 2)")
    be.add_argument("--rounds", type=_count(1), default=3, help="runs of each loop, alternating; medians are reported (default 3)")
    be.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (overrides the recipe)")
    be.add_argument("--json", metavar="FILE", help="also write every figure to this JSON file")
    be.set_defaults(func=cmd_bench)

    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one-line message
        return 2 if exc.code not in (0, None) else 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except PipelineError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", markup=True)
        if args.debug:
            traceback.print_exc()
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - never a bare traceback for users
        err_console.print(f"[red]error:[/] {type(exc).__name__}: {escape(str(exc))}" + ("" if args.debug else " (--debug shows the traceback)"),
                          markup=True)
        if args.debug:
            traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
