"""Feedback-weight losses and their hand-derived gradients.

For block n with input x = s_{n-1}, output y = s_n = F_n(x) and clean pool
indices r (the route of the clean pass):

- **L-DRL** (Ernoult et al. 2022, algorithm.md 4.1; theory.md 3.2), with
  eps ~ N(0, sigma^2 I) in x-space and eta ~ N(0, sigma^2 I) in y-space:

      L(omega) = (1/B) sum_b [ -2 <eps_b, G(F(x_b + eps_b); r~) - G(y_b; r)>
                               + ||G(y_b + eta_b; r) - G(y_b; r)||^2 ],

  G(F(x + eps)) routed by the noisy pass's indices r~, G(y) and G(y + eta)
  by the clean ones. No 1/sigma^2 (as in the official code).
- **Vanilla DTP** (Lee et al. 2015, algorithm.md 4.5):
  L = (1/B) sum_b ||(x_b + eps_b) - G(F(x_b + eps_b))||^2.
- **DRL** (Meulemans et al. 2020, theory.md 3.1): see :func:`drl_grads`.

Noise arrays are arguments (drawn by the caller from a seeded stream), so
every function here is a pure function of (parameters, inputs, noise).
"""
from __future__ import annotations

from .backend import array_module
from .blocks import Block
from .networks import Network, Trace


def _add(a: dict, b: dict, scale: float = 1.0) -> dict:
    return {k: a[k] + scale * b[k] for k in a}


def _vdot(a, b):
    return (a * b).sum()


# -- L-DRL --------------------------------------------------------------------

def ldrl_loss(block: Block, W: dict, omega: dict, x, y, route, eps, eta):
    """The L-DRL loss with frozen noise, by three explicit evaluations of G (a 0-d array)."""
    y_noisy, trace = block.forward(W, x + eps)
    g_noisy = block.feedback(omega, y_noisy, block.route(trace))[0]
    g_clean = block.feedback(omega, y, route)[0]
    g_eta = block.feedback(omega, y + eta, route)[0]
    B = x.shape[0]
    return (-2 * _vdot(eps, g_noisy - g_clean) + ((g_eta - g_clean) ** 2).sum()) / B


def ldrl_grads_naive(block: Block, W: dict, omega: dict, x, y, route, eps, eta) -> dict:
    """dL-DRL/d omega through all three G evaluations (the reference form).

    Upstream signals (algorithm.md 10): -2 eps/B into G(F(x+eps)),
    2 (G(y+eta) - r)/B into G(y+eta), and (2 eps - 2 (G(y+eta) - r))/B into r = G(y).
    """
    B = x.shape[0]
    y_noisy, trace = block.forward(W, x + eps)
    g_noisy, c_noisy = block.feedback(omega, y_noisy, block.route(trace))
    g_clean, c_clean = block.feedback(omega, y, route)
    g_eta, c_eta = block.feedback(omega, y + eta, route)
    d_eta = g_eta - g_clean
    grads = block.feedback_param_grads(omega, c_noisy, -2 * eps / B)
    grads = _add(grads, block.feedback_param_grads(omega, c_eta, 2 * d_eta / B))
    return _add(grads, block.feedback_param_grads(omega, c_clean, (2 * eps - 2 * d_eta) / B))


def ldrl_constants(block: Block, y, route):
    """u_c = pre(y; r): the per-batch constant of the fused gradient (ELU(unpool(y)))."""
    return block.feedback_features(y, route)


def ldrl_grads_fused(block: Block, W: dict, omega: dict, x, y, route, u_clean, eps, eta,
                     with_loss: bool = False):
    """dL-DRL/d omega with G's linearity in omega exploited (algorithm.md 10).

    With G = post(L_omega(pre(.)) + c), u_c = pre(y; r), du~ = pre(F(x+eps); r~) - u_c
    and du_eta = pre(y+eta; r) - u_c:

        L = (1/B) [ -2 <eps, post L_omega du~> + ||post L_omega du_eta||^2 ],
        dL/d omega = grad of <-2 eps/B, post L du~> + <2 d_eta/B, post L du_eta>,

    with d_eta = post L_omega du_eta. One weight-layer evaluation and one
    weight-gradient product on the stacked pair (du~, du_eta), instead of
    three of each; u_c is computed once per batch. The bias gradient is 0.

    Args:
        x, y: (B, *in_shape), (B, *out_shape) frozen block input and output.
        route: clean pool indices; u_clean: :func:`ldrl_constants`.
        eps, eta: noise, shapes of x and y.
        with_loss: also return the loss value (costs one more G evaluation).

    Returns:
        (grads, loss or None).
    """
    if not block.feedback_is_affine:
        grads = ldrl_grads_naive(block, W, omega, x, y, route, eps, eta)
        return grads, (ldrl_loss(block, W, omega, x, y, route, eps, eta) if with_loss else None)
    xp = array_module(x)
    B = x.shape[0]
    y_noisy, trace = block.forward(W, x + eps)
    du = xp.empty((2 * B,) + tuple(u_clean.shape[1:]), dtype=u_clean.dtype)
    xp.subtract(block.feedback_features(y_noisy, block.route(trace)), u_clean, out=du[:B])
    xp.subtract(block.feedback_features(y + eta, route), u_clean, out=du[B:])
    d_eta = block.feedback_linear(omega, du[B:])  # G(y + eta) - G(y)
    signal = xp.empty((2 * B,) + tuple(x.shape[1:]), dtype=x.dtype)
    xp.multiply(eps, -2.0 / B, out=signal[:B])
    xp.multiply(d_eta, 2.0 / B, out=signal[B:])
    grads = block.difference_grads(omega, du, signal)
    loss = None
    if with_loss:
        d_noisy = block.feedback_linear(omega, du[:B])
        loss = (-2 * _vdot(eps, d_noisy) + (d_eta ** 2).sum()) / B
    return grads, loss


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
    difference-corrected feedback path (theory.md 3.1, steps 1-4).

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
        grads = _add(block.feedback_param_grads(om, block.feedback(om, r_n, route)[1], delta),
                     block.feedback_param_grads(om, block.feedback(om, trace.s[n], route)[1], delta),
                     scale=-1.0)
    loss = (residual ** 2).sum() / (B * sigma ** 2) if with_loss else None
    return grads, loss
