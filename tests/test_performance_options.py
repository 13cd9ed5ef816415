"""The speed options (``performance:``) change how the model runs, never what the image is.

bf16 autocast and channels_last run here on the CPU (PyTorch supports both there); the same
code paths serve the GPU. torch.compile is not exercised: compiling takes minutes on a small CPU.
"""

from __future__ import annotations

import pytest
import torch

from pipeline_core.model import ModelAdapter
from pipeline_core.testing import TINY_MODEL, TinyNet, run_recipe_dict, tiny_recipe


def _adapter(**options) -> ModelAdapter:
    return ModelAdapter(TinyNet(), TINY_MODEL.info, device="cpu", **options)


def _image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 32, 32, generator=g).requires_grad_(True)


def test_bf16_autocast_on_cpu_runs_the_model_in_bf16_and_returns_float32_logits_and_gradient():
    adapter = _adapter(precision="bf16")
    seen: list[torch.dtype] = []
    adapter.module.features[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    image = _image()
    out = adapter(image)
    assert seen == [torch.bfloat16]  # the convolution really ran under autocast
    assert out.logits.dtype == torch.float32
    (grad,) = torch.autograd.grad(out.logits[:, 3].sum(), [image])
    assert grad.dtype == torch.float32 and image.dtype == torch.float32
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bf16_logits_stay_close_to_fp32_logits():
    image = _image()
    fp32 = _adapter()(image).logits
    bf16 = _adapter(precision="bf16")(image).logits
    assert not torch.equal(fp32, bf16)  # a different precision was used...
    assert torch.allclose(fp32, bf16, rtol=0.05, atol=0.05 * fp32.abs().max().item())  # ...for the same function


def test_bf16_heads_are_float32_too():
    adapter = ModelAdapter(TinyNet(), TINY_MODEL.info, requested=["layer:features.2"], device="cpu", precision="bf16")
    out = adapter(_image())
    assert out.heads["layer:features.2"].dtype == torch.float32


def test_channels_last_gives_the_same_logits_and_gradient_as_the_default_layout():
    image = _image(1)
    plain = _adapter()
    nhwc = _adapter(channels_last=True)
    assert nhwc.module.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.prepare(image).is_contiguous(memory_format=torch.channels_last)
    a, b = plain(image).logits, nhwc(image).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    (ga,) = torch.autograd.grad(a[:, 2].sum(), [image])
    (gb,) = torch.autograd.grad(b[:, 2].sum(), [image])
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
    assert gb.is_contiguous()  # the image's gradient keeps the image's own layout


@pytest.mark.parametrize("performance", [{"precision": "bf16"}, {"channels_last": True},
                                         {"precision": "bf16", "channels_last": True, "cudnn_benchmark": True}])
def test_a_run_with_performance_options_completes_with_a_float32_image(tmp_path, performance):
    result = run_recipe_dict(tiny_recipe(performance=performance), tmp_path / "run")
    assert result.status == "completed", result.message
    assert result.record["recipe"]["performance"] | performance == result.record["recipe"]["performance"]
    assert len(result.record["images"]) == 1


def test_performance_options_keep_a_cpu_run_close_to_the_fp32_run(tmp_path):
    import numpy as np
    from PIL import Image

    def final(name: str, performance: dict) -> np.ndarray:
        result = run_recipe_dict(tiny_recipe(iterations=3, performance=performance), tmp_path / name)
        assert result.status == "completed", result.message
        return np.asarray(Image.open(tmp_path / name / "images" / result.record["images"][0]["file"]), dtype=np.int16)

    base = final("fp32", {})
    assert np.abs(final("nhwc", {"channels_last": True}) - base).max() <= 1
    assert np.abs(final("bf16", {"precision": "bf16"}) - base).mean() < 2.0
