"""Claim 14: the NumPy and CuPy backends compute the same numbers.

``backend-parity`` (only with ``--backend cupy`` on a GPU): from the same host
inputs (float64, noise drawn on the host), compute key quantities with NumPy
and with CuPy and compare them: forward pass, BP gradients, DTP targets and
updates, L-DRL (fused and naive), DTP and DRL feedback gradients, JMC errors,
and every measured number of three deterministic claims. On NumPy it is
skipped (there is nothing to compare).
"""
from __future__ import annotations

import math

import numpy as np

from refdtp import backprop, feedback, metrics
from refdtp.backend import to_host
from verify import nets
from verify.registry import CLAIMS, Check, Context, Outcome, claim, le, worst

F64 = np.float64
#: Claims re-run on both backends; their measured numbers must agree.
RERUN = ("ldrl-small-sigma-expansion", "jmc-implies-gradient-matching", "vgg-conv-jmc-floor")


def _leaves(tree, prefix: str = ""):
    """(path, float) for every number in a nested dict/list of numbers and arrays."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}/{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{prefix}[{i}]")
    elif isinstance(tree, (int, float, np.floating, np.integer)) and not isinstance(tree, bool):
        yield prefix, float(tree)
    elif hasattr(tree, "shape"):
        for i, v in enumerate(np.asarray(to_host(tree), F64).ravel()):
            yield f"{prefix}[{i}]", float(v)


def mismatch(a, b, atol: float = 1e-12) -> float:
    """Worst relative difference between two trees of numbers with the same structure.

    Returns max over paired leaves of |a - b| / max(|a|, |b|, atol), so numbers
    at round-off level (|.| < atol) are compared absolutely; two NaNs agree.

    Raises:
        ValueError: the trees differ in structure.
    """
    la, lb = dict(_leaves(a)), dict(_leaves(b))
    if la.keys() != lb.keys():
        raise ValueError(f"trees differ: {sorted(set(la) ^ set(lb))[:5]}")
    worst = 0.0
    for k, u in la.items():
        v = lb[k]
        if math.isnan(u) and math.isnan(v):
            continue
        worst = max(worst, abs(u - v) / max(abs(u), abs(v), atol))
    return worst


def library_numbers(ctx: Context) -> dict:
    """Key quantities of a small SimpleVGG, computed on ctx's backend, as host arrays."""
    net = nets.tiny_vgg()
    W, omega = nets.params(ctx, net, 1401)
    x, labels = nets.batch(ctx.rng(1402), net, 3)
    rng = ctx.rng(1403)
    Wd, od, xd = ctx.tree(W), ctx.tree(omega), ctx.to(x)
    trace = net.forward(Wd, xd)
    out = {"logits": trace.logits,
           "bp": backprop.cross_entropy_gradients(net, Wd, xd, ctx.to(labels)),
           "dtp_vs_bp": metrics.update_comparison(net, Wd, od, xd, ctx.to(labels), 0.01)[0]}
    for n, b in enumerate(net.blocks[1:], start=2):
        eps = ctx.to(0.05 * rng.standard_normal(tuple(trace.s[n - 1].shape)))
        eta = ctx.to(0.05 * rng.standard_normal(tuple(trace.s[n].shape)))
        route = b.route(trace.caches[n - 1])
        args = (b, Wd[b.name], od[b.name], trace.s[n - 1], trace.s[n], route)
        u = feedback.ldrl_constants(b, trace.s[n], route)
        out[f"ldrl_fused/{b.name}"] = feedback.ldrl_grads_fused(*args, u, eps, eta)[0]
        out[f"ldrl_naive/{b.name}"] = feedback.ldrl_grads_naive(*args, eps, eta)
        out[f"dtp/{b.name}"] = feedback.dtp_grads(b, Wd[b.name], od[b.name], trace.s[n - 1], eps)[0]
        out[f"drl/{b.name}"] = feedback.drl_grads(net, Wd, od, trace, n, eps, 0.05)[0]
        out[f"jmc/{b.name}"] = metrics.jmc_error_exact(b, Wd[b.name], od[b.name], trace.s[n - 1])
    return {k: (to_host(v) if hasattr(v, "shape") else v) for k, v in out.items()}


def claim_numbers(ctx: Context, cid: str) -> dict:
    """Every measured number (checks and data) of one claim run on ctx."""
    outcome = CLAIMS[cid].run(ctx)
    return {"checks": {c.name: c.value for c in outcome.checks}, "data": outcome.data}


@claim("backend-parity",
       "NumPy and CuPy compute the same float64 numbers from the same host inputs: forward, BP, DTP updates, "
       "L-DRL / DTP / DRL feedback gradients, JMC errors (<= 1e-10 relative) and the measured numbers of "
       "three deterministic claims (<= 1e-6 relative)",
       "style.md B (backend abstraction)", "exact")
def backend_parity(ctx) -> Outcome:
    if ctx.backend != "cupy":
        return Outcome([], skipped="needs --backend cupy and a GPU")
    host = Context(backend="numpy", seed=ctx.seed, quick=True)
    gpu = Context(backend="cupy", seed=ctx.seed, quick=True)
    lib = mismatch(library_numbers(host), library_numbers(gpu))
    reruns = {cid: mismatch(claim_numbers(host, cid), claim_numbers(gpu, cid), atol=1e-10)
              for cid in RERUN if cid in CLAIMS}
    checks = [Check("library quantities, max relative mismatch", lib, le(1e-10)),
              Check(f"measured numbers of {len(reruns)} claims, max relative mismatch",
                    worst(reruns.values()), le(1e-6))]
    return Outcome(checks, {"library": lib, "claims": reruns})
