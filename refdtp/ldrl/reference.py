"""The L-DRL loss and its gradient in the paper's form: three explicit evaluations of G.

For block n with input x = s_{n-1}, output y = s_n = F_n(x), clean pool
indices r, eps ~ N(0, sigma^2 I) shaped like x and eta ~ N(0, sigma^2 I)
shaped like y (Ernoult et al. 2022; docs/algorithm.md §4.1):

    L(omega) = (1/B) sum_b [ -2 <eps_b, G(F(x_b + eps_b); r~) - G(y_b; r)>
                             + ||G(y_b + eta_b; r) - G(y_b; r)||^2 ].

No 1/sigma^2 factor, as in the official code (docs/conventions.md §1).
"""
from __future__ import annotations

from ..blocks import Block, tree_add

ROUTINGS = ("noisy", "clean")


def check_routing(routing: str) -> str:
    """The routing name, or a ValueError naming the valid ones."""
    if routing not in ROUTINGS:
        raise ValueError(f"unknown L-DRL routing {routing!r}; expected one of {', '.join(ROUTINGS)}")
    return routing


def noisy_pass(block: Block, W: dict, x_noisy, route, routing: str):
    """F(x + eps) and the route G uses on it: the noisy pass's own indices, or the clean ones."""
    y_noisy, trace = block.forward(W, x_noisy)
    return y_noisy, (block.route(trace) if check_routing(routing) == "noisy" else route)


def ldrl_loss(block: Block, W: dict, omega: dict, x, y, route, eps, eta, routing: str = "noisy"):
    """The L-DRL loss with frozen noise (a 0-d array).

    Args:
        x, y: (B, *in_shape) block input and (B, *out_shape) its output F(x).
        route: the clean pass's pool indices, ``block.route(trace)``.
        eps, eta: noise shaped like x and like y.
        routing: "noisy" (the paper) or "clean", for G(F(x + eps)).
    """
    y_noisy, route_noisy = noisy_pass(block, W, x + eps, route, routing)
    g_noisy = block.feedback(omega, y_noisy, route_noisy)[0]
    g_clean = block.feedback(omega, y, route)[0]
    g_eta = block.feedback(omega, y + eta, route)[0]
    return (-2 * (eps * (g_noisy - g_clean)).sum() + ((g_eta - g_clean) ** 2).sum()) / x.shape[0]


def ldrl_grads_naive(block: Block, W: dict, omega: dict, x, y, route, eps, eta,
                     routing: str = "noisy") -> dict:
    """dL/d omega through all three G evaluations (the reference every faster form is checked against).

    Upstream signals (the chain rule through each evaluation of G):
    -2 eps / B into G(F(x + eps)), 2 (G(y + eta) - G(y)) / B into G(y + eta),
    and (2 eps - 2 (G(y + eta) - G(y))) / B into G(y).

    Returns:
        {param: gradient}, shaped like omega.
    """
    B = x.shape[0]
    y_noisy, route_noisy = noisy_pass(block, W, x + eps, route, routing)
    g_noisy, c_noisy = block.feedback(omega, y_noisy, route_noisy)
    g_clean, c_clean = block.feedback(omega, y, route)
    g_eta, c_eta = block.feedback(omega, y + eta, route)
    d_eta = g_eta - g_clean
    grads = block.feedback_param_grads(omega, c_noisy, -2 * eps / B)
    grads = tree_add(grads, block.feedback_param_grads(omega, c_eta, 2 * d_eta / B))
    return tree_add(grads, block.feedback_param_grads(omega, c_clean, (2 * eps - 2 * d_eta) / B))
