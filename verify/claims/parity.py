"""Claim 14: the NumPy and CuPy backends compute the same numbers.

``backend-parity`` (only with ``--backend cupy`` on a GPU): from the same host
inputs (float64, noise drawn on the host), compute key quantities with NumPy
and with CuPy and compare them: forward pass, BP gradients, DTP targets and
updates, L-DRL (fused and naive), DTP and DRL feedback gradients, JMC errors,
the well-conditioned quantities behind three deterministic claims, and those
claims' verdicts. On NumPy it is skipped (there is nothing to compare).

How numbers are compared (error analysis). Two correct float64 backends
differ by summation order and libm: each op's result moves by about
``n u sum|terms|`` (u = 1.1e-16), i.e. by a small multiple of the *magnitude
of the quantity it belongs to*, not of each entry. An entry that is rounding
noise around an exact 0 (a bias gradient that cancels, a "0" JMC error)
cannot agree relatively. So each leaf ``a`` (NumPy) vs ``b`` (other backend)
of a group g (a top-level entry: one block's gradient, one claim series)
must satisfy::

    |a - b| <= atol * scale_g + rtol * max(|a|, |b|),   scale_g = max |entry of g|.

Quantities whose condition number is huge (a claim's ``|L/sigma^2 - lead|``
at sigma = 1e-3, a distance ``||dW/beta - g||`` at beta = 1e-6: cancellation
moves them 3e-7 to 7e-3 relative under a one-ulp change of the inputs) are
not compared raw: their well-conditioned parts are (the two terms of the
difference, distances at beta >= 1e-2), and the claims' verdicts must agree.

The tolerances are proven on the CPU by a stand-in (tests/test_parity_standin.py):
NumPy vs NumPy with every float input moved by one ulp (:class:`PerturbedContext`)
stays >= 100x inside them, and a 1e-6 relative error planted at any group's
largest entry fails.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from refdtp import backprop, feedback, ldrl, metrics
from refdtp.backend import to_host
from refdtp.numerical import host64
from verify import nets
from verify.registry import CLAIMS, Check, Context, Outcome, claim, le

F64 = np.float64
#: Claims re-run on both backends; their verdicts must agree.
RERUN = ("ldrl-small-sigma-expansion", "jmc-implies-gradient-matching", "vgg-conv-jmc-floor")


@dataclass(frozen=True)
class Tolerance:
    """|a - b| <= atol * (max |entry| of the group) + rtol * max(|a|, |b|)."""
    rtol: float
    atol: float


#: Library quantities: float64 chains of ~10 ops, inputs O(1). The 1-ulp stand-in reaches
#: 4.4e-12 of the group scale (DRL's conv_1 gradient, condition ~4e4); the GPU's reordered sums
#: and libm add a few ulp per op. 1e-9 leaves >= 200x over the stand-in, and a 1e-6 error at a
#: group's largest entry is >= 500x over it.
LIBRARY_TOL = Tolerance(rtol=1e-9, atol=1e-9)
#: Conditioned claim quantities: divided by beta = 1e-2 or sigma^2 on the way (round-off
#: amplified up to 1e4); the stand-in reaches 2.8e-11 (C1's angle at beta = 1e-2). 1e-8 leaves
#: >= 300x over it; a planted 1e-6 error is >= 50x over it.
CLAIM_TOL = Tolerance(rtol=1e-8, atol=1e-8)


class PerturbedContext(Context):
    """A NumPy context whose host -> backend copies move every float by ``ulps`` ulps.

    The CPU stand-in for a second backend: a correct backend differs from
    NumPy by round-off, which a one-ulp change of every input models. The
    direction of each move is drawn from a generator seeded by (seed, the
    array's bytes), so the same input is always perturbed the same way.
    """

    def __init__(self, seed: int = 0, quick: bool = True, ulps: int = 1):
        super().__init__(backend="numpy", seed=seed, quick=quick)
        self.ulps = ulps

    def to(self, a):
        a = np.asarray(a)
        if a.dtype.kind != "f":
            return super().to(a)
        rng = np.random.default_rng([self.seed, zlib.crc32(a.tobytes())])
        toward = np.where(rng.random(a.shape) < 0.5, -np.inf, np.inf)
        out = a.copy()
        for _ in range(self.ulps):
            out = np.nextafter(out, toward)
        return super().to(out)


# -- comparison ----------------------------------------------------------------------------

def leaves(tree, prefix: str = ""):
    """(path, float64 1-d array) for every number or array in a nested dict/list."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from leaves(v, f"{prefix}/{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from leaves(v, f"{prefix}[{i}]")
    elif isinstance(tree, (int, float, np.floating, np.integer)) and not isinstance(tree, bool):
        yield prefix, np.array([float(tree)])
    elif hasattr(tree, "shape"):
        yield prefix, host64(tree).ravel()


def _group_ratio(a, b, tol: Tolerance):
    """(worst ratio |a-b| / allowed, worst |a-b| / scale) over one group's concatenated leaves."""
    u = np.concatenate([v for _, v in leaves(a)] or [np.zeros(0)])
    v = np.concatenate([w for _, w in leaves(b)] or [np.zeros(0)])
    if u.shape != v.shape:
        raise ValueError(f"group sizes differ: {u.size} vs {v.size}")
    both_nan = np.isnan(u) & np.isnan(v)
    u, v = np.where(both_nan, 0.0, u), np.where(both_nan, 0.0, v)
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        same = np.array_equal(u, v)  # equal infinities agree; a NaN on one side never does
        return (0.0 if same else math.inf), (0.0 if same else math.inf)
    diff = np.abs(u - v)
    scale = float(max(np.abs(u).max(initial=0.0), np.abs(v).max(initial=0.0)))
    allowed = tol.atol * scale + tol.rtol * np.maximum(np.abs(u), np.abs(v))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / allowed)
    normwise = float(diff.max(initial=0.0) / scale) if scale else 0.0
    return float(ratio.max(initial=0.0)), normwise


def compare(a: dict, b: dict, tol: Tolerance) -> dict:
    """Compare two trees group by group (a group is a top-level entry).

    Returns:
        {"ratio": worst |a-b| / allowed (<= 1 passes), "normwise": worst |a-b| / group scale,
         "worst_group": the group of the worst ratio, "groups": {group: ratio}}.

    Raises:
        ValueError: the trees differ in structure.
    """
    pa, pb = [p for p, _ in leaves(a)], [p for p, _ in leaves(b)]
    if pa != pb:
        raise ValueError(f"trees differ: {sorted(set(pa) ^ set(pb))[:5]}")
    groups, normwise = {}, 0.0
    for key, value in a.items():
        groups[key], nw = _group_ratio(value, b[key], tol)
        normwise = max(normwise, nw)
    worst_group = max(groups, key=groups.get) if groups else None
    return {"ratio": groups[worst_group] if groups else 0.0, "normwise": normwise,
            "worst_group": worst_group, "groups": groups}


# -- what is compared --------------------------------------------------------------------------

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
        u = ldrl.ldrl_constants(b, trace.s[n], route)
        out[f"ldrl_fused/{b.name}"] = ldrl.ldrl_grads_fused(*args, u, eps, eta)[0]
        out[f"ldrl_naive/{b.name}"] = ldrl.ldrl_grads_naive(*args, eps, eta)
        out[f"dtp/{b.name}"] = feedback.dtp_grads(b, Wd[b.name], od[b.name], trace.s[n - 1], eps)[0]
        out[f"drl/{b.name}"] = feedback.drl_grads(net, Wd, od, trace, n, eps, 0.05)[0]
        out[f"jmc/{b.name}"] = metrics.jmc_error_exact(b, Wd[b.name], od[b.name], trace.s[n - 1])
    return {k: (to_host(v) if hasattr(v, "shape") else v) for k, v in out.items()}


def claim_quantities(ctx: Context) -> dict:
    """The well-conditioned quantities behind the three re-run claims, on ctx's backend."""
    from verify.claims import architecture, gradient_matching
    from verify.claims import ldrl as ldrl_claims
    out = {}
    for label, net, W, omega, x, labels in gradient_matching._oracle_setups(ctx):
        for beta in (1e-1, 1e-2):
            rows = gradient_matching._compare(ctx, net, W, omega, x, labels, beta)
            out[f"jmc-gm/{label}/beta={beta:g}/distance"] = {n: r["distance"] for n, r in rows.items()}
            out[f"jmc-gm/{label}/beta={beta:g}/angle"] = {n: r["angle"] for n, r in rows.items()}
        dtp, bp = metrics.update_comparison(net, ctx.tree(W), ctx.tree(omega), ctx.to(x), ctx.to(labels),
                                            1e-2)
        out[f"jmc-gm/{label}/dtp_over_beta"], out[f"jmc-gm/{label}/bp"] = dtp, bp
    for label, block, W, omega, x in ldrl_claims._expansion_blocks(ctx):
        out[f"expansion/{label}"] = {
            "leading_term": ldrl_claims._leading_term(ctx, block, W, omega, x),
            **{f"loss/sigma^2 at {s:g}": nets.ldrl_expected(ctx, block, W, omega, x, s, "loss") / s ** 2
               for s in (3e-2, 1e-2)}}
    errors = {}
    for shift in (10.0, 3.0, 0.0, -0.3, -1.0, -3.0):
        block, W, omega, x = architecture._vgg_block(ctx, 1301, shift)
        errors[f"shift={shift:g}"] = metrics.jmc_error_exact(block, ctx.tree(W), ctx.tree(omega), ctx.to(x))
    out["vgg-floor/error"] = errors
    return {k: (to_host(v) if hasattr(v, "shape") else v) for k, v in out.items()}


def claim_verdicts(ctx: Context, cid: str) -> dict:
    """{check name: passed} and the overall verdict of one claim run on ctx."""
    outcome = CLAIMS[cid].run(ctx)
    return {"passed": outcome.passed, "checks": {c.name: c.passed for c in outcome.checks}}


def compare_backends(ref: Context, other: Context) -> Outcome:
    """The parity checks of ``other`` against ``ref`` (NumPy); any two contexts (see the stand-in)."""
    lib = compare(library_numbers(ref), library_numbers(other), LIBRARY_TOL)
    cq = compare(claim_quantities(ref), claim_quantities(other), CLAIM_TOL)
    flips = {}
    for cid in (c for c in RERUN if c in CLAIMS):
        va, vb = claim_verdicts(ref, cid), claim_verdicts(other, cid)
        flips[cid] = [k for k in va["checks"] if va["checks"][k] != vb["checks"].get(k)]
        flips[cid] += ["(verdict)"] if va["passed"] != vb["passed"] else []
    checks = [Check(f"library quantities: worst |a-b| / ({LIBRARY_TOL.atol:g} group max + "
                    f"{LIBRARY_TOL.rtol:g} |b|)", lib["ratio"], le(1.0)),
              Check(f"conditioned claim quantities: worst |a-b| / ({CLAIM_TOL.atol:g} group max + "
                    f"{CLAIM_TOL.rtol:g} |b|)", cq["ratio"], le(1.0)),
              Check(f"checks of {len(flips)} claims whose verdict differs", sum(map(len, flips.values())),
                    le(0))]
    return Outcome(checks, {"library": lib, "claim_quantities": cq, "verdict_flips": flips})


@claim("backend-parity",
       "NumPy and CuPy compute the same float64 numbers from the same host inputs: forward, BP, DTP updates, "
       "L-DRL / DTP / DRL feedback gradients, JMC errors (|a-b| <= 1e-9 (group max + |b|)), the "
       "well-conditioned quantities of three deterministic claims (1e-8), and the same claim verdicts",
       "docs/conventions.md §6 (the backend rule); docs/theory.md §9", "exact")
def backend_parity(ctx) -> Outcome:
    if ctx.backend != "cupy":
        return Outcome([], skipped="needs --backend cupy and a GPU")
    return compare_backends(Context(backend="numpy", seed=ctx.seed, quick=True),
                            Context(backend="cupy", seed=ctx.seed, quick=True))
