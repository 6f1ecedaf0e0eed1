"""Gauss-Newton references for small networks of refdtp blocks (float64, no autograd).

Meulemans et al. 2020, "A theoretical framework for target propagation"
(arXiv 2006.14331); theory.md sections 2, 3.1, 5.3-5.4 and 8. Everything here
is an *oracle* for the verification suite: exact per-sample Jacobians built
from the blocks' hand-written jvp/vjp with identity columns, the Gauss-Newton
(GN) targets and updates computed from them by dense linear algebra, and
closed-form or constructed feedback weights (exact inverses, layer-wise
pseudo-inverses, the DRL minimiser).

Conventions:

- Blocks n = 1..N as in :mod:`refdtp.targets`; s_n = ``trace.s[n]`` with
  d_n = prod(shape_n) entries per sample.
- ``e``: (B, *shape_N) per-sample output error dl_b/ds_N (no 1/B).
- Jacobians are float64 *host* arrays, one per sample: J_n of shape
  (B, d_N, d_n) with J_n^b = ds_N^b/ds_n^b. Linear algebra (SVD) runs on the
  host; targets and updates go back to the trace's backend.
- "grads" dicts are gradient-like directions, like
  :func:`refdtp.targets.forward_loss_grads` and :func:`refdtp.backprop.backprop`:
  the step is -lr * grads. A target is t_n = s_n + dh_n.
"""
from __future__ import annotations

import numpy as np

from .activations import Activation
from .backend import array_module, backend_name, to_backend, to_host
from .backprop import backprop
from .blocks import Block
from .feedback import drl_reconstruction
from .networks import Network, Trace
from .ops import Act, Linear
from .targets import forward_loss_grads, propagate_targets

#: Relative singular-value cutoff of the SVD pseudo-inverse (as numpy.linalg.pinv's rcond).
RCOND = 1e-12
#: Singular values below NULL_RTOL * s_max span the null space (theory.md 5.3).
NULL_RTOL = 1e-10


def _host64(a) -> np.ndarray:
    return np.asarray(to_host(a), dtype=np.float64)


def _like(a: np.ndarray, ref):
    """Host array -> the backend and dtype of ``ref``."""
    return to_backend(a, backend_name(ref), ref.dtype)


# -- linear algebra (host) -----------------------------------------------------

def damped_pinv(J, lam: float = 0.0, rcond: float = RCOND) -> np.ndarray:
    """J^T (J J^T + lam I)^{-1}, or the pseudo-inverse J^+ when lam = 0.

    From the SVD J = U diag(s) V^T this is V diag(s / (s^2 + lam)) U^T, which
    also equals (J^T J + lam I)^{-1} J^T (push-through identity) and stays
    accurate when J J^T is singular (theory.md pitfall 4). Singular values
    <= rcond * s_max are dropped, as in numpy.linalg.pinv. Damped GN targets,
    Meulemans et al. 2020 section 3; theory.md 2.1.

    Args:
        J: (..., m, n) matrices (any backend).
        lam: damping lambda >= 0.
        rcond: relative singular-value cutoff.

    Returns:
        (..., n, m) float64 host array.
    """
    if lam < 0:
        raise ValueError(f"damped_pinv: damping must be >= 0, got {lam}")
    U, s, Vt = np.linalg.svd(_host64(J), full_matrices=False)
    keep = s > rcond * s.max(axis=-1, keepdims=True, initial=0.0)
    f = np.divide(s, s * s + lam, out=np.zeros_like(s), where=keep)
    return np.swapaxes(Vt, -1, -2) @ (f[..., :, None] * np.swapaxes(U, -1, -2))


def gn_direction(J, e, lam: float = 0.0, rcond: float = RCOND) -> np.ndarray:
    """Per-sample J_b^T (J_b J_b^T + lam I)^{-1} e_b, the GN direction (theory.md 2.1).

    The GN target is dh = -beta * this; for lam = 0 it is the minimum-norm dh
    with J dh = -beta e. Args: J (B, m, n), e (B, m) or (B, *shape). Returns (B, n) host.
    """
    e = _host64(e).reshape(len(J), -1)
    return np.einsum("bnm,bm->bn", damped_pinv(J, lam, rcond), e)


