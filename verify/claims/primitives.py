"""Claims 1-3: every hand-written derivative against finite differences.

1. ``derivatives-match-finite-differences``: every primitive op of
   :mod:`refdtp.ops` and every block (forward F_n and feedback G_n) of
   simple_vgg, lenet, mlp and small_convnet: JVP, VJP, parameter gradient and
   parameter JVP against central differences (docs/theory.md §9).
2. ``adjoint-identities``: conv / conv-transpose, max-pool / max-unpool,
   avg-pool / avg-unpool, and <J u, w> = <u, J^T w> for every op and block
   (docs/theory.md §9).
3. ``loss-gradients-match-finite-differences``: cross-entropy, BP, the
   forward (target) loss, L-DRL (naive and fused), vanilla DTP and DRL
   gradients against central differences; fused == naive to round-off
   (docs/theory.md §9).

The analytic side runs on ``ctx.backend``; finite differences run on the host
in float64 (refdtp.numerical).
"""
from __future__ import annotations

import math

import numpy as np

from refdtp import backprop, feedback, ldrl, losses, networks, targets
from refdtp.backend import backend_name, to_backend
from refdtp.numerical import flat_params, grad_error, host64, jvp_error, relative_error, vjp_error
from refdtp.ops import (
    Act,
    AvgPool2d,
    AvgUnpool2d,
    Conv2d,
    ConvTranspose2d,
    Flatten,
    Linear,
    MaxPool2d,
    MaxUnpool2d,
    Reshape,
)
from verify import nets
from verify.registry import Check, Outcome, claim, le, worst

F64 = np.float64
ACTIVATIONS = ("elu", "tanh", "relu", "leaky_relu", "sigmoid", "identity",
               "phi_tanh", "phi_sigmoid", "phi_elu")


def _networks():
    """(label, network) for every architecture, small enough for finite differences."""
    return [("m1-tanh-paper", nets.m1("paper")), ("m1-tanh-jmc", nets.m1("jmc")),
            ("m5-elu-paper", nets.m1("paper", "elu")), ("c1-avg-jmc", nets.c1("jmc")),
            ("c2-max-paper", networks.small_convnet(pool="max", pool_first=False)),
            ("simple_vgg", nets.tiny_vgg()), ("lenet", nets.tiny_lenet())]


def _separated(rng, shape) -> np.ndarray:
    """Values with pairwise gaps >= 4/size and |x| >= 0.05: no max-pool ties, no kinks."""
    n = math.prod(shape)
    v = rng.permutation(n) * (4.0 / n) - 2.0
    return (v + np.where(v >= 0, 0.05, -0.05)).reshape(shape)


def _ops(rng):
    """(name, op, route-maker) for every primitive op; route-maker gives unpool indices."""
    mp, mpo = MaxPool2d((2, 4, 4), 2), MaxPool2d((2, 5, 5), 3, 2, 1)
    ap, apo = AvgPool2d((2, 4, 4), 2), AvgPool2d((2, 5, 5), 3, 2, 1)
    ops = [("Linear", Linear(5, 4)), ("Linear(no bias)", Linear(3, 2, bias=False)),
           ("Conv2d s1 p1", Conv2d((2, 5, 5), 3, 3, 1, 1)), ("Conv2d s2 p1", Conv2d((2, 6, 6), 3, 3, 2, 1)),
           ("Conv2d k5 p2", Conv2d((1, 6, 6), 2, 5, 1, 2)),
           ("ConvTranspose2d s1 p1", ConvTranspose2d((2, 5, 5), 3, 3, 1, 1)),
           ("ConvTranspose2d s2 p1", ConvTranspose2d((2, 6, 6), 3, 3, 2, 1)),
           ("ConvTranspose2d s1 p0", ConvTranspose2d((2, 5, 5), 2, 3, 1, 0)),
           ("MaxPool2d 2/2", mp), ("MaxPool2d 3/2/1", mpo), ("MaxUnpool2d 2/2", MaxUnpool2d(mp)),
           ("MaxUnpool2d 3/2/1", MaxUnpool2d(mpo)), ("AvgPool2d 2/2", ap), ("AvgPool2d 3/2/1", apo),
           ("AvgUnpool2d 2/2", AvgUnpool2d(ap)), ("AvgUnpool2d 3/2/1", AvgUnpool2d(apo)),
           ("Reshape", Reshape((2, 3, 4), (6, 4))), ("Flatten", Flatten((2, 3)))]
    ops += [(f"Act {a}", Act((3, 4), a)) for a in ACTIVATIONS]
    out = []
    for name, op in ops:
        route = None
        if op.needs_route:
            _, route = op.pool.forward({}, _separated(rng, (3,) + op.pool.in_shape))
        out.append((name, op, route))
    return out


