"""``pipeline sweep FILE``: a recipe over the product of a few settings, alone or under torchrun.

The steps, on every rank: read the sweep file, plan the jobs and batches (:mod:`.sweep.plan`),
pick the rank's device, agree with the other ranks on the plan and on ``batch: auto``
(:mod:`.sweep.shard`), run the rank's batches (:mod:`.sweep.runner`), and say it is finished.
Rank 0 also draws the overall bar, keeps sweep.json current, and at the end draws the contact
sheets and reports. Exit codes as ``pipeline run``: 0 every job completed, 1 some batch failed
(the others ran) or a finished batch's folder no longer holds its run at the end (removed while
the sweep went on: reported, never counted completed), 2 an invalid sweep file or option (a
sweep of more than ``--max-jobs`` jobs too, refused before its jobs are built), 130 interrupted
(start it again to go on).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline_core.errors import RecipeError
from pipeline_core.sweep import index as sweep_index

#: a sweep of this many jobs says its count before it is planned (planning it takes a moment)
ANNOUNCE_FROM = 1000


def _batch_size(spec: Any, plan: Any, sweep_dir: Path, registry: Any, sets: Sequence[str], device: Any,
                force: bool) -> tuple[int | None, dict | None]:
    """This rank's batch size for the per-image axes: the file's number, or for ``auto`` the one a
    previous start of this sweep settled on (so its batches are found again), or a probe's."""
    if not any(a.per_image for a in plan.axes):
        return None, None
    if isinstance(spec.batch, int):
        return spec.batch, None
    old = sweep_index.read_index(sweep_dir) or {}
    if not force and isinstance(old.get("batch"), int) and old.get("batch_auto"):
        return old["batch"], {"how": "kept from the sweep's earlier start", "batch": old["batch"]}
    from pipeline_core.recipe.source import Override
    from pipeline_core.sweep.probe import probe_batch

    first = plan.batches[0]
    probe_sets = [*sets, *[o for o in first.overrides if not o.startswith("batch=")
                           and not any(o.startswith(a.key + "=") for a in plan.axes if a.per_image)]]
    for a in plan.axes:
        if a.per_image:
            probe_sets.append(Override(f"{a.key}={a.classes[0]}", "batch: auto (probe)"))
    most = 1  # never more images than one setting has jobs
    for a in plan.axes:
        most *= len(a.values) if a.per_image else 1
    return probe_batch(spec.recipe, registry, probe_sets, device, most)


