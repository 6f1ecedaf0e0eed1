"""Oracle networks and feedback for the Gauss-Newton verification (float64, small nets).

Constructed feedback weights whose composite Jacobian is known in closed form
(exact inverses, layer-wise pseudo-inverses, transposes, the greedy DRL
minimiser and its closed form over an antithetic noise set), and the small
MLPs they live in. Meulemans et al. 2020 (arXiv 2006.14331); docs/theory.md §5,
§6. The Gauss-Newton references themselves are in
:mod:`refdtp.theory.gauss_newton`.
"""
from __future__ import annotations

import numpy as np

from ..activations import Activation
from ..backend import array_module
from ..blocks import Block
from ..feedback import drl_reconstruction
from ..networks import Network, Trace
from ..numerical import host64
from ..ops import Act, Linear
from .gauss_newton import RCOND, damped_pinv, like, total_jacobians
from .jacobians import unit_batch


def _mlp(widths, activation, output_activation, feedback_ops, name: str) -> Network:
    """Blocks Linear -> [activation] (none for None/"identity"), G_n = feedback_ops(F_n's ops)."""
    blocks = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:], strict=False)):  # consecutive pairs
        act = activation if i < len(widths) - 2 else output_activation
        forward = [Linear(n_in, n_out)] + ([] if act in (None, "identity") else [Act((n_out,), act)])
        blocks.append(Block(f"fc_{i}", forward, feedback_ops(forward)))
    return Network(blocks, name)


def linear_feedback_mlp(widths, activation: str | None = "tanh",
                        output_activation: str | None = None) -> Network:
    """MLP whose feedback maps are single Linear ops, G_n(y) = V_n y + c_n.

    Layer-wise linear feedback (docs/theory.md §5.4, §6.3): J_{G_n} = V_n
    for every sample, so the composite feedback Jacobian is V_{n+1} ... V_N.
    Activation None or "identity" gives a linear block (M2 of docs/theory.md §1.3).
    """
    return _mlp(widths, activation, output_activation,
                lambda f: [Linear(f[0].n_out, f[0].n_in)], "linear_feedback_mlp")


def inverse_activation(act: Activation) -> Activation:
    """s^{-1} as an activation: value s.inverse, derivative 1/s'(s^{-1}(y))."""
    if act.inverse is None:
        raise ValueError(f"{act.name} is not invertible")
    return Activation(f"inverse_{act.name}", act.inverse, lambda a, y: 1 / act.derivative(y, a))


def exact_inverse_mlp(widths, activation: str = "tanh", output_activation: str | None = None) -> Network:
    """MLP with feedback G_n = [s^{-1}, Linear]; with :func:`exact_inverse_feedback`
    G_n = F_n^{-1} exactly (M3 of docs/theory.md §1.3; §5.3). Widths must be equal."""
    def feedback(f):
        inverse = [Act(f[1].out_shape, inverse_activation(f[1].act))] if len(f) > 1 else []
        return inverse + [Linear(f[0].n_out, f[0].n_in)]
    return _mlp(widths, activation, output_activation, feedback, "exact_inverse_mlp")


def _feedback_from(net: Network, W: dict, weight_fn) -> dict:
    """omega with weight V_n = weight_fn(W_n) and bias -V_n b_n, so G_n(F_n(x)) removes F_n's bias."""
    omega = {}
    for block in net.blocks:
        Wn = W[block.name]
        V = weight_fn(host64(Wn["weight"]))
        om = {"weight": like(V, Wn["weight"])}
        if "bias" in Wn:
            om["bias"] = like(-V @ host64(Wn["bias"]), Wn["bias"])
        omega[block.name] = om
    return omega


def exact_inverse_feedback(net: Network, W: dict) -> dict:
    """omega making G_n(y) = W_n^{-1}(s^{-1}(y) - b_n) = F_n^{-1}(y) (square, invertible W_n).

    Target propagation with exact inverses gives GN targets to O(beta)
    (Meulemans et al. 2020 section 3, recalled; docs/theory.md §5.3).
    """
    return _feedback_from(net, W, np.linalg.inv)