# -- one differentiable map, checked every way --------------------------------

def _measured(result) -> float:
    """The norm-wise relative error of a finite-difference check, or inf when the checker itself
    failed it (a structural problem such as a wrong shape or a NaN, or its elementwise tolerance)."""
    return result.norm_rel if result.passed and not result.problems else math.inf


def _map_errors(ctx, forward, p: dict, x: np.ndarray, seed: int, n_dir: int) -> dict:
    """FD errors of jvp, vjp, param_grads and param_jvp of a map given as methods.

    Args:
        forward: object with forward(p, x) -> (y, cache), jvp, vjp, param_grads,
            param_jvp (an op with its route bound, or a chain).
        p: host parameters; x: host input.

    Returns:
        {face: relative error (norm-wise, vs finite differences)}.
    """
    pd, cache = ctx.tree(p), forward.forward(ctx.tree(p), ctx.to(x))[1]

    def f(v):
        """The map's output at input v (host parameters)."""
        return forward.forward(p, v)[0]

    def jvp(v, u):
        """Hand JVP J u at x, on the host."""
        return host64(forward.jvp(pd, cache, ctx.to(u)))

    def vjp(v, w):
        """Hand VJP J^T w at x, on the host."""
        return host64(forward.vjp(pd, cache, ctx.to(w)))

    opts = {"seed": seed, "n_directions": n_dir}
    err = {"jvp": _measured(jvp_error(f, jvp, x, **opts)),
           "vjp": _measured(vjp_error(f, vjp, x, **opts))}
    if p:
        vec, unflat = flat_params(p)

        def fp(v):
            """The map's output at x as a function of its flattened parameters."""
            return forward.forward(unflat(v), x)[0]

        def pg(v, w):
            """Hand parameter gradient (VJP) at p, flattened in p's key order."""
            return _flat(forward.param_grads(pd, cache, ctx.to(w)), order=p)

        def pj(v, dp):
            """Hand parameter JVP at p along the flattened direction dp, on the host."""
            return host64(forward.param_jvp(pd, cache, ctx.tree(unflat(dp))))

        err["param_grads"] = _measured(vjp_error(fp, pg, vec, **opts))
        err["param_jvp"] = _measured(jvp_error(fp, pj, vec, **opts))
    return err


class _Bound:
    """An op or chain with its routing fixed: forward(p, x) -> (y, cache).

    The route (unpool indices: None, one array, or a chain's tuple) is moved
    to whichever backend x lives on, so the same object serves the host
    finite differences and the analytic side on ctx.backend.
    """

    def __init__(self, f, route=None):
        self.f, self.route = f, route

    def forward(self, p, x):
        name = backend_name(x)

        def move(r):
            return None if r is None else to_backend(r, name)
        route = tuple(map(move, self.route)) if isinstance(self.route, tuple) else move(self.route)
        return self.f.forward(p, x, route)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _block_cases(ctx, net, seed: int):
    """(label, bound map, host params, host input) for F_n and G_n of every block of net."""
    W, omega = nets.params(ctx, net, seed)
    x, _ = nets.smooth_batch(ctx.rng(seed, 1), net, W, 2, margin=1e-5)
    ins = nets.block_inputs(net, W, x)
    for b in net.blocks:
        y, cache = b.forward(W[b.name], ins[b.name])
        yield f"{b.name} F", _Bound(b.F), W[b.name], ins[b.name]
        yield f"{b.name} G", _Bound(b.G, tuple(b.route(cache))), omega[b.name], y


@claim("derivatives-match-finite-differences",
       "Every primitive op and every block (F_n and G_n) of simple_vgg, lenet, mlp and small_convnet: "
       "hand JVP, VJP, parameter gradient and parameter JVP equal central finite differences (float64)",
       "docs/theory.md §9", "exact")
