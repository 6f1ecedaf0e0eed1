"""Per-sample Jacobians of a block and the Jacobian matching condition (Ernoult et al. 2022, Sec. 4.1).

The JMC asks J_G = J_F^T at the batch (docs/theory.md §2). Everything here is
matrix-free or built from the blocks' hand-written jvp/vjp applied to identity
columns: exact to round-off, no finite differences.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import Noise, array_module, backend_name
from ..blocks import Block

PROBE_KEY = 11
#: jmc_error(method="auto") is exact when min(n_in, n_out) per sample is at most this.
EXACT_MAX_PASSES = 64


def unit_batch(xp, B: int, shape: tuple, index: int, dtype):
    """(B, *shape) array whose every sample is the unit vector e_index (flat position ``index``)."""
    e = xp.zeros((B, math.prod(shape)), dtype=dtype)
    e[:, index] = 1
    return e.reshape((B,) + tuple(shape))


def _points(block: Block, W: dict, omega: dict, x):
    """Forward cache at x and feedback cache at y = F(x) with the clean route."""
    y, fcache = block.forward(W, x)
    _, gcache = block.feedback(omega, y, block.route(fcache))
    return fcache, gcache


def _exact_passes(block: Block, W: dict, omega: dict, x):
    """Yield (column of J_G - J_F^T, matching slice of J_F^T) per sample, (B, n).

    Loops over identity columns of the smaller side: n_out passes of
    (J_F^T e_j, J_G e_j) or n_in passes of (J_F e_i, J_G^T e_i) (rows of the
    difference's transpose; the Frobenius norms are the same).
    """
    xp, B = array_module(x), x.shape[0]
    fc, gc = _points(block, W, omega, x)
    n_in, n_out = math.prod(block.in_shape), math.prod(block.out_shape)
    if n_out <= n_in:
        for j in range(n_out):
            e = unit_batch(xp, B, block.out_shape, j, x.dtype)
            jft = block.forward_vjp(W, fc, e).reshape(B, -1)
            yield block.feedback_jvp(omega, gc, e).reshape(B, -1) - jft, jft
    else:
        for i in range(n_in):
            e = unit_batch(xp, B, block.in_shape, i, x.dtype)
            jf = block.forward_jvp(W, fc, e).reshape(B, -1)
            yield block.feedback_vjp(omega, gc, e).reshape(B, -1) - jf, jf


def block_jacobians(block: Block, W: dict, omega: dict, x) -> tuple:
    """Per-sample Jacobians of a block, from its jvp/vjp applied to identity columns.

    Args:
        x: (B, *in_shape) block input; G is evaluated at y = F(x) with the clean route.

    Returns:
        (J_F, J_G) on x's backend: J_F (B, n_out, n_in) = dF/dx,
        J_G (B, n_in, n_out) = dG/dy. Exact to round-off; costs n_in + n_out passes.
    """
    xp, B = array_module(x), x.shape[0]
    fc, gc = _points(block, W, omega, x)
    n_in, n_out = math.prod(block.in_shape), math.prod(block.out_shape)
    JF = xp.empty((B, n_out, n_in), dtype=x.dtype)
    JG = xp.empty((B, n_in, n_out), dtype=x.dtype)
    for i in range(n_in):
        JF[:, :, i] = block.forward_jvp(W, fc, unit_batch(xp, B, block.in_shape, i, x.dtype)).reshape(B, -1)
    for j in range(n_out):
        e = unit_batch(xp, B, block.out_shape, j, x.dtype)
        JG[:, :, j] = block.feedback_jvp(omega, gc, e).reshape(B, -1)
    return JF, JG


def jmc_error_exact(block: Block, W: dict, omega: dict, x) -> float:
    """sqrt(sum_b ||J_G^b - J_F^bT||_F^2 / sum_b ||J_F^b||_F^2), exact.

    min(n_in, n_out) passes of one forward vjp/jvp and one feedback jvp/vjp
    over the batch. Exactly 0 when G matches the transpose (e.g. phi feedback
    with V = W^T, docs/theory.md §3.4).
    """
    num = den = 0.0
    for diff, jf in _exact_passes(block, W, omega, x):
        num += float((diff * diff).sum())
        den += float((jf * jf).sum())
    return math.sqrt(num / den) if den else float("nan")


def jmc_error_probes(block: Block, W: dict, omega: dict, x, n_probes: int = 4, seed: int = 0,
                     key: int = 0) -> tuple[float, float]:
    """Hutchinson estimate of the JMC error and its standard error.

    For Gaussian probes v ~ N(0, I) in y-space, E||(J_G - J_F^T) v||^2 =
    ||J_G - J_F^T||_F^2 and E||J_F^T v||^2 = ||J_F||_F^2, summed over samples;
    both sides are matrix-free (one forward_vjp and one feedback_jvp per probe).
    The estimate is sqrt(mean a_k / mean c_k) over the probes k; its standard
    error comes from the delta method on the ratio of means (nan for 1 probe).

    Args:
        n_probes: number of probes (each a pass over the whole batch).
        seed, key: probes come from Noise(seed, PROBE_KEY, key) on x's backend.

    Returns:
        (estimate, standard error).
    """
    fc, gc = _points(block, W, omega, x)
    noise = Noise(seed, PROBE_KEY, key, backend=backend_name(x))
    a, c = np.empty(n_probes), np.empty(n_probes)
    for k in range(n_probes):
        v = noise.normal((x.shape[0],) + tuple(block.out_shape), 1.0, x.dtype)
        jft = block.forward_vjp(W, fc, v)
        diff = block.feedback_jvp(omega, gc, v) - jft
        a[k], c[k] = float((diff * diff).sum()), float((jft * jft).sum())
    ma, mc = a.mean(), c.mean()
    if mc == 0:
        return float("nan"), float("nan")
    est = math.sqrt(ma / mc)
    if n_probes < 2 or est == 0:
        return est, (0.0 if est == 0 else float("nan"))
    cov = np.cov(np.stack([a, c]), ddof=1) / n_probes
    r = ma / mc
    var_r = cov[0, 0] / mc ** 2 - 2 * r * cov[0, 1] / mc ** 2 + r * r * cov[1, 1] / mc ** 2
    return est, math.sqrt(max(var_r, 0.0)) / (2 * est)


def jmc_error(block: Block, W: dict, omega: dict, x, method: str = "auto", n_probes: int = 4,
              seed: int = 0, key: int = 0) -> dict:
    """The Jacobian-matching error of one block, exact or estimated.

    Args:
        method: "exact", "probes", or "auto" (exact when min(n_in, n_out) is at
            most EXACT_MAX_PASSES, e.g. every linear output block).
        n_probes, seed, key: see :func:`jmc_error_probes`.

    Returns:
        {"error": ||J_G - J_F^T|| / ||J_F||, "stderr": 0 for exact,
         "method": "exact" | "probes"}.
    """
    if method not in ("auto", "exact", "probes"):
        raise ValueError(f"jmc_error: method must be 'auto', 'exact' or 'probes', got {method!r}")
    if method == "auto":
        small = min(math.prod(block.in_shape), math.prod(block.out_shape)) <= EXACT_MAX_PASSES
        method = "exact" if small else "probes"
    if method == "exact":
        return {"error": jmc_error_exact(block, W, omega, x), "stderr": 0.0, "method": "exact"}
    est, se = jmc_error_probes(block, W, omega, x, n_probes, seed, key)
    return {"error": est, "stderr": se, "method": "probes"}