def layerwise_pinv_feedback(net: Network, W: dict, rcond: float = RCOND) -> dict:
    """omega with V_n = W_n^+: each layer's local pseudo-inverse (plain DTP's small-sigma
    reconstruction optimum of a linear layer, docs/theory.md §5.4); not GN in general."""
    return _feedback_from(net, W, lambda M: damped_pinv(M, 0.0, rcond))


def transpose_feedback(net: Network, W: dict) -> dict:
    """omega with V_n = W_n^T: the Jacobian-matching (BP) feedback of a linear net (docs/theory.md §4.1)."""
    return _feedback_from(net, W, lambda M: M.T.copy())


def feedback_composite(net: Network, omega: dict, trace: Trace, n: int) -> np.ndarray:
    """J_gbar for s_n: J_{G_{n+1}}(s_{n+1}) ... J_{G_N}(s_N), shape (B, d_n, d_N), host.

    The Jacobian of the difference-corrected feedback path from the output down
    to s_n, every G_m linearised at the forward pass with its clean route
    (docs/theory.md §1.2 linearisation identity: t_n - s_n = -beta J_gbar e + O(beta^2)).
    """
    N, s_N = len(net), trace.s[-1]
    caches = {}
    for m in range(n + 1, N + 1):
        block = net.blocks[m - 1]
        caches[m] = block.feedback(omega[block.name], trace.s[m], block.route(trace.caches[m - 1]))[1]
    cols = []
    for k in range(int(np.prod(s_N.shape[1:]))):
        d = unit_batch(array_module(s_N), s_N.shape[0], s_N.shape[1:], k, s_N.dtype)
        for m in range(N, n, -1):
            d = net.blocks[m - 1].feedback_jvp(omega[net.blocks[m - 1].name], caches[m], d)
        cols.append(host64(d).reshape(s_N.shape[0], -1))
    return np.stack(cols, axis=2)


def _check_linear_feedback(block: Block, what: str) -> None:
    if not (block.G.param_index == len(block.G.ops) - 1 and isinstance(block.G.ops[-1], Linear)):
        raise ValueError(f"{what}: block {block.name}'s feedback must end with its weight op, a Linear")


def greedy_drl_feedback(net: Network, W: dict, omega: dict, trace: Trace, lam: float,
                        sample: int = 0) -> dict:
    """The sigma -> 0 minimiser of layer-wise DTP-DRL with damping lam, solved top-down.

    For linear feedback G_n(y) = V_n y + c_n, with C_n = V_{n+1} ... V_N
    (C_N = I) and A_n = C_n J_{n-1}, the small-sigma DRL objective
    ||V_n A_n - I||_F^2 + lam ||V_n||_F^2 has the minimiser
    V_n = A_n^T (A_n A_n^T + lam I)^{-1} (docs/theory.md §6.2, §6.3;
    Meulemans et al. 2020 section 4, recalled). The top composite V_N is the
    damped pseudo-inverse of J_{N-1}; for lam -> 0 and full-rank upper
    composites every C_n -> J_n^+. Uses the Jacobians of one sample: exact for
    B = 1 or a linear net. Biases are set to 0 (they cancel in differences).
    """
    J = total_jacobians(net, W, trace)
    omega, C = dict(omega), np.eye(J[-1].shape[1])
    for n in range(len(net), 1, -1):
        block = net.blocks[n - 1]
        _check_linear_feedback(block, "greedy_drl_feedback")
        V = damped_pinv(C @ J[n - 1][sample], lam)
        ref = omega[block.name]
        omega[block.name] = {k: (like(V, a) if k == "weight" else 0 * a) for k, a in ref.items()}
        C = V @ C
    return omega


