"""The hot loop's own bookkeeping: cheap finiteness checks that mean the same, and the timings a
benchmark needs recorded in run.json."""

from __future__ import annotations

import pytest
import torch

from pipeline_core.engine import _finite
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
