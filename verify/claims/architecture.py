"""Claims on the paper's own conv blocks (conv 3x3 -> ELU -> max-pool 2; feedback un-pool -> ELU -> ConvT).

13. ``vgg-conv-jmc-floor``: with omega = W the feedback Jacobian equals J_F^T
    exactly iff every selected (pooled) pre-activation is >= 0, because G
    applies ELU to the *post*-activation: ELU'(ELU(a)) = exp(e^a - 1) != e^a
    for a < 0 (docs/theory.md §7, §3.4).
    ``ldrl-maxpool-noisy-routing-floor``: with the official routing (G(F(x+eps))
    un-pooled with the *noisy* pass's argmax, docs/conventions.md §3), a max-pool
    window whose top-two gap is below the noise moves the selected position,
    so G(F(x+eps)) jumps by O(|y|) and the L-DRL optimum is biased at the same
    order sigma^2 as its signal. The bias disappears when sigma is below every
    pooling gap, or with the clean routing (derived here; not in the papers).
"""
from __future__ import annotations

import math

import numpy as np

from refdtp import metrics, networks
from refdtp.numerical import host64
from verify import nets
from verify.registry import Check, Outcome, claim, gt, le, lt, worst

F64 = np.float64


def _vgg_block(ctx, seed: int, shift: float, B: int = 2):
    """A SimpleVGG conv block (3x8x8 -> 4x4x4), omega = W, forward bias shifted by ``shift``."""
    block = networks.conv_block("conv", (3, 8, 8), 4)
    rng = ctx.rng(seed)
    W = block.init_forward(rng, F64)
    W["bias"] = W["bias"] + shift
    omega = {"weight": W["weight"].copy(), "bias": rng.standard_normal(3)}  # the bias is inert
    return block, W, omega, rng.standard_normal((B, 3, 8, 8))