def antithetic_design(shape: tuple, sigma: float, mean_covariance: bool = False) -> np.ndarray:
    """The 2d antithetic noise rows +-s e_k, d = prod(shape): a (2d, *shape) host array.

    Odd moments vanish exactly (docs/theory.md §3.3, "antithetic coordinate design"). Two scalings:

    - s = sigma: the rows' outer products sum to 2 sigma^2 I, so half the sum of a
      polynomial of degree <= 3 over the rows is its expectation under
      N(0, sigma^2 I) (expectations as half sums, :func:`verify.nets.ldrl_expected`);
    - s = sigma sqrt(d) (``mean_covariance``): the *mean* outer product is
      sigma^2 I, the Gaussian's (oracles that average over the rows as a batch).
    """
    d = int(np.prod(shape))
    unit = (sigma * np.sqrt(d) if mean_covariance else sigma) * np.eye(d)
    return np.concatenate([unit, -unit]).reshape((2 * d,) + tuple(shape))


def antithetic_batch(x, shape: tuple, sigma: float):
    """(x repeated 2d times per sample, the antithetic noise tiled to match), on x's backend."""
    noise = antithetic_design(shape, sigma, mean_covariance=True)
    xp = array_module(x)
    eps = np.tile(noise, (x.shape[0],) + (1,) * len(shape))
    return xp.repeat(x, len(noise), axis=0), like(eps, x)


def drl_closed_form(net: Network, W: dict, omega: dict, trace: Trace, n: int, eps, sigma: float,
                    wd: float, rcond: float = RCOND) -> dict:
    """Exact minimiser over omega_n of refdtp's DRL loss plus the optimiser's weight decay.

    :func:`refdtp.feedback.drl_loss` is (1/(B sigma^2)) sum_b ||r_{n-1} - s_{n-1} - eps_b||^2
    with r_{n-1} - s_{n-1} = G_n(r_n) - G_n(s_n) = V_n du_b, du = pre(r_n) - pre(s_n)
    (r_n does not depend on omega_n). SGD's weight decay wd adds (wd/2)||omega_n||^2.
    Setting the gradient to zero, with U = [du_b] (B x p) and E = [eps_b]:

        V_n^T = (U^T U + lam' I)^{-1} U^T E,   lam' = wd B sigma^2 / 2,

    a ridge regression (the SVD form of :func:`damped_pinv`; min-norm for wd = 0).
    Over noise with mean eps eps^T = sigma^2 I, U^T U ~ B sigma^2 A A^T and
    U^T E ~ B sigma^2 A, so V_n = A^T (A A^T + (wd/2) I)^{-1}: lam_eff = wd/2.
    The bias has zero data gradient, so decay sets it to 0.

    Args:
        trace: forward pass of the (noise-replicated) batch; eps: (B, *in_shape_n) noise.

    Returns:
        The new omega_n.
    """
    block = net.blocks[n - 1]
    _check_linear_feedback(block, "drl_closed_form")
    _, r_n = drl_reconstruction(net, W, omega, trace, n, eps)
    route = block.route(trace.caches[n - 1])
    B = eps.shape[0]
    du = block.feedback_features(r_n, route) - block.feedback_features(trace.s[n], route)
    U = host64(du).reshape(B, -1)
    Vt = damped_pinv(U, wd * B * sigma ** 2 / 2, rcond) @ host64(eps).reshape(B, -1)
    ref = omega[block.name]
    return {k: (like(Vt.T, a) if k == "weight" else 0 * a) for k, a in ref.items()}


def drl_closed_form_all(net: Network, W: dict, omega: dict, x, sigma: float, wd: float,
                        rcond: float = RCOND) -> dict:
    """Layer-wise DTP-DRL solved exactly, top-down (the order of the DRL feedback phase):
    omega_N, then omega_{N-1} with omega_N fixed, ..., omega_2, each by
    :func:`drl_closed_form` over the antithetic noise set of its input s_{n-1}."""
    omega = dict(omega)
    for n in range(len(net), 1, -1):
        block = net.blocks[n - 1]
        x_rep, eps = antithetic_batch(x, block.in_shape, sigma)
        trace = net.forward(W, x_rep)
        omega[block.name] = drl_closed_form(net, W, omega, trace, n, eps, sigma, wd, rcond)
    return omega
