"""Small test networks, batches, noise designs and feedback trainers shared by the claims.

Everything is drawn on the host in float64 from the claim context's seeded
streams and moved to the context's backend with ``ctx.to`` / ``ctx.tree``, so
a claim measures the same numbers (to round-off) on NumPy and on CuPy.

Networks (docs/theory.md §1.3): ``m1`` (6-5-4-3 tanh MLP), ``c1`` (conv -> avg-pool
-> tanh, exact JMC possible), ``tiny_vgg`` (the paper's SimpleVGG blocks with
4 channels), ``tiny_lenet`` (LeNet's overlapping pools on a 4x4 input).
"""
from __future__ import annotations

import math

import numpy as np

from refdtp import feedback, ldrl, networks
from refdtp.backend import to_host
from refdtp.numerical import host64
from refdtp.ops import Act, Linear, MaxPool2d
from refdtp.optim import SGD
from refdtp.theory.oracles import antithetic_design

F64 = np.float64


# -- networks and data --------------------------------------------------------

def m1(feedback_kind: str = "jmc", activation: str = "tanh"):
    """M1 (docs/theory.md §1.3): 6-5-4-3, tanh hidden, linear output."""
    return networks.mlp((6, 5, 4, 3), activation, feedback=feedback_kind)


def c1(feedback_kind: str = "jmc"):
    """C1 (docs/theory.md §1.3): 1x6x6 -> conv 3x3 (2 ch) -> avg-pool 2 -> tanh -> conv -> tanh -> dense 3."""
    return networks.small_convnet(pool="avg", pool_first=True, feedback=feedback_kind)


def tiny_vgg():
    """The paper's SimpleVGG (conv 3x3 -> ELU -> max-pool 2, x5, then linear) with 4 channels."""
    return networks.simple_vgg(channels=(4, 4, 4, 4, 4))


def tiny_lenet():
    """The paper's LeNet on a 1x4x4 input (overlapping 3/2/1 max-pools)."""
    return networks.lenet(in_shape=(1, 4, 4))


def params(ctx, net, key: int, symmetric: bool = False) -> tuple[dict, dict]:
    """Host float64 (W, omega) with PyTorch's default init, seeded by (ctx.seed, key)."""
    seed = int(ctx.rng(key, 99).integers(2 ** 62))
    return net.init(seed, F64, "numpy", symmetric=symmetric)


def batch(rng: np.random.Generator, net, B: int) -> tuple[np.ndarray, np.ndarray]:
    """A host float64 N(0, 1) input batch and uniform random labels."""
    x = rng.standard_normal((B,) + tuple(net.in_shape))
    return x, rng.integers(0, net.num_classes, B)


def oracle_feedback(net, W: dict, omega: dict) -> dict:
    """omega with every feedback weight set to W_n (conv) or W_n^T (linear); biases kept.

    The feedback biases cancel in every difference, so they are left as they
    are (non-zero), unlike ``net.init(symmetric=True)`` which zeroes all biases.
    """
    out = {}
    for b in net.blocks:
        w = W[b.name]["weight"]
        out[b.name] = dict(omega[b.name])
        out[b.name]["weight"] = np.array(w.T if isinstance(b.G.param_op, Linear) else w, copy=True)
    return out


def block_inputs(net, W: dict, x) -> dict:
    """{block name: its input s_{n-1}} for the batch x."""
    trace = net.forward(W, x)
    return {b.name: trace.s[n] for n, b in enumerate(net.blocks)}


# -- kinks (docs/theory.md §9) ----------------------------------------------

def kink_margin(block, W: dict, x) -> float:
    """Distance of a block's forward pass from its nearest kink (host float64).

    min over the block's non-C^2 activations (ReLU, leaky ReLU, ELU) of |a|,
    and over its max-pools of the gap between the two largest window entries;
    inf for a smooth block. Finite differences need this well above the step.
    """
    margin = math.inf
    h = host64(x)
    for op in block.F.ops:
        p = {k: host64(v) for k, v in W.items()} if op.has_params else {}
        if isinstance(op, Act) and op.act.name.split("(")[0] in ("relu", "leaky_relu", "elu"):
            margin = min(margin, float(np.abs(h).min()))
        if isinstance(op, MaxPool2d):
            win = np.sort(pool_windows(op, h), axis=0)
            margin = min(margin, float((win[-1] - win[-2]).min()))
        h, _ = op.forward(p, h, None)
    return margin