def derivatives_match_finite_differences(ctx) -> Outcome:
    n_dir = 2 if ctx.quick else 5
    rng = ctx.rng(101)
    op_err, block_err = {}, {}
    for name, op, route in _ops(rng):
        p = op.init_params(rng, F64)
        x = _separated(rng, (3,) + tuple(op.in_shape))
        op_err[name] = _map_errors(ctx, _Bound(op, route), p, x, 1, n_dir)
    for label, net in _networks():
        for part, chain, p, x in _block_cases(ctx, net, 2):
            block_err[f"{label} {part}"] = _map_errors(ctx, chain, p, x, 3, n_dir)

    def top(errors):
        """The worst error over every map and face."""
        return worst(e for v in errors.values() for e in v.values())

    checks = [Check(f"worst relative error, {len(op_err)} ops", top(op_err), le(1e-7)),
              Check(f"worst relative error, {len(block_err)} block maps", top(block_err), le(1e-7))]
    return Outcome(checks, {"ops": op_err, "blocks": block_err})


# -- claim 2: adjoints --------------------------------------------------------

def _adjoint_gap(Ju, w, u, JTw) -> float:
    """|<J u, w> - <u, J^T w>| / max(||J u|| ||w||, ||u|| ||J^T w||)."""
    Ju, w, u, JTw = (host64(a).ravel() for a in (Ju, w, u, JTw))
    scale = max(np.linalg.norm(Ju) * np.linalg.norm(w), np.linalg.norm(u) * np.linalg.norm(JTw))
    return float(abs(Ju @ w - u @ JTw) / scale)


@claim("adjoint-identities",
       "<Conv_W u, v> = <u, ConvT_W v>, <Pool_idx u, v> = <u, Unpool_idx v> (max and average, "
       "overlapping or not), and <J u, w> = <u, J^T w> for the JVP/VJP of every op and block",
       "docs/theory.md §9", "exact")
def adjoint_identities(ctx) -> Outcome:
    rng = ctx.rng(102)
    pairs = {}
    for k, s, pad, hw in ((3, 1, 1, 6), (3, 1, 0, 6), (5, 1, 2, 7), (3, 2, 1, 7), (2, 2, 0, 6), (3, 2, 0, 7)):
        conv = Conv2d((2, hw, hw), 3, k, s, pad, bias=False)
        convt = ConvTranspose2d((2, hw, hw), 3, k, s, pad, bias=False)
        w = {"weight": ctx.to(rng.standard_normal(conv.param_shapes()["weight"]))}
        u, v = rng.standard_normal((2,) + conv.in_shape), rng.standard_normal((2,) + conv.out_shape)
        pairs[f"conv/convT k{k} s{s} p{pad}"] = _adjoint_gap(
            conv.forward(w, ctx.to(u))[0], v, u, convt.forward(w, ctx.to(v))[0])
    for label, pool in (("2/2", (2, 6, 6, 2, None, 0)), ("3/2/1", (2, 5, 5, 3, 2, 1))):
        C, H, Wd, k, s, pad = pool
        for kind, cls, uncls in (("max", MaxPool2d, MaxUnpool2d), ("avg", AvgPool2d, AvgUnpool2d)):
            p = cls((C, H, Wd), k, s, pad)
            u = rng.standard_normal((2, C, H, Wd))
            v = rng.standard_normal((2,) + p.out_shape)
            y, idx = p.forward({}, ctx.to(_separated(rng, (2, C, H, Wd))))
            Pu = p.jvp({}, idx, ctx.to(u))  # the linear map of this pooling pattern
            Uv = uncls(p).forward({}, ctx.to(v), idx)[0]
            pairs[f"{kind}-pool/unpool {label}"] = _adjoint_gap(Pu, v, u, Uv)
    jv = {}
    for name, op, route in _ops(rng):
        jv[name] = _jvp_vjp_gap(ctx, _Bound(op, route), op.init_params(rng, F64),
                                _separated(rng, (3,) + tuple(op.in_shape)), rng)
    for label, net in _networks():
        for part, chain, p, x in _block_cases(ctx, net, 4):
            jv[f"{label} {part}"] = _jvp_vjp_gap(ctx, chain, p, x, rng)
    checks = [Check("conv/convT and pool/unpool pairs", worst(pairs.values()), le(1e-12)),
              Check(f"<J u, w> = <u, J^T w>, {len(jv)} ops and block maps", worst(jv.values()), le(1e-12))]
    return Outcome(checks, {"pairs": pairs, "jvp_vjp": jv})


