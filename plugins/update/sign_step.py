"""sign-step: the article's sign gradient step, every pixel moved by exactly epsilon (FGSM, repeated)."""

from __future__ import annotations

from pydantic import Field

from pipeline_core.hookspecs import hookimpl
from pipeline_core.step import Step, StepKind

from .update_params import UpdateParams


class SignStepParams(UpdateParams):
    epsilon: float = Field(0.01, gt=0, description="Every pixel moves by exactly this much.")


class SignStep(Step):
    """a <- a - epsilon * sign(grad): the fast gradient sign method, repeated."""

    name = "sign-step"
    kind = StepKind.UPDATE
    Params = SignStepParams

    def update(self, ctx, params, grads):
        for p, g in zip(params, grads):
            p.sub_(g.sign(), alpha=self.params.epsilon)
            if self.params.clamp:
                p.clamp_(0, 1)


@hookimpl
def register_steps(registry):
    registry.add_step(SignStep)
