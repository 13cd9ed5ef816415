"""L1-loss: the article's objective |C - O_target(a)| + lambda * sum|a|.

Maximising the target logit alone could be done by raising every logit; pulling it toward a
large constant C while penalising the L1 norm of the input keeps the image from blowing up.
"""

from __future__ import annotations

from pydantic import Field

from pipeline_core.hookspecs import hookimpl
from pipeline_core.objectives import ClassObjective, ClassParams, l1_image


class L1LossParams(ClassParams):
    C: float = Field(200.0, description="The constant the target logit is pulled toward.")
    lam: float = Field(0.001, ge=0, alias="lambda", description="Weight of the L1 norm of the input image.")


class L1Loss(ClassObjective):
    """Per image: |C - logit[target]| + lambda * sum |pixel|."""

    name = "L1-loss"
    Params = L1LossParams

    def loss(self, ctx, out, image):
        logit = self.picked(out.head(self.params.head))
        loss = (self.params.C - logit).abs()
        if self.params.lam:
            loss = loss + self.params.lam * l1_image(image)
        return loss


@hookimpl
def register_steps(registry):
    registry.add_step(L1Loss)
