"""shape-contrast: the target's logit on a tile-shuffled copy, lowered."""

from __future__ import annotations

import json

import torch

from pipeline_core.model import ModelAdapter, ModelInfo
from pipeline_core.testing import check_step
from pipeline_plugins.objective.shape_contrast import ShapeContrast, ShapeContrastParams, shuffle_tiles


def test_the_step_keeps_the_step_contract():
    check_step(ShapeContrast, {"target": [1, 2], "grid": 2})


def test_tiles_move_whole_and_each_image_has_its_own_order():
    x = torch.arange(2 * 3 * 9 * 8, dtype=torch.float32).view(2, 3, 9, 8)  # 9 rows: one left over
    same = torch.arange(4).repeat(2, 1)
    assert torch.equal(shuffle_tiles(x, 2, same, (0, 0)), x)
    perms = torch.tensor([[1, 0, 2, 3], [3, 2, 1, 0]])
    y = shuffle_tiles(x, 2, perms, (0, 0))
    assert torch.equal(y[0, :, :4, :4], x[0, :, :4, 4:]) and torch.equal(y[0, :, :4, 4:], x[0, :, :4, :4])
    assert torch.equal(y[1, :, :4, :4], x[1, :, 4:8, 4:]) and torch.equal(y[1, :, 4:8, 4:], x[1, :, :4, :4])
    assert torch.equal(y[:, :, 8:], x[:, :, 8:])  # the row that no tile holds stays
    assert torch.equal(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values)  # nothing lost or made
    rolled = shuffle_tiles(x, 2, same, (1, 3))
    assert torch.equal(rolled, torch.roll(x, (1, 3), (2, 3)))


class _Ctx:
    def __init__(self, module):
        info = ModelInfo(categories=[str(i) for i in range(10)], mean=(0.5,) * 3, std=(0.5,) * 3, size=None)
        self.model, self.device = ModelAdapter(module, info), torch.device("cpu")
        self._generator = torch.Generator().manual_seed(3)

    def generator(self, _step):
        return self._generator


def test_the_loss_is_the_weighted_logit_of_the_shuffled_copy():
    from pipeline_core.kit.tiny import TinyNet

    ctx = _Ctx(TinyNet())
    step = ShapeContrast(ShapeContrastParams(target=[4, 7], weight=0.25, grid=4))
    step.classes = [4, 7]
    step.setup(ctx)
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    state = ctx._generator.get_state()
    loss = step.loss(ctx, None, image)
    ctx._generator.set_state(state)
    copy = step.shuffled(ctx, image)
    expected = 0.25 * ctx.model(copy).logits[[0, 1], [4, 7]]
    assert torch.allclose(loss, expected)
    assert not torch.equal(copy, image)
    loss.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0  # the image is what it pushes


def test_a_real_run_records_the_step(cli, tmp_path, mobilenet_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""iterations: 2
batch: 2
model: {{name: mobilenet_v2, weights: {mobilenet_path}, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], size: 224}}
steps:
  - step: init-noise
    size: 96
  - step: shape-contrast      # listed first, with other classes: still not the run's aim
    target: [tabby, tabby]
    grid: 3
  - step: L1-loss
    target: [koala, castle]
    C: 10000
    lambda: 0
  - step: adam
    lr: 0.05
""")
    done = cli("run", str(recipe), "--out", str(tmp_path / "run"), "--quiet", "--threads", "1")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["step_facts"]["step 1 (shape-contrast)"] == {"grid": 3, "weight": 0.5}
    names = [image["targets"][0]["name"] for image in record["images"]]
    assert names == ["koala", "castle"], names  # the aims are the class objective's, not the lowered copy's