def nullspace_ratio(J_theta, v, rtol: float = NULL_RTOL) -> float:
    """||V_null^T v|| / ||v||, the part of an update in the null space of J_theta.

    V_null: right singular vectors of J_theta with singular value < rtol * s_max
    (and those beyond its rank). TF20 `utils.nullspace_relative_norm`; theory.md 4.1.
    An update of the form J_theta^T y (BP, GN) gives 0.

    Args:
        J_theta: (rows, p) Jacobian of the batch output w.r.t. one block's parameters.
        v: (p,) flattened update (same parameter order as the columns).
    """
    J_theta, v = _host64(J_theta), _host64(v).ravel()
    _, s, Vt = np.linalg.svd(J_theta, full_matrices=True)
    rank = int(np.sum(s >= rtol * s.max(initial=0.0)))
    return float(np.linalg.norm(Vt[rank:] @ v) / np.linalg.norm(v))


# -- Jacobians --------------------------------------------------------------------

def _unit_rows(ref, shape: tuple, k: int):
    """(B, *shape) array with 1 at flat position k of every sample, on ref's backend."""
    xp = array_module(ref)
    u = xp.zeros((ref.shape[0], int(np.prod(shape))), dtype=ref.dtype)
    u[:, k] = 1
    return u.reshape((ref.shape[0],) + tuple(shape))


def total_jacobians(net: Network, W: dict, trace: Trace) -> list:
    """[J_0, ..., J_N] with J_n (B, d_N, d_n) = ds_N/ds_n per sample (J_N = I).

    Row k of J_n is J_n^T u_k = J_{F_{n+1}}^T ... J_{F_N}^T u_k: the unit output
    vector u_k pushed down by each block's ``forward_vjp`` (theory.md 1:
    J_i = J_{f_L} ... J_{f_{i+1}}).
    """
    N, s_N = len(net), trace.s[-1]
    rows = [[] for _ in range(N + 1)]
    for k in range(int(np.prod(s_N.shape[1:]))):
        delta = _unit_rows(s_N, s_N.shape[1:], k)
        rows[N].append(to_host(delta))
        for n in range(N, 0, -1):
            block = net.blocks[n - 1]
            delta = block.forward_vjp(W[block.name], trace.caches[n - 1], delta)
            rows[n - 1].append(to_host(delta))
    B = s_N.shape[0]
    return [np.stack([r.reshape(B, -1) for r in rows[n]], axis=1).astype(np.float64)
            for n in range(N + 1)]


def pre_jacobians(net: Network, W: dict, trace: Trace, jacobians: list | None = None) -> list:
    """[None, J_1^pre, ..., J_N^pre] with J_n^pre (B, d_N, size z_n) = ds_N/dz_n.

    z_n is the output of block n's weight op (the pre-activation a_n of
    theory.md 1, so J_n^pre = J_n D_n for Linear -> activation). Each row of J_n
    is pulled back through the ops after the weight op.
    """
    J = total_jacobians(net, W, trace) if jacobians is None else jacobians
    out = [None]
    for n, block in enumerate(net.blocks, start=1):
        k, caches, Wn = block.F.param_index, trace.caches[n - 1], W[block.name]
        B, d_N = J[n].shape[:2]
        rows = [to_host(block.F.vjp(Wn, caches, _like(J[n][:, i].reshape(trace.s[n].shape), trace.s[n]),
                                    stop=k + 1)).reshape(B, -1) for i in range(d_N)]
        out.append(np.stack(rows, axis=1).astype(np.float64))
    return out


def flatten_update(update: dict, order: dict) -> np.ndarray:
    """A block's parameter dict as one float64 host vector, keys in the order of ``order``."""
    return np.concatenate([_host64(update[k]).ravel() for k in order])


