"""Gauss-Newton references for small networks of refdtp blocks (float64, no autograd).

Meulemans et al. 2020, "A theoretical framework for target propagation"
(arXiv 2006.14331); docs/theory.md §5, §6. Everything here
is an *oracle* for the verification suite: exact per-sample Jacobians built
from the blocks' hand-written jvp/vjp with identity columns, the Gauss-Newton
(GN) targets and updates computed from them by dense linear algebra, and
constructed feedback weights (exact inverses, layer-wise pseudo-inverses, the
DRL minimiser) live in :mod:`refdtp.theory.oracles`.

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

from ..backend import array_module, backend_name, to_backend, to_host
from ..backprop import backprop
from ..networks import Network, Trace
from ..numerical import host64
from ..targets import forward_loss_grads, propagate_targets
from .jacobians import unit_batch

#: Relative singular-value cutoff of the SVD pseudo-inverse (as numpy.linalg.pinv's rcond).
RCOND = 1e-12
#: Singular values below NULL_RTOL * s_max span the null space (docs/theory.md §5.4).
NULL_RTOL = 1e-10


def like(a: np.ndarray, ref):
    """Host array -> the backend and dtype of ``ref``."""
    return to_backend(a, backend_name(ref), ref.dtype)


# -- linear algebra (host) -----------------------------------------------------

def damped_pinv(J, lam: float = 0.0, rcond: float = RCOND) -> np.ndarray:
    """J^T (J J^T + lam I)^{-1}, or the pseudo-inverse J^+ when lam = 0.

    From the SVD J = U diag(s) V^T this is V diag(s / (s^2 + lam)) U^T, which
    also equals (J^T J + lam I)^{-1} J^T (push-through identity) and stays
    accurate when J J^T is singular (docs/theory.md §5.1). Singular values
    <= rcond * s_max are dropped, as in numpy.linalg.pinv. Damped GN targets,
    Meulemans et al. 2020 section 3, unconfirmed numbering; docs/theory.md §5.1.

    Args:
        J: (..., m, n) matrices (any backend).
        lam: damping lambda >= 0.
        rcond: relative singular-value cutoff.

    Returns:
        (..., n, m) float64 host array.
    """
    if lam < 0:
        raise ValueError(f"damped_pinv: damping must be >= 0, got {lam}")
    U, s, Vt = np.linalg.svd(host64(J), full_matrices=False)
    keep = s > rcond * s.max(axis=-1, keepdims=True, initial=0.0)
    f = np.divide(s, s * s + lam, out=np.zeros_like(s), where=keep)
    return np.swapaxes(Vt, -1, -2) @ (f[..., :, None] * np.swapaxes(U, -1, -2))


def gn_direction(J, e, lam: float = 0.0, rcond: float = RCOND) -> np.ndarray:
    """Per-sample J_b^T (J_b J_b^T + lam I)^{-1} e_b, the GN direction (docs/theory.md §5.1).

    The GN target is dh = -beta * this; for lam = 0 it is the minimum-norm dh
    with J dh = -beta e. Args: J (B, m, n), e (B, m) or (B, *shape). Returns (B, n) host.
    """
    e = host64(e).reshape(len(J), -1)
    return np.einsum("bnm,bm->bn", damped_pinv(J, lam, rcond), e)


def nullspace_ratio(J_theta, v, rtol: float = NULL_RTOL) -> float:
    """||V_null^T v|| / ||v||, the part of an update in the null space of J_theta.

    V_null: right singular vectors of J_theta with singular value < rtol * s_max
    (and those beyond its rank). TF20 `utils.nullspace_relative_norm`; docs/theory.md §5.4.
    An update of the form J_theta^T y (BP, GN) gives 0.

    Args:
        J_theta: (rows, p) Jacobian of the batch output w.r.t. one block's parameters.
        v: (p,) flattened update (same parameter order as the columns).
    """
    J_theta, v = host64(J_theta), host64(v).ravel()
    _, s, Vt = np.linalg.svd(J_theta, full_matrices=True)
    rank = int(np.sum(s >= rtol * s.max(initial=0.0)))
    return float(np.linalg.norm(Vt[rank:] @ v) / np.linalg.norm(v))


# -- Jacobians --------------------------------------------------------------------

def total_jacobians(net: Network, W: dict, trace: Trace) -> list:
    """[J_0, ..., J_N] with J_n (B, d_N, d_n) = ds_N/ds_n per sample (J_N = I).

    Row k of J_n is J_n^T u_k = J_{F_{n+1}}^T ... J_{F_N}^T u_k: the unit output
    vector u_k pushed down by each block's ``forward_vjp`` (docs/theory.md §1.1:
    J_i = J_{f_L} ... J_{f_{i+1}}).
    """
    N, s_N = len(net), trace.s[-1]
    rows = [[] for _ in range(N + 1)]
    for k in range(int(np.prod(s_N.shape[1:]))):
        delta = unit_batch(array_module(s_N), s_N.shape[0], s_N.shape[1:], k, s_N.dtype)
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
    docs/theory.md §1.1, so J_n^pre = J_n D_n for Linear -> activation). Each row of J_n
    is pulled back through the ops after the weight op.
    """
    J = total_jacobians(net, W, trace) if jacobians is None else jacobians
    out = [None]
    for n, block in enumerate(net.blocks, start=1):
        k, caches, Wn = block.F.param_index, trace.caches[n - 1], W[block.name]
        B, d_N = J[n].shape[:2]
        rows = [to_host(block.F.vjp(Wn, caches, like(J[n][:, i].reshape(trace.s[n].shape), trace.s[n]),
                                    stop=k + 1)).reshape(B, -1) for i in range(d_N)]
        out.append(np.stack(rows, axis=1).astype(np.float64))
    return out


