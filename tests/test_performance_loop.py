"""The hot loop's own bookkeeping: cheap finiteness checks that mean the same, and the timings a
benchmark needs recorded in run.json."""

from __future__ import annotations

import pytest
import torch

from pipeline_core.run.faults import finite as _finite
from pipeline_core.testing import run_recipe_dict, tiny_recipe


def _with(value: float, at: tuple[int, ...] = (1, 2, 3, 3)) -> torch.Tensor:
    x = torch.rand(2, 3, 8, 8)
    x[at] = value
    return x


@pytest.mark.parametrize("tensor", [
    torch.rand(2, 3, 8, 8), _with(float("nan")), _with(float("inf")), _with(-float("inf")),
    torch.full((3, 3), 3.0e38), torch.full((3, 3), -3.0e38), torch.rand(4, 4).to(torch.bfloat16),
    torch.tensor(float("nan")), torch.tensor(2.0), torch.empty(0),
], ids=["finite", "nan", "inf", "-inf", "huge", "-huge", "bf16", "scalar-nan", "scalar", "empty"])
def test_finite_means_exactly_isfinite_all(tensor):
    assert _finite(tensor) == bool(torch.isfinite(tensor).all())


def test_finite_sees_both_infinities_at_once():
    x = torch.rand(2, 3, 8, 8)
    x[0, 0, 0, 0], x[1, 1, 1, 1] = float("inf"), -float("inf")
    assert not _finite(x)
    assert _finite(torch.rand(3, requires_grad=True))  # works on tensors that need grad


def test_a_run_records_the_timings_the_benchmark_uses(tmp_path):
    result = run_recipe_dict(tiny_recipe(output={"video": True}), tmp_path / "run")
    assert result.status == "completed", result.message
    timings = result.record["timings"]
    for key in ("loop_seconds", "loop_cpu_seconds", "drain_seconds", "encode_seconds", "encode_cpu_seconds"):
        assert timings[key] >= 0, key
    assert timings["frames"] == 5  # the first image and one per iteration


def test_the_loop_runs_with_pre_existing_objects_frozen_and_unfreezes_them_after(tmp_path, isolated_registry):
    """Full garbage collections must not walk PyTorch's ~350k objects in the middle of an iteration."""
    import gc

    from pipeline_core.hookspecs import hookimpl
    from pipeline_core.step import Step, StepKind, TransformParams
    from pipeline_core.testing import registered

    seen: list[int] = []

    class Probe(Step):
        name = "test-gc-probe"
        kind = StepKind.TRANSFORM
        Params = TransformParams

        def apply(self, ctx, x):
            seen.append(gc.get_freeze_count())
            return x

    class Plugin:
        @hookimpl
        def register_steps(self, registry):
            registry.add_step(Probe)

    before = gc.get_freeze_count()
    recipe = tiny_recipe(iterations=3)
    recipe["steps"].insert(1, {"step": "test-gc-probe"})
    with registered(Plugin(), isolated_registry):
        run_recipe_dict(recipe, tmp_path / "run", registry=isolated_registry)
    assert len(seen) == 3 and min(seen) > before + 1000  # the libraries' objects, frozen
    assert gc.get_freeze_count() == before
