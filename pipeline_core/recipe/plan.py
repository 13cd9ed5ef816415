"""The run's plan, for the host's modules: :class:`~pipeline_core.plan.Plan` is public now.

Steps are handed the plan in ``bind``, so it moved to the public face; this module keeps the
names the host imported from here.
"""

from __future__ import annotations

from pipeline_core.plan import Plan  # noqa: F401
from pipeline_core.recipe.classnames import ClassNames, class_key  # noqa: F401