def flatten_update(update: dict, order: dict) -> np.ndarray:
    """A block's parameter dict as one float64 host vector, keys in the order of ``order``."""
    return np.concatenate([host64(update[k]).ravel() for k in order])


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
            cols.append(host64(ds).ravel())
    return np.stack(cols, axis=1)


# -- GN targets and updates -------------------------------------------------------

def gn_targets(net: Network, W: dict, trace: Trace, e, beta: float, lam: float = 0.0,
               jacobians: list | None = None) -> list:
    """[None, t_1, ..., t_N] with t_n = s_n - beta J_n^T (J_n J_n^T + lam I)^{-1} e, per sample.

    Post-activation GN targets (Meulemans et al. 2020 section 3; docs/theory.md §5.1).
    """
    J = total_jacobians(net, W, trace) if jacobians is None else jacobians
    targets = [None]
    for n in range(1, len(net) + 1):
        dh = -beta * gn_direction(J[n], e, lam)
        targets.append(trace.s[n] + like(dh.reshape(trace.s[n].shape), trace.s[n]))
    return targets


def gnt_post_grads(net: Network, W: dict, trace: Trace, e, beta: float, lam: float = 0.0,
                   jacobians: list | None = None) -> tuple[dict, list]:
    """The GNT-post update: per-sample GN targets through the block-local loss.

    grads_n = (dF_n/dW_n)^T (s_n - t_n^GN)/B, i.e.
    (1/B) sum_b [beta J_n^{bT}(J_n^b J_n^{bT} + lam I)^{-1} e_b] pushed through
    F_n's parameter gradient, with the batch mean, 1/2 and bias handling of
    :func:`refdtp.targets.forward_loss_grads`, so it compares directly with a
    DTP update. TF20 `DTPLayer.compute_gnt_updates`; docs/theory.md §5.2.

    Returns:
        (grads, GN targets).
    """
    targets = gn_targets(net, W, trace, e, beta, lam, jacobians)
    return forward_loss_grads(net, W, trace, targets), targets


def gnt_pre_grads(net: Network, W: dict, trace: Trace, e, beta: float, lam: float = 0.0,
                  jacobians: list | None = None) -> dict:
    """The GNT-pre update: GN targets on the weight op's output z_n (docs/theory.md §5.2).

    grads_n = (dz_n/dW_n)^T [beta J_n^{pre T}(J_n^pre J_n^{pre T} + lam I)^{-1} e] / B,
    the gradient of (1/B) sum_b 1/2 ||z_n - t_n^pre||^2 with the block input fixed.
    """
    P = pre_jacobians(net, W, trace, jacobians)
    B, grads = trace.s[0].shape[0], {}
    for n, block in enumerate(net.blocks, start=1):
        k, caches = block.F.param_index, trace.caches[n - 1]
        z_shape = block.F.ops[k].out_shape
        signal = like((beta / B) * gn_direction(P[n], e, lam).reshape((B,) + tuple(z_shape)), trace.s[n])
        grads[block.name] = block.F.ops[k].param_grads(W[block.name], caches[k], signal)
    return grads


def block_gn_grads(net: Network, W: dict, trace: Trace, e, lam: float = 0.0) -> dict:
    """Block-diagonal batch GN: d_n = J_theta_n^T (J_theta_n J_theta_n^T + lam I)^{-1} vec(e).

    The GN step is Delta theta_n = -d_n (minimum-norm -J_theta^+ e for lam = 0);
    J_theta_n stacks the B samples' rows (TF20 `compute_damped_gn_update`, the
    "GN angle"; docs/theory.md §5.2). Returned as gradient-like dicts.
    """
    B, grads = trace.s[0].shape[0], {}
    e_vec = host64(e).reshape(B, -1).ravel()
    for n, block in enumerate(net.blocks, start=1):
        d = damped_pinv(param_jacobian(net, W, trace, n), lam) @ e_vec
        Wn, out, at = W[block.name], {}, 0
        for key, arr in Wn.items():
            out[key] = like(d[at:at + arr.size].reshape(arr.shape), arr)
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