def pool_windows(pool, x: np.ndarray) -> np.ndarray:
    """(k*k, B, C, Ho, Wo): the entries of every pooling window of x (padding -inf)."""
    k, s, p = pool.k, pool.stride, pool.padding
    _, Ho, Wo = pool.out_shape
    xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    return np.stack([xpad[:, :, i:i + s * (Ho - 1) + 1:s, j:j + s * (Wo - 1) + 1:s]
                     for i in range(k) for j in range(k)])


def smooth_batch(rng, net, W: dict, B: int, margin: float = 1e-4, tries: int = 50):
    """:func:`batch` re-drawn until every block's forward pass keeps ``margin`` from a kink."""
    for _ in range(tries):
        x, labels = batch(rng, net, B)
        ins = block_inputs(net, W, x)
        if all(kink_margin(b, W[b.name], ins[b.name]) > margin for b in net.blocks):
            return x, labels
    raise RuntimeError(f"no kink-free batch for {net.name} after {tries} draws")


# -- noise designs -----------------------------------------------------------

def tiled(x: np.ndarray, design: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x repeated once per design row, the design tiled once per sample): both (B*S, ...)."""
    S = design.shape[0]
    return np.repeat(x, S, axis=0), np.tile(design, (x.shape[0],) + (1,) * (design.ndim - 1))


def ldrl_expected(ctx, block, W: dict, omega: dict, x: np.ndarray, sigma: float, what: str = "grads"):
    """The expected L-DRL loss or gradient, by antithetic coordinate designs.

    The loss splits as L1(eps) + L2(eta) with L1(0) = L2(0) = 0, so
    E L = (1/B) sum_b [ 1/2 sum over the eps-design of L1 + 1/2 sum over the
    eta-design of L2 ] (:func:`antithetic_design`). The library averages over
    its batch of B*2n rows, so each part is its batch mean times n. For a
    linear block this is the exact Gaussian expectation; for a nonlinear block
    it agrees with it up to O(sigma^4) in the loss.

    Args:
        ctx: claim context (backend). x: host (B, *in_shape).
        what: "grads" (dict from ldrl_grads_fused, on ctx's backend) or "loss" (float).
    """
    Wd, od = ctx.tree(W), ctx.tree(omega)
    total = None
    for side in ("eps", "eta"):
        shape = block.in_shape if side == "eps" else block.out_shape
        n = math.prod(shape)
        xs, design = tiled(x, antithetic_design(shape, sigma))
        xs = ctx.to(xs)
        y, cache = block.forward(Wd, xs)
        route = block.route(cache)
        zeros_in = ctx.xp.zeros_like(xs)
        eps, eta = (ctx.to(design), ctx.xp.zeros_like(y)) if side == "eps" else (zeros_in, ctx.to(design))
        if what == "loss":
            part = n * float(to_host(ldrl.ldrl_loss(block, Wd, od, xs, y, route, eps, eta)))
            total = part if total is None else total + part
            continue
        u = ldrl.ldrl_constants(block, y, route)
        g, _ = ldrl.ldrl_grads_fused(block, Wd, od, xs, y, route, u, eps, eta)
        g = {k: n * v for k, v in g.items()}
        total = g if total is None else {k: total[k] + g[k] for k in g}
    return total


# -- quadratic feedback objectives --------------------------------------------

def quadratic_minimiser(grad_fn, omega: dict, key: str = "weight") -> dict:
    """Exact minimiser over omega[key] of a loss quadratic in it, from its gradient.

    The gradient g(p) = H p - r is affine, so r = -g(0) and H e_i = g(e_i) - g(0):
    1 + P calls of ``grad_fn`` (host dict -> dict of arrays), then one solve.
    Other entries of omega (the inert feedback bias) are kept.
    """
    w = np.asarray(omega[key], F64)
    P = w.size

    def g(vec):
        om = dict(omega)
        om[key] = vec.reshape(w.shape)
        return host64(grad_fn(om)[key]).ravel()

    g0 = g(np.zeros(P))
    H = np.empty((P, P))
    for i in range(P):
        e = np.zeros(P)
        e[i] = 1.0
        H[:, i] = g(e) - g0
    out = dict(omega)
    out[key] = np.linalg.solve(0.5 * (H + H.T), -g0).reshape(w.shape)
    return out


# -- SGD feedback training (as in training: fresh Gaussian noise every step) -----

def _grads(kind, block, Wd, od, x, y, route, u, eps, eta):
    if kind == "ldrl":
        return ldrl.ldrl_grads_fused(block, Wd, od, x, y, route, u, eps, eta)[0]
    return feedback.dtp_grads(block, Wd, od, x, eps)[0]


def curvature(ctx, kind: str, block, W: dict, omega: dict, x: np.ndarray, sigma: float, rng,
              iterations: int = 12) -> float:
    """Largest Hessian eigenvalue of a feedback loss (quadratic in omega) on frozen noise.

    Power iteration on H v = g(omega + v) - g(omega) over *all* feedback
    parameters (the DTP loss also curves in the bias, which L-DRL leaves
    inert), with one fixed noise draw over a 16-fold tiled batch. Used to set a
    stable SGD step (lr_scale / lambda).
    """
    xs = np.repeat(x, 16, axis=0)
    eps = ctx.to(sigma * rng.standard_normal(xs.shape))
    Wd, xd = ctx.tree(W), ctx.to(xs)
    y, cache = block.forward(Wd, xd)
    route = block.route(cache)
    eta = ctx.to(sigma * rng.standard_normal(tuple(y.shape)))
    u = ldrl.ldrl_constants(block, y, route) if kind == "ldrl" else None
    base = {k: np.asarray(v, F64) for k, v in omega.items()}
    g0 = _grads(kind, block, Wd, ctx.tree(base), xd, y, route, u, eps, eta)

    def hv(v: dict) -> dict:
        g1 = _grads(kind, block, Wd, ctx.tree({k: base[k] + v[k] for k in base}), xd, y, route, u, eps, eta)
        return {k: host64(g1[k] - g0[k]) for k in base}

    v = {k: rng.standard_normal(a.shape) for k, a in base.items()}
    lam = 0.0
    for _ in range(iterations):
        norm = math.sqrt(sum(float((a * a).sum()) for a in v.values()))
        v = {k: a / norm for k, a in v.items()}
        w = hv(v)
        lam = sum(float((v[k] * w[k]).sum()) for k in v)
        v = w
    return lam


def train_feedback(ctx, kind: str, block, W: dict, omega: dict, x: np.ndarray, sigma: float,
                   steps: int, rng, lr_scale: float = 0.5, checkpoints=(), monitor=None,
                   momentum: float = 0.0) -> tuple[dict, list]:
    """SGD on one block's feedback loss with fresh Gaussian noise, with iterate averaging.

    kind "ldrl": :func:`refdtp.ldrl.ldrl_grads_fused` (Ernoult et al.
    2022); "dtp": :func:`refdtp.feedback.dtp_grads` (vanilla DTP
    reconstruction). Steps use :class:`refdtp.optim.SGD` with
    lr = lr_scale / lambda_max (:func:`curvature`), so the same code works
    for every block and noise scale (the L-DRL gradient scales with sigma^2).
    The returned feedback is the Polyak average of the second half of the
    iterates; at each checkpoint step t, ``monitor(average of iterates
    t/2..t)`` is recorded.

    Args:
        ctx: context; x: host (B, *in_shape) block input; omega: host start point.
        rng: host generator for the noise.

    Returns:
        (averaged omega as host arrays, [(t, monitor value), ...]).
    """
    lam = curvature(ctx, kind, block, W, omega, x, sigma, rng)
    opt = SGD(lr_scale / lam, momentum=momentum)
    Wd, xd = ctx.tree(W), ctx.to(x)
    y, cache = block.forward(Wd, xd)
    route = block.route(cache)
    u = ldrl.ldrl_constants(block, y, route) if kind == "ldrl" else None
    om, state = ctx.tree(omega), opt.init_state(omega)
    marks = sorted(set(int(c) for c in checkpoints) | {steps})
    sums, history = {}, []  # sums[mark] accumulates iterates mark/2 < t <= mark
    for t in range(1, steps + 1):
        eps = ctx.to(sigma * rng.standard_normal(x.shape))
        eta = ctx.to(sigma * rng.standard_normal(tuple(y.shape)))
        om, state = opt.step(om, _grads(kind, block, Wd, om, xd, y, route, u, eps, eta), state)
        for m in marks:
            if m // 2 < t <= m:
                sums[m] = {k: sums[m][k] + om[k] for k in om} if m in sums else dict(om)
        if t in marks and monitor is not None and t != steps:
            history.append((t, monitor(_mean(sums.pop(t), t - t // 2))))
    final = _mean(sums[steps], steps - steps // 2)
    if monitor is not None:
        history.append((steps, monitor(final)))
    return final, history


def _mean(total: dict, count: int) -> dict:
    return {k: host64(v) / count for k, v in total.items()}
