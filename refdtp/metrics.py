"""Alignment metrics: angles and distances between updates, Jacobians and weights.

- :func:`angle`, :func:`relative_distance`: tensor-vs-tensor (or dict-vs-dict).
  Angles use 2*asin(||a^ - b^||/2) (docs/theory.md §10.1): arccos of a cosine
  near 1 cannot resolve angles below ~1e-6 degrees in float64 (~0.02 degrees in
  float32), which the gradient-matching claims need.
- :func:`dtp_vs_bp`: per block, (1/beta) * the DTP forward update against the
  mean cross-entropy gradient (Theorem 4.3, scalingDTP
  `callbacks.py:comparison_with_backprop_gradients`).
- :func:`jmc_error`: the Jacobian-matching error ||J_G - J_F^T||_F / ||J_F||_F of
  a block (Theorem 4.2), exact from identity columns for small blocks, or a
  matrix-free Hutchinson estimate from Gaussian probes for CIFAR-size blocks;
  defined in :mod:`refdtp.theory.jacobians` and re-exported here.
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

from .backprop import backprop
from .blocks import Block
from .losses import cross_entropy_grad
from .networks import Network
from .numerical import host64
from .ops import Linear
from .targets import dtp_forward_grads
from .theory.jacobians import PROBE_KEY, block_jacobians, jmc_error, jmc_error_exact, jmc_error_probes

__all__ = ["PROBE_KEY", "alignment_report", "angle", "block_jacobians", "distance_angle", "dtp_vs_bp",
           "feedback_weight_as_forward", "jmc_error", "jmc_error_exact", "jmc_error_probes",
           "relative_distance", "update_comparison", "weight_alignment"]


def _flat64(a) -> np.ndarray:
    return host64(a).ravel()


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
        gradient with first target s_N - beta * d(sum CE)/ds_N, docs/algorithm.md §3.3);
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
    ||(1/beta) dW_DTP - dW_BP|| / ||dW_BP|| (relative to BP, docs/theory.md §4.1;
    scalingDTP divides by the DTP norm instead). At the last block the two
    agree to round-off for any feedback (docs/theory.md §4.2).

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
    return _comparison_rows(net, scaled, bp, per_param)


def _comparison_rows(net: Network, scaled: dict, bp: dict, per_param: bool) -> dict:
    """{block: {"angle", "distance"[, "params"]}} of (1/beta) dW_DTP against dW_BP."""
    out = {}
    for name in net.names:
        out[name] = distance_angle(scaled[name], bp[name])
        if per_param:
            out[name]["params"] = {k: distance_angle(scaled[name][k], bp[name][k]) for k in bp[name]}
    return out


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
    rows = _comparison_rows(net, scaled, bp, per_param)

    def flat(tree):
        """{block: {name: array}} as one flat {"block.name": array} dict."""
        return {f"{b}.{k}": a for b, d in tree.items() for k, a in d.items()}

    jmc = {}
    for n, b in enumerate(net.blocks[1:], start=2):
        jmc[b.name] = jmc_error(b, W[b.name], omega[b.name], trace.s[n - 1], "auto", n_probes, seed, n)
    return {"dtp_vs_bp": rows, "total": distance_angle(flat(scaled), flat(bp)), "jmc": jmc,
            "weights": weight_alignment(net, W, omega)}