def sweep(file: str, registry: Any, sets: Sequence[str], axis: Sequence[str] = (), batch: str | None = None,
          out: str | None = None, force: bool = False, quiet: bool = False, console: Any = None,
          say: Callable[[str], None] = print, max_jobs: int | None = None) -> int:
    from pipeline_core.run.device import rank_device
    from pipeline_core.sweep import shard
    from pipeline_core.sweep.display import make_bar
    from pipeline_core.sweep.plan import LARGE_SWEEP, fingerprint, make_plan
    from pipeline_core.sweep.runner import Overall, run_rank
    from pipeline_core.sweep.sheets import write_sheets
    from pipeline_core.sweep.spec import load_sweep

    t_start = time.monotonic()
    world = shard.world_from_env()
    spec = load_sweep(file, axis, batch)
    if out is not None:
        sweep_dir = Path(out)
    else:
        from pipeline_core.run.confine import outputs_root

        sweep_dir = outputs_root() / spec.name  # the name is a plain name (spec.load_sweep checked it)
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise RecipeError(f"--out {sweep_dir} is a file, not a folder")
    limit = LARGE_SWEEP if max_jobs is None else max_jobs

    def announce(jobs: int) -> None:  # said before a big plan is built (or refused)
        if jobs >= ANNOUNCE_FROM:
            say(f"sweep {spec.name}: {jobs} jobs")

    first = make_plan(spec, registry, sets, batch_size=1, check=False, max_jobs=limit, announce=announce)
    device = rank_device(first.base.model.device, world.local_rank)
    size, how = _batch_size(spec, first, sweep_dir, registry, sets, device, force)

    shard.start(world, device)
    try:
        digest = fingerprint(first.base, [f"{a.key}={a.values!r}" for a in first.axes] + [f"batch={spec.batch}"])
        mine = {"plan": digest, "batch": size, "token": shard.new_token(), "device": str(device)}
        everyone = shard.agree(world, mine)
        for rank, theirs in enumerate(everyone):
            if theirs["plan"] != digest:
                raise RecipeError(f"rank {rank} planned another sweep than rank {world.rank} (a different sweep "
                                  "file, recipe or option): start every rank with the same command and files")
        sizes = [t["batch"] for t in everyone if t["batch"] is not None]
        size = min(sizes) if sizes else None
        token = everyone[0]["token"]
        plan = make_plan(spec, registry, sets, batch_size=size, check=True, max_jobs=limit)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        shard.status_path(sweep_dir, world.rank)  # refused now if its way leads out of the sweep folder
        status = shard.RankStatus(sweep_dir, world, token, str(device))
        extra = {"batch_auto": spec.batch == "auto", "world_size": world.size,
                 **({"batch_probe": how} if how else {}),
                 # the options that changed the recipe or the axes, as typed (the atlas page shows them)
                 "options": [getattr(o, "shown", None) or f"--set {o}" for o in sets] + [f"--axis {a}" for a in axis]}

        def refresh() -> None:
            outcomes = overall.outcomes() if overall is not None else None
            sweep_index.write_index(sweep_dir, sweep_index.build_index(plan, sweep_dir, extra, outcomes))

        overall: Overall | None = None
        if world.main:
            refresh()
            overall = Overall(plan, sweep_dir, world, token, make_bar(quiet, console, spec.name), refresh)
            overall.start()
        prefix = f"rank {world.rank}: " if world.size > 1 else ""
        try:
            try:
                result = run_rank(plan, sweep_dir, registry, sets, world, device, status, force,
                                  say=lambda line: say(prefix + line))
            finally:
                status.finished = True
                status.current = None
                status.write()
            if overall is not None and not result.interrupted:
                overall.wait_for_ranks()
        finally:
            if overall is not None:
                overall.stop()  # the bar ends (and the terminal's cursor returns) whatever happened
        if overall is None:
            return 130 if result.interrupted else (1 if result.failed else 0)
        statuses = overall.statuses
        extra["throughput"] = _throughput(statuses, time.monotonic() - t_start)
        data = sweep_index.build_index(plan, sweep_dir, extra, overall.outcomes())
        data["contact_sheets"] = write_sheets(sweep_dir, data)
        sweep_index.write_index(sweep_dir, data)
        from pipeline_core.output.report import safe_refresh

        problem = safe_refresh(sweep_dir)  # atlas.html, the page of the sweep
        if problem:
            say(f"warning: {problem}")
        counts = data["counts"]
        interrupted = result.interrupted or any(
            s and "interrupted" in (s.get("batches") or {}).values() for s in statuses)
        line = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        say(f"sweep {spec.name}: {line} of {plan.total} jobs in {len(plan.batches)} batches; "
            f"index {sweep_dir / sweep_index.FILE}, page {sweep_dir / 'atlas.html'}, contact sheets in "
            f"{sweep_dir / 'contact'}")
        if interrupted:
            say(f"interrupted: start the same command again to continue (finished batches are skipped, the "
                "interrupted one resumes from its checkpoint)")
            return 130
        failed = counts.get("failed") or any(s and "failed" in (s.get("batches") or {}).values() for s in statuses)
        missing = [b["run"] for b in data["batches"] if b.get("status") != "completed"
                   and (overall.outcomes().get(b["run"]) in ("completed", "skipped"))]
        if missing:  # finished in this start, but its folder is gone or changed now: not a result
            say(f"{len(missing)} batch(es) finished but their folders no longer hold the finished run "
                f"(removed or changed while the sweep ran: {', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}); start the same command again to run them")
        return 1 if failed or missing or counts.get("pending") else 0
    finally:
        shard.stop(world)


def _throughput(statuses: Sequence[dict | None], wall: float) -> dict[str, Any]:
    ranks = []
    jobs = 0
    for s in statuses:
        if not s:
            continue
        run, secs = int(s.get("jobs_run") or 0), float(s.get("run_seconds") or 0.0)
        jobs += run
        ranks.append({"rank": s.get("rank"), "host": s.get("host"), "device": s.get("device"), "jobs_run": run,
                      "run_seconds": round(secs, 3),
                      "jobs_per_minute": round(run / secs * 60, 3) if secs > 0 else None})
    return {"wall_seconds": round(wall, 3), "jobs_run": jobs,
            "jobs_per_minute": round(jobs / wall * 60, 3) if wall > 0 and jobs else None, "ranks": ranks}