def _jvp_vjp_gap(ctx, f, p, x, rng) -> float:
    pd = ctx.tree(p)
    y, cache = f.forward(pd, ctx.to(x))
    u, w = rng.standard_normal(x.shape), rng.standard_normal(tuple(y.shape))
    return _adjoint_gap(f.jvp(pd, cache, ctx.to(u)), w, u, f.vjp(pd, cache, ctx.to(w)))


# -- claim 3: loss gradients ----------------------------------------------------

def _grad_rel(f_host, grad, x0: np.ndarray, seed: int, directional: bool, eps: float = 1e-6) -> float:
    return _measured(grad_error(f_host, host64(grad).reshape(x0.shape), x0,
                                directional=directional, seed=seed, n_directions=4, eps=eps))


def _flat(d: dict, order=None) -> np.ndarray:
    """Arrays of d as one host float64 vector, in the key order of ``order`` (default d's)."""
    return np.concatenate([host64(d[k]).ravel() for k in (order or d)])


def _feedback_cases(ctx, net, seed: int, sigma: float = 0.1) -> dict:
    """Relative FD errors of the L-DRL (naive, fused), DTP and DRL gradients of blocks 2..N."""
    W, omega = nets.params(ctx, net, seed)
    x, _ = nets.smooth_batch(ctx.rng(seed, 5), net, W, 3, margin=1e-5)
    rng = ctx.rng(seed, 6)
    trace = net.forward(W, x)
    Wd, od, traced = ctx.tree(W), ctx.tree(omega), net.forward(ctx.tree(W), ctx.to(x))
    out = {}
    for n, b in enumerate(net.blocks[1:], start=2):
        out[b.name] = _feedback_block_errors(ctx, net, n, (W, omega, trace), (Wd, od, traced), rng, sigma)
    return out


def _feedback_block_errors(ctx, net, n: int, host: tuple, dev: tuple, rng, sigma: float) -> dict:
    """Block n's part of :func:`_feedback_cases`; host, dev: (W, omega, trace) on the host, on ctx.backend.

    Draws the noise eps (input) and eta (output) from ``rng``, in that order.
    """
    (W, omega, trace), (Wd, od, traced) = host, dev
    b = net.blocks[n - 1]
    xin, y = trace.s[n - 1], trace.s[n]
    eps, eta = sigma * rng.standard_normal(xin.shape), sigma * rng.standard_normal(y.shape)
    route = b.route(trace.caches[n - 1])
    vec, unflat = flat_params(omega[b.name])
    small = vec.size <= 64
    # G is affine in omega, so every feedback loss is quadratic in omega: central
    # differences have no truncation error at any step, and a large one cuts the
    # round-off (the DRL loss carries 1/sigma^2 and can be ~1e3 times its gradient).
    # A loss that is not quadratic would show up as truncation error.
    h = 1e-1 if b.feedback_is_affine else 1e-6
    args = (Wd[b.name], od[b.name], traced.s[n - 1], traced.s[n], b.route(traced.caches[n - 1]))
    naive = ldrl.ldrl_grads_naive(b, *args, ctx.to(eps), ctx.to(eta))
    u = ldrl.ldrl_constants(b, traced.s[n], args[-1])
    fused, _ = ldrl.ldrl_grads_fused(b, *args, u, ctx.to(eps), ctx.to(eta))

    def f_ldrl(v):
        """The L-DRL loss of block n as a function of its flattened feedback parameters."""
        return ldrl.ldrl_loss(b, W[b.name], unflat(v), xin, y, route, eps, eta)

    def f_dtp(v):
        """The vanilla DTP reconstruction loss, likewise."""
        return feedback.dtp_loss(b, W[b.name], unflat(v), xin, eps)

    def f_drl(v):
        """The DRL loss, likewise."""
        return feedback.drl_loss(net, W, {**omega, b.name: unflat(v)}, trace, n, eps, sigma)

    dtp, _ = feedback.dtp_grads(b, Wd[b.name], od[b.name], traced.s[n - 1], ctx.to(eps))
    drl, _ = feedback.drl_grads(net, Wd, od, traced, n, ctx.to(eps), sigma)
    return {"ldrl_naive": _grad_rel(f_ldrl, _flat(naive), vec, n, not small, h),
            "ldrl_fused": _grad_rel(f_ldrl, _flat(fused), vec, n, not small, h),
            "fused_vs_naive": relative_error(_flat(fused), _flat(naive)),
            "dtp": _grad_rel(f_dtp, _flat(dtp), vec, n, not small, h),
            "drl": _grad_rel(f_drl, _flat(drl), vec, n, not small, h)}


