"""tone and bn-statistics: the priors that hold an image to the statistics of photographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn

from pipeline_core.errors import RecipeError
from pipeline_core.model import ModelAdapter, ModelInfo, layer_head
from pipeline_core.testing import TinyNet, check_step, run_recipe_dict, tiny_recipe
from pipeline_plugins.objective.bn_statistics import BNStatistics, BNStatisticsParams, batchnorm_layers
from pipeline_plugins.objective.tone import Tone, ToneParams


# -- tone -----------------------------------------------------------------------------------------

def _grey_with_contrast(spread: float, mean: float = 0.5) -> torch.Tensor:
    """A (1, 3, 16, 16) grey image of half +spread, half -spread around mean: luminance std = spread."""
    y = torch.full((16, 16), mean)
    y[:, :8] += spread
    y[:, 8:] -= spread
    return y.expand(1, 3, 16, 16).clone()


def test_tone_is_free_inside_the_ranges_and_penalises_a_hazy_image():
    step = Tone(ToneParams(weight=10.0, std=(0.2, 0.3), mean=(0.3, 0.6)))
    assert float(step.loss(None, None, _grey_with_contrast(0.25))) == pytest.approx(0.0, abs=1e-12)
    hazy = _grey_with_contrast(0.05).requires_grad_(True)
    loss = step.loss(None, None, hazy)
    # the sample std of a half/half image of +-0.05 is 0.05 * sqrt(256/255)
    expected = 10.0 * (0.2 - 0.05 * (256 / 255) ** 0.5) ** 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    loss.sum().backward()
    left, right = hazy.grad[0, :, :, :8], hazy.grad[0, :, :, 8:]
    assert bool((left < 0).all()) and bool((right > 0).all())  # descending spreads the two halves apart


def test_tone_pulls_a_dark_image_up_and_a_glaring_one_down():
    step = Tone(ToneParams(weight=1.0))
    for level, direction in ((0.1, -1), (0.9, 1)):
        image = _grey_with_contrast(0.25, mean=level).clamp(0, 1).requires_grad_(True)
        step.loss(None, None, image).sum().backward()
        assert float(image.grad.mean()) * direction > 0


def test_tone_refuses_a_range_upside_down():
    with pytest.raises(ValueError, match=r"'std' must be \[low, high\]"):
        ToneParams(std=(0.3, 0.2))


def test_tone_contract_and_a_real_run_that_gains_contrast(tmp_path):
    check_step(Tone, {"weight": 50.0})
    recipe = tiny_recipe(iterations=30)
    recipe["steps"][0]["scale"] = 0.02  # a flat grey start: luminance std about 0.01
    recipe["steps"].insert(-1, {"step": "tone", "weight": 1000.0})
    recipe["steps"][-1] = {"step": "adam", "lr": 0.02}
    run_recipe_dict(recipe, tmp_path / "run")
    final = sorted((tmp_path / "run" / "images").glob("*.png"))[0]
    pixels = np.asarray(Image.open(final).convert("L")) / 255.0
    assert pixels.std() > 0.1


# -- bn-statistics --------------------------------------------------------------------------------

def _adapter(module: nn.Module) -> ModelAdapter:
    return ModelAdapter(module, ModelInfo(categories=[str(i) for i in range(10)], mean=(0.5,) * 3, std=(0.5,) * 3,
                                          size=None))


class _Ctx:
    def __init__(self, adapter):
        self.model, self.device = adapter, torch.device("cpu")


def _bound(adapter, batch: int, **params) -> BNStatistics:
    step = BNStatistics(BNStatisticsParams(**params))

    class _Plan:
        pass

    plan = _Plan()
    plan.batch = batch
    step.bind(plan)
    step.setup(_Ctx(adapter))
    return step


def _calibrated_tinynet() -> TinyNet:
    """TinyNet whose batch-norm layer holds the statistics of its input on 32 px uniform noise."""
    net = TinyNet()
    conv = net.features[0]
    with torch.no_grad():
        x = (torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)) - 0.5) / 0.5
        pre = conv(x).transpose(0, 1).flatten(1)
        net.features[1].running_mean.copy_(pre.mean(1))
        net.features[1].running_var.copy_(pre.var(1, unbiased=False))
    return net.eval()


def test_the_penalty_follows_deepinversion_on_the_layer_input():
    net = _calibrated_tinynet()
    adapter = _adapter(net)
    step = _bound(adapter, batch=2, weight=1.0)
    assert step.layer_paths == ["features.1"] == batchnorm_layers(net)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 0.3 + 0.6  # bright and flat
    loss = step.loss(_Ctx(adapter), adapter(x).per_image(2), x)
    bn = net.features[1]
    with torch.no_grad():
        out = bn(net.features[0]((x - 0.5) / 0.5)).transpose(0, 1).flatten(1)
        target_var = bn.weight ** 2 * bn.running_var / (bn.running_var + bn.eps)
        expected = (out.mean(1) - bn.bias).norm() + (out.var(1, unbiased=False) - target_var).norm()
    assert torch.allclose(loss, torch.full((2,), float(expected) / 2), rtol=1e-5)  # shared by the two images
    noise = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))  # like the calibration
    assert float(step.loss(_Ctx(adapter), adapter(noise).per_image(2), noise).sum()) < 0.2 * float(loss.sum())


def test_over_image_keeps_the_images_apart_and_reads_every_view():
    net = _calibrated_tinynet()
    adapter = _adapter(net)
    step = _bound(adapter, batch=2, over="image")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    x[1] = 0.9  # one noise image, one flat
    views = torch.cat([x, x.flip(-1)])  # two views of each image: rows k * B + b
    loss = step.loss(_Ctx(adapter), adapter(views).per_image(2), x)
    alone = _bound(adapter, batch=1, over="image")
    first = alone.loss(_Ctx(adapter), adapter(torch.cat([x[:1], x[:1].flip(-1)])).per_image(1), x[:1])
    assert float(loss[0]) == pytest.approx(float(first[0]), rel=1e-5)  # image 0 is unaffected by image 1
    assert float(loss[1]) > 2 * float(loss[0])


def test_per_view_keeps_the_rows_that_per_image_averages():
    adapter = _adapter(TinyNet().eval())
    adapter.add_layers(["features.1"])
    out = adapter(torch.rand(6, 3, 32, 32)).per_image(2)
    assert out.layer("features.1").shape[0] == 2 and out.per_view().layer("features.1").shape[0] == 6
    assert layer_head("features.1") in adapter(torch.rand(1, 3, 32, 32)).heads


def test_folded_batch_norm_and_a_wrong_layer_are_refused_before_the_run():
    net = TinyNet().eval()
    with torch.no_grad():
        net.features[1].weight.fill_(1.0)
        net.features[1].running_var.fill_(1.0 - net.features[1].eps)
    with pytest.raises(RecipeError, match="folded into its convolutions"):
        _bound(_adapter(net), batch=1)
    with pytest.raises(RecipeError, match="'features.0' is not a batch-norm layer"):
        _bound(_adapter(TinyNet().eval()), batch=1, layers=["features.0"])


def _photos(folder, count: int = 3) -> str:
    """``count`` seeded noise 'photos' of different brightness in ``folder``; their glob."""
    folder.mkdir()
    rng = np.random.default_rng(5)
    for k in range(count):
        pixels = np.clip(rng.normal(0.3 + 0.2 * k, 0.1, (48, 64, 3)), 0, 1)
        Image.fromarray(np.uint8(pixels * 255)).save(folder / f"p{k}.png")
    return str(folder / "*.png")


def test_photos_give_their_own_statistics_to_a_model_with_folded_or_any_layers(tmp_path):
    glob = _photos(tmp_path / "photos")
    net = TinyNet().eval()
    with torch.no_grad():  # folded: the stored statistics say nothing, yet photos give the prior
        net.features[1].weight.fill_(1.0)
        net.features[1].running_var.fill_(1.0 - net.features[1].eps)
    adapter = _adapter(net)
    step = _bound(adapter, batch=1, photos=glob, layers=["features.0", "features.1"])
    with torch.no_grad():  # the target: mean and variance per channel over the ten views of each photo
        acts = []
        for k in range(3):
            with Image.open(tmp_path / "photos" / f"p{k}.png") as im:
                photo = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)
            photo = TF.resize(photo, [round(224 * 1.25)], antialias=True)
            views = torch.stack(TF.ten_crop(photo, [224, 224]))
            acts.append(net.features[0]((views - 0.5) / 0.5).transpose(0, 1).flatten(1))
        act = torch.cat(acts, 1).double()
    mean, var = step.targets_[0]
    assert torch.allclose(mean, act.mean(1).float(), atol=1e-5)
    assert torch.allclose(var, act.var(1, unbiased=False).float(), rtol=1e-4, atol=1e-6)
    bright = torch.full((1, 3, 32, 32), 0.95)
    like = torch.from_numpy(np.clip(np.random.default_rng(6).normal(0.5, 0.12, (1, 32, 32, 3)), 0, 1)
                            ).permute(0, 3, 1, 2).float()
    far = step.loss(_Ctx(adapter), adapter(bright).per_image(1), bright)
    near = step.loss(_Ctx(adapter), adapter(like).per_image(1), like)
    assert float(near) < 0.5 * float(far)


def test_photos_that_match_nothing_and_a_model_without_batch_norm_say_what_to_give(tmp_path):
    with pytest.raises(RecipeError, match="no photo matches"):
        _bound(_adapter(TinyNet().eval()), batch=1, photos=str(tmp_path / "none" / "*.jpg"))
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(RecipeError, match="give 'source: photos' and 'layers'"):
        _bound(_adapter(plain.eval()), batch=1)
    with pytest.raises(RecipeError, match="name the layers to read"):
        _bound(_adapter(plain.eval()), batch=1, photos=_photos(tmp_path / "p"))
    step = _bound(_adapter(plain.eval()), batch=1, photos=str(tmp_path / "p" / "*.png"), layers=["1"])
    assert step.layer_paths == ["1"]
    optional = _bound(_adapter(plain.eval()), batch=2, source="photos", required=False)  # adds nothing, says so
    x = torch.rand(2, 3, 32, 32)
    assert optional.layer_paths == [] and torch.equal(optional.loss(None, None, x), torch.zeros(2))
    assert "nothing to match" in optional.record()["note"]


def test_bn_statistics_from_photos_in_a_real_recipe_relative_to_the_recipe_file(tmp_path):
    _photos(tmp_path / "photos")
    recipe = tiny_recipe(iterations=3)
    recipe["steps"].insert(-1, {"step": "bn-statistics", "weight": 0.5, "photos": "photos/*.png",
                                "layers": ["features.0"]})
    result = run_recipe_dict(recipe, tmp_path / "out" / "run", base_dir=tmp_path)
    assert result.status == "completed"


def test_the_shipped_photos_are_the_default_source_and_naming_photos_implies_it(tmp_path):
    from pipeline_plugins.photo_files import BUILTIN_PHOTOS

    assert len(list(BUILTIN_PHOTOS.glob("*.png")) + list(BUILTIN_PHOTOS.glob("*.jpg"))) == 10
    assert BNStatisticsParams(photos="x/*.png").source == "photos"
    with pytest.raises(ValueError, match="only with source: photos"):
        BNStatisticsParams(photos="x/*.png", source="stored")
    net = TinyNet().eval()
    shipped = _bound(_adapter(net), batch=1, source="photos")
    stored = _bound(_adapter(net), batch=1)
    mine = _bound(_adapter(net), batch=1, photos=_photos(tmp_path / "p"))
    assert not torch.allclose(shipped.targets_[0][0], stored.targets_[0][0])
    assert not torch.allclose(shipped.targets_[0][0], mine.targets_[0][0])


def test_bn_statistics_contract_and_a_real_run(tmp_path):
    check_step(BNStatistics, {"weight": 0.5, "first": 5.0})
    recipe = tiny_recipe(iterations=4)
    recipe["steps"].insert(-1, {"step": "bn-statistics", "weight": 0.5, "over": "image"})
    result = run_recipe_dict(recipe, tmp_path / "run")
    assert result.status == "completed"


# -- noise (randomised smoothing on the view) ------------------------------------------------------

def test_noise_adds_fresh_seeded_gaussian_noise_to_the_view_only(tmp_path):
    from pipeline_plugins.transform.noise import Noise, NoiseParams

    check_step(Noise, {"std": 0.2})

    class _Gen:
        def __init__(self):
            self.g = torch.Generator().manual_seed(5)
            self.iteration = 0

        def generator(self, step):
            return self.g

    step = Noise(NoiseParams(std=0.2))
    ctx = _Gen()
    x = torch.full((4, 3, 64, 64), 0.5, requires_grad=True)
    first, second = step.apply(ctx, x), step.apply(ctx, x)
    added = (first - 0.5).detach()
    assert abs(float(added.mean())) < 0.01 and float(added.std()) == pytest.approx(0.2, rel=0.03)
    assert not torch.equal(first, second)  # a new draw every iteration
    first.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # the gradient passes through unchanged
    with pytest.raises(RecipeError, match="use on: view"):
        Noise(NoiseParams(on="image")).bind(None)
    from pipeline_core.recipe.schedule import Schedule

    falling = Noise(NoiseParams(std=(0.2, 0.05)), 0, Schedule.always(11))
    assert [round(falling.std_at(i), 6) for i in (0, 5, 10)] == [0.2, 0.125, 0.05]
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        NoiseParams(std=(0.2, 1.5))
    recipe = tiny_recipe(iterations=4)
    recipe["steps"].insert(1, {"step": "noise", "std": [0.1, 0.02]})
    assert run_recipe_dict(recipe, tmp_path / "run").status == "completed"
