"""performance.max_rows: many views per image through the model in chunks, when memory is short.

A view step such as ``crops`` multiplies the rows the model sees (K views of each image); a
batch whose activations do not fit goes through in chunks, each a gradient checkpoint. The
outputs and the gradient must be those of one pass, only one chunk's activations may be alive
at a time, and ``auto`` must find a chunk size by itself when a GPU runs out of memory.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline_core.errors import RecipeError
from pipeline_core.model import ModelAdapter
from pipeline_core.testing import TINY_MODEL, TinyNet, run_recipe_dict, tiny_recipe


def adapter(max_rows: int | None, heads=("layer:features.3",)) -> ModelAdapter:
    return ModelAdapter(TinyNet(), TINY_MODEL.info, TINY_MODEL.heads, heads, max_rows=max_rows)


def outputs_and_gradient(model: ModelAdapter, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    out = model(x)
    loss = out.logits[:, 3].sum() + out.heads["layer:features.3"].square().mean()
    (grad,) = torch.autograd.grad(loss, x)
    return out.logits.detach(), out.heads["layer:features.3"].detach(), grad


def test_chunked_passes_give_the_outputs_and_gradient_of_one_pass():
    x = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    whole = outputs_and_gradient(adapter(None), x)
    for rows in (1, 3, 4, 10):
        chunked = outputs_and_gradient(adapter(rows), x)
        for a, b in zip(whole, chunked):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_each_chunk_is_recomputed_in_the_backward_pass_so_one_chunk_is_alive_at_a_time():
    model = adapter(4)
    seen: list[int] = []
    model.module.features[0].register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[0]))
    x = torch.rand(10, 3, 32, 32).requires_grad_(True)
    out = model(x)
    assert seen == [4, 4, 2]  # the forward pass, chunk by chunk
    out.logits.sum().backward()
    assert seen == [4, 4, 2, 2, 4, 4]  # ... recomputed, one chunk at a time, last chunk first
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_without_gradients_chunks_are_not_recomputed():
    model = adapter(3)
    calls: list[int] = []
    model.module.fc.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[0]))
    with torch.no_grad():
        out = model(torch.rand(7, 3, 32, 32))
    assert calls == [3, 3, 1] and out.logits.shape == (7, 10)


def crops_recipe(**performance) -> dict:
    recipe = tiny_recipe(batch=2, performance=performance)
    recipe["steps"].insert(1, {"step": "crops", "views": 4})
    return recipe


def test_a_run_with_max_rows_matches_the_run_without(tmp_path):
    one = run_recipe_dict(crops_recipe(), tmp_path / "one")
    chunked = run_recipe_dict(crops_recipe(max_rows=3), tmp_path / "chunked")
    assert one.status == chunked.status == "completed"
    for a, b in zip(sorted((tmp_path / "one" / "images").glob("0*.png")),
                    sorted((tmp_path / "chunked" / "images").glob("0*.png"))):
        diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
        assert diff.max() <= 1  # the same run, up to the last bit of a sum


def test_auto_halves_the_rows_per_pass_while_the_gpu_is_out_of_memory(tmp_path, monkeypatch):
    """A GPU that holds 2 rows at a time, mimicked: a pass of more raises CUDA's out-of-memory error."""
    real = ModelAdapter._pass

    def small_gpu(self, x):
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, x)

    monkeypatch.setattr(ModelAdapter, "_pass", small_gpu)
    result = run_recipe_dict(crops_recipe(max_rows="auto"), tmp_path / "auto")
    assert result.status == "completed"
    record = json.loads((tmp_path / "auto" / "run.json").read_text())
    assert record["timings"]["model_rows_per_pass"] == 2  # 8 rows, then 4, then 2
    failed = run_recipe_dict(crops_recipe(), tmp_path / "fixed", check=False)
    assert failed.status == "failed" and "out of memory" in failed.message


@pytest.mark.parametrize("bad", [0, -1, "half", True, 1.5])
def test_max_rows_is_a_positive_integer_or_auto(bad, tmp_path):
    with pytest.raises(RecipeError, match="max_rows"):
        run_recipe_dict(crops_recipe(max_rows=bad), tmp_path / "bad")
