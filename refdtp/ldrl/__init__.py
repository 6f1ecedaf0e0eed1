"""The L-DRL feedback loss and its gradient (Ernoult et al. 2022; docs/algorithm.md §4.1).

Read in this order; each later form is a checked rewrite of the one before
(tests assert equality to float64 round-off, and ``verify.theory``'s
``ldrl-plans-match-reference`` measures it):

1. :mod:`.reference`: the loss and its gradient through three explicit
   evaluations of G, as the paper writes them (``ldrl_loss``, ``ldrl_grads_naive``);
2. :mod:`.fused`: G is affine in its weights given its input, so the three
   evaluations collapse into one weight-layer pass and one weight-gradient
   product on stacked feature differences (``ldrl_grads_fused``);
3. :mod:`.plans`, :mod:`.conv_pool`, :mod:`.winograd_plan` and :mod:`.selection`: everything
   that depends only on the batch hoisted out of the K_n feedback iterations, behind one interface:
   ``make_plan(block, W, x, y, route, routing).grads(omega, eps, eta, with_loss)``.

Routing (docs/conventions.md §3): G(y) and G(y + eta) are always un-pooled with
the clean pass's indices r; G(F(x + eps)) with the noisy pass's indices r~
(``routing="noisy"``, the paper's rule) or with r (``routing="clean"``).
"""
from .conv_pool import ConvPoolPlan
from .fused import ldrl_constants, ldrl_grads_fused
from .plans import ROUTINGS, FirstLayerPlan, FusedPlan, Plan, ReferencePlan
from .reference import ldrl_grads_naive, ldrl_loss
from .selection import PLANS, applicable_plans, make_plan
from .winograd_plan import WinogradConvPoolPlan

__all__ = ["PLANS", "ROUTINGS", "ConvPoolPlan", "FirstLayerPlan", "FusedPlan", "Plan", "ReferencePlan",
           "WinogradConvPoolPlan", "applicable_plans", "ldrl_constants", "ldrl_grads_fused",
           "ldrl_grads_naive", "ldrl_loss", "make_plan"]