def _forward_cases(ctx, net, seed: int, beta: float = 0.3) -> dict:
    """Relative FD errors of the BP (mean CE) and forward-loss gradients w.r.t. all W."""
    W, omega = nets.params(ctx, net, seed)
    x, labels = nets.smooth_batch(ctx.rng(seed, 7), net, W, 3, margin=1e-5)
    flatW = {f"{k}.{n}": a for k, d in W.items() for n, a in d.items()}
    vec, unflat = flat_params(flatW)

    def nest(v):
        u = unflat(v)
        return {b: {n: u[f"{b}.{n}"] for n in W[b]} for b in W}

    trace = net.forward(W, x)
    tgts = targets.propagate_targets(net, omega, trace, targets.first_target(
        trace.logits.reshape(3, -1), labels, beta))

    def f_ce(v):
        return losses.cross_entropy(net.logits(nest(v), x), labels)

    def f_fwd(v):  # block losses with each block's input detached (docs/algorithm.md §3.3)
        Wv = nest(v)
        return sum(0.5 * ((b.forward(Wv[b.name], trace.s[n])[0] - tgts[n + 1]) ** 2).sum()
                   for n, b in enumerate(net.blocks)) / x.shape[0]

    Wd = ctx.tree(W)
    bp = backprop.cross_entropy_gradients(net, Wd, ctx.to(x), ctx.to(labels))
    traced = net.forward(Wd, ctx.to(x))
    fl = targets.forward_loss_grads(net, Wd, traced, [None if t is None else ctx.to(t) for t in tgts])

    def order(g):
        """A nested gradient dict as one host vector, in flatW's order."""
        return np.concatenate([host64(g[b][n]).ravel() for k in flatW for b, n in [k.rsplit(".", 1)]])

    small = vec.size <= 64
    return {"bp_mean_ce": _grad_rel(f_ce, order(bp), vec, 1, not small),
            "forward_loss": _grad_rel(f_fwd, order(fl), vec, 2, not small)}


@claim("loss-gradients-match-finite-differences",
       "Gradients of cross-entropy, half-MSE, BP (mean CE), the DTP forward loss, L-DRL (naive and fused), "
       "vanilla DTP and DRL equal central finite differences (float64); fused L-DRL == naive to round-off",
       "docs/theory.md §9; docs/algorithm.md §4.1, §4.2", "exact")
def loss_gradients_match_finite_differences(ctx) -> Outcome:
    rng = ctx.rng(103)
    z, labels, t = rng.standard_normal((4, 5)), rng.integers(0, 5, 4), rng.standard_normal((4, 5))
    out = {}
    for red in losses.REDUCTIONS:
        ce_grad = losses.cross_entropy_grad(ctx.to(z), ctx.to(labels), red)
        out[f"cross_entropy {red}"] = _grad_rel(lambda v, red=red: losses.cross_entropy(v, labels, red),
                                                ce_grad, z, 0, False)
        out[f"half_mse {red}"] = _grad_rel(lambda v, red=red: losses.half_mse(v, t, red),
                                           losses.half_mse_grad(ctx.to(z), ctx.to(t), red), z, 0, False)
    fb = {}
    for label, net in _networks():
        if label in ("m1-tanh-jmc", "m5-elu-paper") and ctx.quick:
            continue
        out.update({f"{label} {k}": v for k, v in _forward_cases(ctx, net, 8).items()})
        fb.update({f"{label} {blk}": v for blk, v in _feedback_cases(ctx, net, 9).items()})
    grads = {f"{k} {face}": v for k, d in fb.items() for face, v in d.items() if face != "fused_vs_naive"}
    grads.update(out)
    fused = {k: d["fused_vs_naive"] for k, d in fb.items()}
    checks = [Check(f"worst relative error, {len(grads)} gradients", worst(grads.values()), le(1e-7)),
              Check("L-DRL fused vs naive (relative)", worst(fused.values()), le(1e-12))]
    return Outcome(checks, {"gradients": grads, "fused_vs_naive": fused})