def param_jacobian(net: Network, W: dict, trace: Trace, n: int) -> np.ndarray:
    """J_theta_n (B d_N, p_n): d vec(s_N over the batch)/d vec(theta_n).

    Column j: block n's ``forward_param_jvp`` along the j-th unit parameter
    direction, pushed up by ``forward_jvp`` of blocks n+1..N. Columns follow
    :func:`flatten_update` with ``order = W[name]``.
    """
    block = net.blocks[n - 1]
    Wn, xp = W[block.name], array_module(trace.s[0])
    cols = []
    for key, arr in Wn.items():
        for j in range(arr.size):
            unit = xp.zeros(arr.size, dtype=arr.dtype)
            unit[j] = 1
            dW = {k: (unit.reshape(a.shape) if k == key else xp.zeros_like(a)) for k, a in Wn.items()}
            ds = block.forward_param_jvp(Wn, trace.caches[n - 1], dW)
            for m in range(n + 1, len(net) + 1):
                upper = net.blocks[m - 1]
                ds = upper.forward_jvp(W[upper.name], trace.caches[m - 1], ds)
            cols.append(_host64(ds).ravel())
    return np.stack(cols, axis=1)


# -- GN targets and updates -------------------------------------------------------

def gn_targets(net: Network, W: dict, trace: Trace, e, beta: float, lam: float = 0.0,
               jacobians: list | None = None) -> list:
    """[None, t_1, ..., t_N] with t_n = s_n - beta J_n^T (J_n J_n^T + lam I)^{-1} e, per sample.

    Post-activation GN targets (Meulemans et al. 2020 section 3; theory.md 2.1).
    """
    J = total_jacobians(net, W, trace) if jacobians is None else jacobians
    targets = [None]
    for n in range(1, len(net) + 1):
        dh = -beta * gn_direction(J[n], e, lam)
        targets.append(trace.s[n] + _like(dh.reshape(trace.s[n].shape), trace.s[n]))
    return targets


def gnt_post_grads(net: Network, W: dict, trace: Trace, e, beta: float, lam: float = 0.0,
                   jacobians: list | None = None) -> tuple[dict, list]:
    """The GNT-post update: per-sample GN targets through the block-local loss.

    grads_n = (dF_n/dW_n)^T (s_n - t_n^GN)/B, i.e.
    (1/B) sum_b [beta J_n^{bT}(J_n^b J_n^{bT} + lam I)^{-1} e_b] pushed through
    F_n's parameter gradient, with the batch mean, 1/2 and bias handling of
    :func:`refdtp.targets.forward_loss_grads`, so it compares directly with a
    DTP update. TF20 `DTPLayer.compute_gnt_updates`; theory.md 2.1, pitfall 3.

    Returns:
        (grads, GN targets).
    """
    targets = gn_targets(net, W, trace, e, beta, lam, jacobians)
    return forward_loss_grads(net, W, trace, targets), targets


def gnt_pre_grads(net: Network, W: dict, trace: Trace, e, beta: float, lam: float = 0.0,
                  jacobians: list | None = None) -> dict:
    """The GNT-pre update: GN targets on the weight op's output z_n (theory.md 2.1, 8.1).

    grads_n = (dz_n/dW_n)^T [beta J_n^{pre T}(J_n^pre J_n^{pre T} + lam I)^{-1} e] / B,
    the gradient of (1/B) sum_b 1/2 ||z_n - t_n^pre||^2 with the block input fixed.
    """
    P = pre_jacobians(net, W, trace, jacobians)
    B, grads = trace.s[0].shape[0], {}
    for n, block in enumerate(net.blocks, start=1):
        k, caches = block.F.param_index, trace.caches[n - 1]
        z_shape = block.F.ops[k].out_shape
        signal = _like((beta / B) * gn_direction(P[n], e, lam).reshape((B,) + tuple(z_shape)), trace.s[n])
        grads[block.name] = block.F.ops[k].param_grads(W[block.name], caches[k], signal)
    return grads


