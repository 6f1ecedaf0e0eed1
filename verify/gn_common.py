"""Shared set-up of the Gauss-Newton / DRL claims: small problems, constants, helpers.

Networks (docs/theory.md §1.3): M1 = 6-5-4-3 tanh with a linear output, M2 = the
same widths, linear; M3 = 4-4-4-4 tanh with W = I + small random; "M1t" = M1
with a tanh output. Feedback is layer-wise linear, G_n(y) = V_n y + c_n
(:func:`refdtp.theory.oracles.linear_feedback_mlp`), unless stated. Output loss
1/2-MSE with random regression targets: e_b = s_N^b - y_b. Weights are
PyTorch's default init; data float64, drawn on the host, moved to ctx.backend.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refdtp.metrics import relative_distance
from refdtp.numerical import fitted_slope
from refdtp.theory import gauss_newton as gn
from refdtp.theory import oracles

M1, M3 = (6, 5, 4, 3), (4, 4, 4, 4)
SIGMAS = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3]
BETAS = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]  # beta = 0.1 pushes M3 targets out of tanh's range
DECAY = 0.2  # feedback weight decay of the damped runs (lambda_eff = 0.1)
SOURCE = "Meulemans et al. 2020 (arXiv 2006.14331)"


def lambda_eff(wd: float) -> float:
    """Damping of the composite feedback produced by refdtp's DRL with weight decay wd (derived above)."""
    return wd / 2


@dataclass
class Problem:
    net: object
    W: dict
    omega: dict
    x: object
    trace: object
    e: object
    J: list


def problem(ctx, key: int, net, B: int, weights=None) -> Problem:
    """Seeded weights (PyTorch init, or ``weights(rng, W)``), inputs and 1/2-MSE errors on ctx.backend."""
    W, omega = net.init(int(ctx.rng(key, 0).integers(2 ** 31)), np.float64)
    if weights is not None:
        W = weights(ctx.rng(key, 3), W)
    W, omega = ctx.tree(W), ctx.tree(omega)
    x = ctx.to(ctx.rng(key, 1).standard_normal((B,) + tuple(net.in_shape)))
    trace = net.forward(W, x)
    e = trace.s[-1] - ctx.to(ctx.rng(key, 2).standard_normal(tuple(trace.s[-1].shape)))
    return Problem(net, W, omega, x, trace, e, gn.total_jacobians(net, W, trace))


def composite_error(p: Problem, omega: dict, n: int, lam: float) -> float:
    """max_b ||J_gbar^b - J_n^{bT}(J_n^b J_n^{bT} + lam I)^{-1}|| / ||.|| for the targets of s_n."""
    C = oracles.feedback_composite(p.net, omega, p.trace, n)
    return max(relative_distance(C[b], gn.damped_pinv(p.J[n][b], lam)) for b in range(len(C)))


def _loglog_fit(xs, ys) -> float:
    return fitted_slope(xs, ys) if all(y > 0 for y in ys) else float("nan")