def selected_preactivations(block, W: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a at the max-pool's argmax positions, those plane indices), each (B, C, Ho*Wo) (host)."""
    conv, act, pool = block.F.ops
    a, _ = conv.forward(W, x)
    _, idx = pool.forward({}, act.forward({}, a)[0])
    B, C = a.shape[:2]
    idx = idx.reshape(B, C, -1)
    return np.take_along_axis(a.reshape(B, C, -1), idx, axis=2), idx


def predicted_floor(block, W: dict, x: np.ndarray) -> float:
    """||J_G - J_F^T|| / ||J_F|| predicted for omega = W (docs/theory.md §7).

    J_F^T = C_W^T diag(ELU'(a)) P^T and J_G = C_W^T diag(ELU'(ELU(a))) P^T with
    P^T the un-pool to distinct positions p, so the columns are independent:
    the ratio is sqrt(sum_p d_p^2 n_p / sum_p ELU'(a_p)^2 n_p) with
    d_p = ELU'(ELU(a_p)) - ELU'(a_p) and n_p = ||C_W^T e_p||^2.
    """
    conv, act, _ = block.F.ops
    a_sel, idx = selected_preactivations(block, W, x)

    def deriv(z):
        """The activation's derivative at z (ELU' above)."""
        return act.act.derivative(z, act.act.value(z))

    d, e = deriv(act.act.value(a_sel)) - deriv(a_sel), deriv(a_sel)
    C, H, Wd = conv.out_shape
    units = np.eye(C * H * Wd).reshape(C * H * Wd, C, H, Wd)
    n = (conv.vjp(W, None, units) ** 2).reshape(C * H * Wd, -1).sum(axis=1).reshape(C, H * Wd)
    n_sel = n[np.arange(C)[None, :, None], idx]
    return float(np.sqrt((d * d * n_sel).sum() / (e * e * n_sel).sum()))


@claim("vgg-conv-jmc-floor",
       "SimpleVGG conv block with omega = W: ||J_G - J_F^T|| / ||J_F|| equals the closed form of the "
       "ELU-on-post-activation floor, which is 0 (<= 1e-12) when every pooled pre-activation is >= 0 and "
       "positive (far above round-off) as soon as one is negative",
       "docs/theory.md §7, §3.4", "exact")
def vgg_conv_jmc_floor(ctx) -> Outcome:
    rows = {}
    for shift in (10.0, 3.0, 0.0, -0.3, -1.0, -3.0):
        block, W, omega, x = _vgg_block(ctx, 1301, shift)
        a, _ = selected_preactivations(block, W, x)
        err = metrics.jmc_error_exact(block, ctx.tree(W), ctx.tree(omega), ctx.to(x))
        pred = predicted_floor(block, W, x)
        rows[shift] = {"fraction_negative": float((a < 0).mean()), "min_selected": float(a.min()),
                       "error": err, "predicted": pred, "mismatch": abs(err - pred) / max(pred, 1e-300)}
    clean = [r["error"] for r in rows.values() if r["fraction_negative"] == 0]
    dirty = [r["error"] for r in rows.values() if r["fraction_negative"] > 0]
    checks = [Check("measured vs closed-form floor, max relative difference",
                    worst(r["mismatch"] for r in rows.values() if r["predicted"] > 0), le(1e-10)),
              Check("cases with every pooled pre-activation >= 0 (of 6)", len(clean), gt(0)),
              Check("max error, all pooled pre-activations >= 0", worst(clean), le(1e-12)),
              Check("cases with a negative pooled pre-activation (of 6)", len(dirty), gt(2)),
              Check("min error, some pooled pre-activation < 0", worst(dirty, min), gt(1e-8))]
    return Outcome(checks, {"by_bias_shift": rows})


# -- noisy vs clean routing ------------------------------------------------------

class CleanRouted:
    """A block whose every route is the *clean* pass's, whatever trace it is given.

    A control for the official rule (docs/conventions.md §3: G(F(x+eps)) is routed by
    the noisy pass). Built for :func:`verify.nets.ldrl_expected`: it knows the
    clean route of x tiled once per row of each antithetic design, keyed by
    batch size.
    """

    def __init__(self, ctx, block, W: dict, x: np.ndarray):
        self.block, self.clean = block, {}
        for shape in (block.in_shape, block.out_shape):
            S = 2 * math.prod(shape)
            _, cache = block.forward(ctx.tree(W), ctx.to(np.repeat(x, S, axis=0)))
            self.clean[x.shape[0] * S] = block.route(cache)

    def route(self, trace):
        sizes = {int(t.shape[0]) for t in trace if hasattr(t, "shape")}
        return self.clean[sizes.pop()]

    def __getattr__(self, name):
        return getattr(self.block, name)


def pool_gap(block, W: dict, x) -> float:
    """Smallest gap between the two largest entries of any max-pool window of the block (host)."""
    conv, act, pool = block.F.ops
    h = act.forward({}, conv.forward(W, x)[0])[0]
    win = np.sort(nets.pool_windows(pool, host64(h)), axis=0)
    return float((win[-1] - win[-2]).min())


def _near_tie_setup(ctx, lo: float = 1e-4, hi: float = 1e-3, tries: int = 400):
    """A SimpleVGG-style block (2x4x4 -> 3x2x2) and a batch of 2 whose smallest pooling gap is in [lo, hi]."""
    block = networks.conv_block("conv", (2, 4, 4), 3)
    rng = ctx.rng(1401)
    W, omega = block.init_forward(rng, F64), block.init_feedback(rng, F64)
    for _ in range(tries):
        x = rng.standard_normal((2, 2, 4, 4))
        if lo <= pool_gap(block, W, x) <= hi:
            return block, W, omega, x
    raise RuntimeError("no input with a pooling near-tie found")


def _closed_form_error(ctx, block, route_block, W, omega, x, sigma):
    star = nets.quadratic_minimiser(lambda om: nets.ldrl_expected(ctx, route_block, W, om, x, sigma), omega)
    return metrics.jmc_error_exact(block, ctx.tree(W), ctx.tree(star), ctx.to(x)), star["weight"]


@claim("ldrl-maxpool-noisy-routing-floor",
       "Max-pool blocks: with G(F(x+eps)) routed by the noisy argmax (official rule), a pooling near-tie "
       "biases the closed-form L-DRL optimum by O(1) once sigma exceeds the gap (>= 10x the JMC error of "
       "clean routing), and the two rules give the same optimum when sigma is below every gap",
       "derived, docs/theory.md §8 (routing: docs/conventions.md §3)", "exact")
def ldrl_maxpool_noisy_routing_floor(ctx) -> Outcome:
    block, W, omega, x = _near_tie_setup(ctx)
    gap = pool_gap(block, W, x)
    clean = CleanRouted(ctx, block, W, x)
    rows = {}
    for sigma in (1e-2, 1e-2 * gap):
        (en, wn), (ec, wc) = (_closed_form_error(ctx, block, rb, W, omega, x, sigma) for rb in (block, clean))
        rows[sigma] = {"noisy": en, "clean": ec, "noisy_vs_clean": metrics.relative_distance(wn, wc)}
    big, small = rows[1e-2], rows[1e-2 * gap]
    sym = metrics.jmc_error_exact(block, ctx.tree(W), ctx.tree({**omega, "weight": W["weight"]}), ctx.to(x))
    checks = [Check("sigma = 1e-2 > smallest gap: JMC error, noisy / clean routing",
                    big["noisy"] / big["clean"], gt(10.0)),
              Check("sigma below every gap: noisy vs clean minimiser, relative distance",
                    small["noisy_vs_clean"], le(1e-8)),
              Check("sigma below every gap: JMC error of the L-DRL minimiser", small["noisy"], lt(0.05))]
    return Outcome(checks, {"smallest_gap": gap, "symmetric_jmc_error": sym, "by_sigma": rows})
