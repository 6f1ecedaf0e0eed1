"""The L-DRL gradient with G's linearity in omega exploited (a checked rewrite of :mod:`.reference`).

When G = post(L_omega(pre(.)) + c) with ``post`` linear (``Block.feedback_is_affine``),
every difference of G evaluations is one evaluation of the linear map
L_omega on a difference of features (docs/algorithm.md §4.2). With
u_c = pre(y; r), du~ = pre(F(x + eps); r~) - u_c and du_eta = pre(y + eta; r) - u_c:

    L = (1/B) [ -2 <eps, post L_omega du~> + ||post L_omega du_eta||^2 ],
    dL/d omega = d/d omega ( <-2 eps / B, post L_omega du~> + <2 d_eta / B, post L_omega du_eta> ),

with d_eta = post L_omega du_eta held fixed in the second term. One weight-layer
evaluation and one weight-gradient product on the stacked pair (du~, du_eta),
instead of three of each. The bias of G cancels in every difference, so its
gradient is exactly 0.
"""
from __future__ import annotations

from ..backend import array_module
from ..blocks import Block
from .reference import ldrl_grads_naive, ldrl_loss, noisy_pass


def ldrl_constants(block: Block, y, route):
    """u_c = pre(y; r), the per-batch constant of the fused gradient (e.g. ELU(unpool(y; r)))."""
    return block.feedback_features(y, route)


def ldrl_grads_fused(block: Block, W: dict, omega: dict, x, y, route, u_clean, eps, eta,
                     with_loss: bool = False, routing: str = "noisy"):
    """dL-DRL/d omega by the fused formula; falls back to the reference when G is not affine.

    Args:
        x, y: (B, *in_shape), (B, *out_shape) frozen block input and output.
        route: clean pool indices; u_clean: :func:`ldrl_constants`, (B, *feature_shape).
        eps, eta: noise shaped like x and like y.
        with_loss: also return the loss value (one more weight-layer evaluation).
        routing: "noisy" (the paper) or "clean", for G(F(x + eps)).

    Returns:
        (grads, loss or None).
    """
    if not block.feedback_is_affine:
        grads = ldrl_grads_naive(block, W, omega, x, y, route, eps, eta, routing)
        return grads, (ldrl_loss(block, W, omega, x, y, route, eps, eta, routing) if with_loss else None)
    xp = array_module(x)
    B = x.shape[0]
    y_noisy, route_noisy = noisy_pass(block, W, x + eps, route, routing)
    # du: (2B, *feature_shape), rows [du~ ; du_eta]
    du = xp.empty((2 * B,) + tuple(u_clean.shape[1:]), dtype=u_clean.dtype)
    xp.subtract(block.feedback_features(y_noisy, route_noisy), u_clean, out=du[:B])
    xp.subtract(block.feedback_features(y + eta, route), u_clean, out=du[B:])
    d_eta = block.feedback_linear(omega, du[B:])  # G(y + eta) - G(y), (B, *in_shape)
    # signal: (2B, *in_shape), rows [-2 eps / B ; 2 d_eta / B], the upstream gradients of the two terms
    signal = xp.empty((2 * B,) + tuple(x.shape[1:]), dtype=x.dtype)
    xp.multiply(eps, -2.0 / B, out=signal[:B])
    xp.multiply(d_eta, 2.0 / B, out=signal[B:])
    grads = block.difference_grads(omega, du, signal)
    loss = None
    if with_loss:
        d_noisy = block.feedback_linear(omega, du[:B])
        loss = (-2 * (eps * d_noisy).sum() + (d_eta ** 2).sum()) / B
    return grads, loss