def block_gn_grads(net: Network, W: dict, trace: Trace, e, lam: float = 0.0) -> dict:
    """Block-diagonal batch GN: d_n = J_theta_n^T (J_theta_n J_theta_n^T + lam I)^{-1} vec(e).

    The GN step is Delta theta_n = -d_n (minimum-norm -J_theta^+ e for lam = 0);
    J_theta_n stacks the B samples' rows (TF20 `compute_damped_gn_update`, the
    "GN angle"; theory.md 2.2). Returned as gradient-like dicts.
    """
    B, grads = trace.s[0].shape[0], {}
    e_vec = _host64(e).reshape(B, -1).ravel()
    for n, block in enumerate(net.blocks, start=1):
        d = damped_pinv(param_jacobian(net, W, trace, n), lam) @ e_vec
        Wn, out, at = W[block.name], {}, 0
        for key, arr in Wn.items():
            out[key] = _like(d[at:at + arr.size].reshape(arr.shape), arr)
            at += arr.size
        grads[block.name] = out
    return grads


def nullspace_ratios(net: Network, W: dict, trace: Trace, grads: dict) -> dict:
    """{block name: nullspace_ratio(J_theta_n, grads_n)} over the batch of ``trace``."""
    return {b.name: nullspace_ratio(param_jacobian(net, W, trace, n),
                                    flatten_update(grads[b.name], W[b.name]))
            for n, b in enumerate(net.blocks, start=1)}


def dtp_grads_for_error(net: Network, W: dict, omega: dict, trace: Trace, e,
                        beta: float) -> tuple[dict, list]:
    """DTP update for an arbitrary output error: t_N = s_N - beta e, difference targets
    (:func:`refdtp.targets.propagate_targets`), block-local loss gradients. Returns (grads, targets)."""
    targets = propagate_targets(net, omega, trace, trace.s[-1] - beta * e.reshape(trace.s[-1].shape))
    return forward_loss_grads(net, W, trace, targets), targets


def bp_grads_for_error(net: Network, W: dict, trace: Trace, e) -> dict:
    """BP gradient of (1/B) sum_b l_b for the per-sample output error e (the DTP scale over beta)."""
    return backprop(net, W, trace, e.reshape(trace.s[-1].shape) / trace.s[0].shape[0])[0]


# -- test networks and oracle feedback -------------------------------------------

def _mlp(widths, activation, output_activation, feedback_ops, name: str) -> Network:
    """Blocks Linear -> [activation] (none for None/"identity"), G_n = feedback_ops(F_n's ops)."""
    blocks = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        act = activation if i < len(widths) - 2 else output_activation
        forward = [Linear(n_in, n_out)] + ([] if act in (None, "identity") else [Act((n_out,), act)])
        blocks.append(Block(f"fc_{i}", forward, feedback_ops(forward)))
    return Network(blocks, name)


def linear_feedback_mlp(widths, activation: str | None = "tanh",
                        output_activation: str | None = None) -> Network:
    """MLP whose feedback maps are single Linear ops, G_n(y) = V_n y + c_n.

    Layer-wise linear feedback (theory.md 5.3 O-GN, 5.4 DTP-DRL): J_{G_n} = V_n
    for every sample, so the composite feedback Jacobian is V_{n+1} ... V_N.
    Activation None or "identity" gives a linear block (theory.md M2).
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
    G_n = F_n^{-1} exactly (theory.md M3, O-exact-inverse). Widths must be equal."""
    def feedback(f):
        inverse = [Act(f[1].out_shape, inverse_activation(f[1].act))] if len(f) > 1 else []
        return inverse + [Linear(f[0].n_out, f[0].n_in)]
    return _mlp(widths, activation, output_activation, feedback, "exact_inverse_mlp")


def _feedback_from(net: Network, W: dict, weight_fn) -> dict:
    """omega with weight V_n = weight_fn(W_n) and bias -V_n b_n, so G_n(F_n(x)) removes F_n's bias."""
    omega = {}
    for block in net.blocks:
        Wn = W[block.name]
        V = weight_fn(_host64(Wn["weight"]))
        om = {"weight": _like(V, Wn["weight"])}
        if "bias" in Wn:
            om["bias"] = _like(-V @ _host64(Wn["bias"]), Wn["bias"])
        omega[block.name] = om
    return omega


