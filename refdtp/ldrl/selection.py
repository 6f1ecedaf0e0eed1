"""Which L-DRL plan a block gets: the fastest one that applies (all are checked equal to the reference)."""
from __future__ import annotations

import os

from ..blocks import Block
from .conv_pool import ConvPoolPlan
from .plans import FirstLayerPlan, FusedPlan, Plan, ReferencePlan
from .winograd_plan import WinogradConvPoolPlan

#: Fastest first; ReferencePlan applies to every block.
PLANS = (WinogradConvPoolPlan, ConvPoolPlan, FirstLayerPlan, FusedPlan, ReferencePlan)

#: Environment variable that, set to 0, keeps training off the Winograd plan (to measure its gain).
WINOGRAD_ENV = "REFDTP_WINOGRAD"


def applicable_plans(block: Block) -> list[type[Plan]]:
    """Every plan class that applies to the block, fastest first (tests check each one)."""
    return [cls for cls in PLANS if cls.supports(block)]


def make_plan(block: Block, W: dict, x, y, route, routing: str = "noisy") -> Plan:
    """The fastest plan for block n on one batch: the first that applies and pays off there
    (:meth:`Plan.pays_off`); never the Winograd plan if $REFDTP_WINOGRAD=0.

    Args:
        block, W: the block and its (frozen) forward parameters.
        x: (B, *in_shape) block input; y: (B, *out_shape) its output.
        route: the clean pass's pool indices.
        routing: "noisy" (the paper's rule for G(F(x + eps))) or "clean".
    """
    plans = [cls for cls in applicable_plans(block) if cls.pays_off(block)]
    if os.environ.get(WINOGRAD_ENV, "1") == "0":
        plans = [cls for cls in plans if cls is not WinogradConvPoolPlan]
    return plans[0](block, W, x, y, route, routing)
