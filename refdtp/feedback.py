"""The baselines' feedback-weight losses and their hand-derived gradients.

For block n with input x = s_{n-1}, output y = s_n = F_n(x) and clean pool
indices r (the route of the clean pass); the L-DRL loss lives in
:mod:`refdtp.ldrl`:

- **Vanilla DTP** (Lee et al. 2015, docs/algorithm.md §4.4):
  L = (1/B) sum_b ||(x_b + eps_b) - G(F(x_b + eps_b))||^2.
- **DRL** (Meulemans et al. 2020, docs/algorithm.md §4.5): see :func:`drl_grads`.

Noise arrays are arguments (drawn by the caller from a seeded stream), so
every function here is a pure function of (parameters, inputs, noise).
"""
from __future__ import annotations

from .blocks import Block, tree_add
from .networks import Network, Trace

# -- vanilla DTP reconstruction --------------------------------------------

def dtp_loss(block: Block, W: dict, omega: dict, x, eps):
    """(1/B) sum_b ||(x + eps) - G(F(x + eps))||^2 (a 0-d array)."""
    x_noisy = x + eps
    y_noisy, trace = block.forward(W, x_noisy)
    g = block.feedback(omega, y_noisy, block.route(trace))[0]
    return ((x_noisy - g) ** 2).sum() / x.shape[0]


def dtp_grads(block: Block, W: dict, omega: dict, x, eps, with_loss: bool = False):
    """d/d omega of :func:`dtp_loss`: upstream signal 2 (G(F(x~)) - x~)/B. Returns (grads, loss)."""
    x_noisy = x + eps
    y_noisy, trace = block.forward(W, x_noisy)
    g, cache = block.feedback(omega, y_noisy, block.route(trace))
    residual = g - x_noisy
    grads = block.feedback_param_grads(omega, cache, 2 * residual / x.shape[0])
    return grads, ((residual ** 2).sum() / x.shape[0] if with_loss else None)


# -- DRL (difference reconstruction loss) ---------------------------------

def drl_reconstruction(net: Network, W: dict, omega: dict, trace: Trace, n: int, eps):
    """r_{n-1}: s_{n-1} + eps sent up to the output and back down the
    difference-corrected feedback path (docs/algorithm.md §4.5, steps 1-3).

    Up: y_n..y_N = F_N(...F_n(s_{n-1} + eps)) with their own (noisy) routing.
    Down: r_N = y_N; r_{k-1} = s_{k-1} + G_k(r_k) - G_k(s_k) for k = N..n,
    every G_k linearised at the clean forward pass (clean routes).

    Returns:
        (r_{n-1}, r_n): the reconstruction and the input of G_n that made it.
    """
    N = len(net)
    h = trace.s[n - 1] + eps
    for k in range(n, N + 1):
        h = net.blocks[k - 1].forward(W[net.blocks[k - 1].name], h)[0]
    r = h
    for k in range(N, n - 1, -1):
        block = net.blocks[k - 1]
        route = block.route(trace.caches[k - 1])
        r_k = r
        r = trace.s[k - 1] + block.feedback_difference(omega[block.name], r, trace.s[k], route)
    return r, r_k


def drl_loss(net: Network, W: dict, omega: dict, trace: Trace, n: int, eps, sigma: float):
    """L = (1/(B sigma^2)) sum_b ||r_{n-1} - (s_{n-1} + eps)||^2 for block n's feedback G_n."""
    r, _ = drl_reconstruction(net, W, omega, trace, n, eps)
    B = eps.shape[0]
    return ((r - trace.s[n - 1] - eps) ** 2).sum() / (B * sigma ** 2)


def drl_grads(net: Network, W: dict, omega: dict, trace: Trace, n: int, eps, sigma: float,
              with_loss: bool = False):
    """d/d omega_n of :func:`drl_loss`, the upper feedback maps held fixed.

    r_{n-1} = s_{n-1} + G_n(r_n) - G_n(s_n), so with delta = 2 (r_{n-1} - s_{n-1} - eps)/(B sigma^2)
    the gradient is d<delta, G_n(r_n) - G_n(s_n)>/d omega_n. Damping (the
    feedback weight decay) is applied by the optimiser, as in Meulemans et al.

    Returns:
        (grads for block n's omega, loss or None).
    """
    block = net.blocks[n - 1]
    om = omega[block.name]
    r, r_n = drl_reconstruction(net, W, omega, trace, n, eps)
    B = eps.shape[0]
    residual = r - trace.s[n - 1] - eps
    delta = 2 * residual / (B * sigma ** 2)
    route = block.route(trace.caches[n - 1])
    if block.feedback_is_affine:
        du = block.feedback_features(r_n, route) - block.feedback_features(trace.s[n], route)
        grads = block.difference_grads(om, du, delta)
    else:
        grads = tree_add(block.feedback_param_grads(om, block.feedback(om, r_n, route)[1], delta),
                     block.feedback_param_grads(om, block.feedback(om, trace.s[n], route)[1], delta),
                     scale=-1.0)
    loss = (residual ** 2).sum() / (B * sigma ** 2) if with_loss else None
    return grads, loss