def exact_inverse_feedback(net: Network, W: dict) -> dict:
    """omega making G_n(y) = W_n^{-1}(s^{-1}(y) - b_n) = F_n^{-1}(y) (square, invertible W_n).

    Target propagation with exact inverses gives GN targets to O(beta)
    (Meulemans et al. 2020 section 3, recalled; theory.md 2.1, 5.3).
    """
    return _feedback_from(net, W, np.linalg.inv)


def layerwise_pinv_feedback(net: Network, W: dict, rcond: float = RCOND) -> dict:
    """omega with V_n = W_n^+: each layer's local pseudo-inverse (plain DTP's small-sigma
    reconstruction optimum of a linear layer, theory.md 2.3); not GN in general."""
    return _feedback_from(net, W, lambda M: damped_pinv(M, 0.0, rcond))


def transpose_feedback(net: Network, W: dict) -> dict:
    """omega with V_n = W_n^T: the Jacobian-matching (BP) feedback of a linear net (theory.md 3.2)."""
    return _feedback_from(net, W, lambda M: M.T.copy())


def feedback_composite(net: Network, omega: dict, trace: Trace, n: int) -> np.ndarray:
    """J_gbar for s_n: J_{G_{n+1}}(s_{n+1}) ... J_{G_N}(s_N), shape (B, d_n, d_N), host.

    The Jacobian of the difference-corrected feedback path from the output down
    to s_n, every G_m linearised at the forward pass with its clean route
    (theory.md 1 linearisation identity: t_n - s_n = -beta J_gbar e + O(beta^2)).
    """
    N, s_N = len(net), trace.s[-1]
    caches = {}
    for m in range(n + 1, N + 1):
        block = net.blocks[m - 1]
        caches[m] = block.feedback(omega[block.name], trace.s[m], block.route(trace.caches[m - 1]))[1]
    cols = []
    for k in range(int(np.prod(s_N.shape[1:]))):
        d = _unit_rows(s_N, s_N.shape[1:], k)
        for m in range(N, n, -1):
            d = net.blocks[m - 1].feedback_jvp(omega[net.blocks[m - 1].name], caches[m], d)
        cols.append(_host64(d).reshape(s_N.shape[0], -1))
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
    V_n = A_n^T (A_n A_n^T + lam I)^{-1} (theory.md 2.3 condition 5, 8.3;
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
        omega[block.name] = {k: (_like(V, a) if k == "weight" else 0 * a) for k, a in ref.items()}
        C = V @ C
    return omega


def antithetic_noise(shape: tuple, sigma: float) -> np.ndarray:
    """The 2d noise vectors +-sigma sqrt(d) e_k (d = prod(shape)), (2d, *shape) host.

    Their mean outer product is exactly sigma^2 I, the Gaussian's; odd moments
    vanish (theory.md 5.4 "noise design"), so only the O(sigma^2) bias remains.
    """
    d = int(np.prod(shape))
    unit = np.sqrt(d) * sigma * np.eye(d)
    return np.concatenate([unit, -unit]).reshape((2 * d,) + tuple(shape))


def antithetic_batch(x, shape: tuple, sigma: float):
    """(x repeated 2d times per sample, the antithetic noise tiled to match), on x's backend."""
    noise = antithetic_noise(shape, sigma)
    xp = array_module(x)
    eps = np.tile(noise, (x.shape[0],) + (1,) * len(shape))
    return xp.repeat(x, len(noise), axis=0), _like(eps, x)


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
    U = _host64(du).reshape(B, -1)
    Vt = damped_pinv(U, wd * B * sigma ** 2 / 2, rcond) @ _host64(eps).reshape(B, -1)
    ref = omega[block.name]
    return {k: (_like(Vt.T, a) if k == "weight" else 0 * a) for k, a in ref.items()}


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
