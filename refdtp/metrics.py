"""Alignment metrics: angles and distances between updates, Jacobians and weights.

- :func:`angle`, :func:`relative_distance`: tensor-vs-tensor (or dict-vs-dict).
  Angles use 2*asin(||a^ - b^||/2) (theory.md pitfall 1): arccos of a cosine
  near 1 cannot resolve angles below ~1e-6 degrees in float64 (~0.02 degrees in
  float32), which the gradient-matching claims need.
- :func:`dtp_vs_bp`: per block, (1/beta) * the DTP forward update against the
  mean cross-entropy gradient (Theorem 4.3, scalingDTP
  `callbacks.py:comparison_with_backprop_gradients`).
- :func:`jmc_error`: the Jacobian-matching error ||J_G - J_F^T||_F / ||J_F||_F of
  a block (Theorem 4.2), exact from identity columns for small blocks, or a
  matrix-free Hutchinson estimate from Gaussian probes for CIFAR-size blocks.
- :func:`weight_alignment`: forward vs feedback weights (W vs V^T for linear
  layers, W vs the ConvTranspose kernel for convs; scalingDTP `metrics.py`).
- :func:`alignment_report`: all of the above on one batch (what a training
  loop logs once per epoch).

Inputs may be NumPy or CuPy arrays of any float dtype; every result is a
Python float computed in float64 on the host.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import Noise, array_module, backend_name, to_host
from .backprop import backprop
from .blocks import Block
from .losses import cross_entropy_grad
from .networks import Network
from .ops import Linear
from .targets import dtp_forward_grads

#: Stream key of the JMC probe noise: Noise(seed, PROBE_KEY, block index).
PROBE_KEY = 11
#: jmc_error(method="auto") is exact when min(n_in, n_out) per sample is at most this.
EXACT_MAX_PASSES = 64


def _flat64(a) -> np.ndarray:
    return np.asarray(to_host(a), dtype=np.float64).ravel()


def _concat(tree) -> np.ndarray:
    """A dict of arrays (or one array) as one float64 host vector, keys in sorted order."""
    if isinstance(tree, dict):
        return np.concatenate([_concat(tree[k]) for k in sorted(tree)]) if tree else np.zeros(0)
    return _flat64(tree)


def angle(a, b, degrees: bool = True) -> float:
    """Angle between two tensors (or dicts of tensors) flattened to vectors.

    theta = 2 asin(||a/|a| - b/|b|| / 2), accurate for tiny angles. Returns
    nan if either vector is zero.
    """
    u, v = _concat(a), _concat(b)
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0 or nv == 0:
        return float("nan")
    theta = 2.0 * math.asin(min(1.0, np.linalg.norm(u / nu - v / nv) / 2.0))
    return math.degrees(theta) if degrees else theta


def relative_distance(a, b) -> float:
    """||a - b|| / ||b||: the distance of ``a`` from the reference ``b``."""
    u, v = _concat(a), _concat(b)
    nv = np.linalg.norm(v)
    return float(np.linalg.norm(u - v) / nv) if nv else float("nan")


def distance_angle(a, b) -> dict:
    """{"angle": degrees between a and b, "distance": ||a - b|| / ||b||}."""
    return {"angle": angle(a, b), "distance": relative_distance(a, b)}


# -- DTP vs BP (Theorem 4.3, gradient matching) ---------------------------------

def update_comparison(net: Network, W: dict, omega: dict, x, labels, beta: float = 0.005,
                      rule: str = "difference", trace=None) -> tuple[dict, dict]:
    """The two updates that :func:`dtp_vs_bp` compares, per block.

    Returns:
        (scaled_dtp, bp): scaled_dtp[name] = (1/beta) dL_F/dW_n (the DTP forward
        gradient with first target s_N - beta * d(sum CE)/ds_N, algorithm.md 3.3);
        bp[name] = d(mean CE)/dW_n. Arrays stay on the input's backend.
    """
    trace = net.forward(W, x) if trace is None else trace
    logits = trace.logits.reshape(x.shape[0], -1)
    bp, _ = backprop(net, W, trace, cross_entropy_grad(logits, labels, "mean"))
    dtp, _ = dtp_forward_grads(net, W, omega, trace, labels, beta, rule)
    scaled = {name: {k: g / beta for k, g in grads.items()} for name, grads in dtp.items()}
    return scaled, bp


def dtp_vs_bp(net: Network, W: dict, omega: dict, x, labels, beta: float = 0.005,
              per_param: bool = False, rule: str = "difference", trace=None) -> dict:
    """Angle and distance of (1/beta) Delta W_DTP from the mean-CE gradient, per block.

    Compared on each block's concatenated weight and bias. The distance is
    ||(1/beta) dW_DTP - dW_BP|| / ||dW_BP|| (relative to BP, theory.md 5.3;
    scalingDTP divides by the DTP norm instead). At the last block the two
    agree to round-off for any feedback (algorithm.md 5.6 #5).

    Args:
        net, W, omega: network, forward and feedback parameters.
        x: (B, *in_shape) batch; labels: (B,) int classes.
        beta: the nudge of the first target (scalingDTP's diagnostic uses 0.005).
        per_param: also report each parameter separately under "params".
        rule: "difference" (DTP) or "tp".
        trace: a forward pass of x with W, if already computed.

    Returns:
        {block: {"angle": deg, "distance": rel[, "params": {param: {"angle", "distance"}}]}}.
    """
    scaled, bp = update_comparison(net, W, omega, x, labels, beta, rule, trace)
    out = {}
    for name in net.names:
        row = distance_angle(scaled[name], bp[name])
        if per_param:
            row["params"] = {k: distance_angle(scaled[name][k], bp[name][k]) for k in bp[name]}
        out[name] = row
    return out


# -- Jacobian matching (Theorem 4.2) ------------------------------------------

def _points(block: Block, W: dict, omega: dict, x):
    """Forward cache at x and feedback cache at y = F(x) with the clean route."""
    y, fcache = block.forward(W, x)
    _, gcache = block.feedback(omega, y, block.route(fcache))
    return fcache, gcache


def _unit_batch(xp, B: int, shape: tuple, index: int, dtype):
    """(B, *shape) array whose every sample is the unit vector e_index."""
    e = xp.zeros((B, math.prod(shape)), dtype=dtype)
    e[:, index] = 1
    return e.reshape((B,) + tuple(shape))


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
            e = _unit_batch(xp, B, block.out_shape, j, x.dtype)
            jft = block.forward_vjp(W, fc, e).reshape(B, -1)
            yield block.feedback_jvp(omega, gc, e).reshape(B, -1) - jft, jft
    else:
        for i in range(n_in):
            e = _unit_batch(xp, B, block.in_shape, i, x.dtype)
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
        JF[:, :, i] = block.forward_jvp(W, fc, _unit_batch(xp, B, block.in_shape, i, x.dtype)).reshape(B, -1)
    for j in range(n_out):
        e = _unit_batch(xp, B, block.out_shape, j, x.dtype)
        JG[:, :, j] = block.feedback_jvp(omega, gc, e).reshape(B, -1)
    return JF, JG


def jmc_error_exact(block: Block, W: dict, omega: dict, x) -> float:
    """sqrt(sum_b ||J_G^b - J_F^bT||_F^2 / sum_b ||J_F^b||_F^2), exact.

    min(n_in, n_out) passes of one forward vjp/jvp and one feedback jvp/vjp
    over the batch. Exactly 0 when G matches the transpose (e.g. phi feedback
    with V = W^T, theory.md 3.2).
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


# -- forward vs feedback weights --------------------------------------------

def feedback_weight_as_forward(block: Block, omega: dict):
    """The feedback weight in the forward weight's layout: V^T (linear) or the ConvT kernel."""
    return omega["weight"].T if isinstance(block.G.param_op, Linear) else omega["weight"]


def weight_alignment(net: Network, W: dict, omega: dict, blocks=None) -> dict:
    """{block: {"angle", "distance"}} between W_n and the feedback weight (in W's layout).

    The distance is ||G - F|| / ||F|| relative to the forward weight F, as in
    scalingDTP `metrics.py:compute_dist_angle`. Default blocks: 2..N (the
    trained feedback; G_1 is never trained or used).
    """
    out = {}
    for b in (net.blocks[1:] if blocks is None else blocks):
        fb = feedback_weight_as_forward(b, omega[b.name])
        fw = W[b.name]["weight"]
        if tuple(fb.shape) != tuple(fw.shape):
            out[b.name] = {"angle": float("nan"), "distance": float("nan")}
            continue
        out[b.name] = distance_angle(fb, fw)
    return out


# -- everything on one batch ----------------------------------------------

def alignment_report(net: Network, W: dict, omega: dict, x, labels, beta: float = 0.005,
                     n_probes: int = 4, seed: int = 0, per_param: bool = False) -> dict:
    """DTP-vs-BP, JMC errors and weight angles of a network on one batch.

    Cost: one forward pass, one BP pass, one target propagation, and per
    feedback block either min(n_in, n_out) exact passes (small blocks, e.g.
    the linear output block) or ``n_probes`` probe passes.

    Args:
        net, W, omega: network and parameters (NumPy or CuPy, any float dtype).
        x, labels: a fixed batch (B, *in_shape) and its (B,) labels.
        beta: nudge of the diagnostic (scalingDTP: 0.005).
        n_probes: Hutchinson probes per large block.
        seed: probe stream seed (probes of block n: Noise(seed, PROBE_KEY, n)).
        per_param: split the DTP-vs-BP numbers by parameter too.

    Returns:
        {"dtp_vs_bp": {block: {"angle", "distance"}},
         "total": {"angle", "distance"} over all blocks' concatenated parameters,
         "jmc": {block: {"error", "stderr", "method"}} for blocks 2..N,
         "weights": {block: {"angle", "distance"}} for blocks 2..N}.
    """
    trace = net.forward(W, x)
    scaled, bp = update_comparison(net, W, omega, x, labels, beta, trace=trace)
    rows = {}
    for name in net.names:
        rows[name] = distance_angle(scaled[name], bp[name])
        if per_param:
            rows[name]["params"] = {k: distance_angle(scaled[name][k], bp[name][k]) for k in bp[name]}
    flat = lambda t: {f"{b}.{k}": a for b, d in t.items() for k, a in d.items()}  # noqa: E731
    jmc = {}
    for n, b in enumerate(net.blocks[1:], start=2):
        jmc[b.name] = jmc_error(b, W[b.name], omega[b.name], trace.s[n - 1], "auto", n_probes, seed, n)
    return {"dtp_vs_bp": rows, "total": distance_angle(flat(scaled), flat(bp)), "jmc": jmc,
            "weights": weight_alignment(net, W, omega)}
