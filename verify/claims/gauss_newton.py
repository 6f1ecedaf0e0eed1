"""Gauss-Newton claims of Meulemans et al. 2020 (arXiv 2006.14331) that need no DRL training:
exact inverses give GN targets, layer-wise pseudo-inverses leak into the null space, GNT-pre
equals block-diagonal GN, and DRL and L-DRL targets differ (GN vs BP). The networks and
conventions are those of :mod:`verify.gn_common`.
"""
from __future__ import annotations

import numpy as np

from refdtp.metrics import angle, relative_distance
from refdtp.optim import SGD
from refdtp.theory import gauss_newton as gn
from refdtp.theory import oracles
from verify import plots
from verify.gn_common import BETAS, M1, M3, SOURCE, Problem, _loglog_fit, problem
from verify.registry import Check, Outcome, claim, ge, gt, le, lt, within

# -- 12. exact inverses give GN targets; layer-wise pinv leaks into the null space --

def _near_identity(rng, W: dict) -> dict:
    """M3 (docs/theory.md §1.3): W_n = I + 0.1 N(0, 1), b_n = 0.1 N(0, 1)."""
    return {k: {"weight": np.eye(len(v["weight"])) + 0.1 * rng.standard_normal(v["weight"].shape),
                "bias": 0.1 * rng.standard_normal(v["bias"].shape)} for k, v in W.items()}


def plot_beta(data: dict, directory: str) -> list:
    series = {"layer 1, batch-mean angle (deg)": (data["betas"], data["angle_deg"]),
              "layer 1, worst-sample angle (deg)": (data["betas"], data["max_angle_deg"]),
              "layer 2 (affine inverse), rel. error":
                  (data["betas"], np.maximum(data["affine_error"], 1e-18)),
              }
    return [plots.loglog(directory, "tp_exact_inverse_beta.png", series, "beta",
                         "angle to GN target / relative error",
                         "M3: exact-inverse TP vs Gauss-Newton targets",
                         {"layer 1, batch-mean angle (deg)": data["slope"]}, reference_slope=1.0)]


@claim("gn-exact-inverse",
       "Target propagation with exact inverses on an invertible net (M3: 4-4-4-4 tanh, W = I + "
       "small random) gives Gauss-Newton targets to O(beta): slope 1, < 0.01 deg at beta = 1e-4",
       f"{SOURCE} sec. 3, early lemma/theorem on invertible nets (recalled); docs/theory.md §5.3", "rate",
       plot=plot_beta)
def gn_exact_inverse(ctx) -> Outcome:
    net = oracles.exact_inverse_mlp(M3, "tanh")
    p = problem(ctx, 30, net, B=16, weights=_near_identity)
    omega = oracles.exact_inverse_feedback(net, p.W)
    s = p.trace.s
    inverse_error = max(
        relative_distance(b.feedback(omega[b.name], s[n], b.route(p.trace.caches[n - 1]))[0], s[n - 1])
        for n, b in enumerate(net.blocks, start=1))
    angles, worst, affine = [], [], []
    for beta in BETAS:
        _, t = gn.dtp_grads_for_error(net, p.W, omega, p.trace, p.e, beta)
        ref = gn.gn_targets(net, p.W, p.trace, p.e, beta, 0.0, p.J)
        per_sample = [angle(t[1][i] - s[1][i], ref[1][i] - s[1][i]) for i in range(len(s[0]))]
        angles.append(float(np.mean(per_sample)))  # TF20's batch-averaged GN activation angle
        worst.append(max(per_sample))
        affine.append(relative_distance(t[2] - s[2], ref[2] - s[2]))
    fit = [i for i, b in enumerate(BETAS) if 1e-5 <= b <= 1e-2]
    slope = _loglog_fit([BETAS[i] for i in fit], [angles[i] for i in fit])
    checks = [Check("oracle: max ||G_n(s_n) - s_{n-1}|| / ||s_{n-1}||", inverse_error, le(1e-12)),
              Check("layer 1: mean angle to GN target at beta=1e-4", angles[BETAS.index(1e-4)],
                    lt(0.01), "°"),
              Check("layer 1: slope in beta over [1e-5, 1e-2]", slope, within(0.9, 1.1)),
              Check("layer 2 (affine inverse): max rel. error over beta", max(affine), le(1e-8))]
    return Outcome(checks, {"betas": BETAS, "angle_deg": angles, "max_angle_deg": worst,
                            "affine_error": affine, "slope": slope, "inverse_error": inverse_error,
                            "batch": len(s[0])})


@claim("gn-nullspace",
       "Layer-wise pseudo-inverse feedback (plain DTP's local optimum) on a non-invertible linear "
       "net (6-6-5-3) puts a large part of the layer-1 update into the null space of J_theta; "
       "BP, GNT-post, block-GN and oracle (greedy-pinv, transpose) updates do not (<= 1e-10)",
       f"{SOURCE} sec. 3, DTP is not GN for non-invertible nets (recalled); docs/theory.md §5.4", "exact")
def gn_nullspace(ctx) -> Outcome:
    leak, clean, gn_angle = [], [], []
    draws = 4 if ctx.quick else 16
    for d in range(draws):
        for B in (1, 4):
            p = problem(ctx, 40 + d, oracles.linear_feedback_mlp((6, 6, 5, 3), None), B=B)
            beta, first = 1e-3, p.net.blocks[0].name
            pinv, targets = gn.dtp_grads_for_error(p.net, p.W, oracles.layerwise_pinv_feedback(p.net, p.W),
                                                   p.trace, p.e, beta)
            gnt, gn_t = gn.gnt_post_grads(p.net, p.W, p.trace, p.e, beta, 0.0, p.J)
            oracle_feedback = [oracles.greedy_drl_feedback(p.net, p.W, p.omega, p.trace, 0.0),
                               oracles.transpose_feedback(p.net, p.W)]
            updates = [gnt, gn.bp_grads_for_error(p.net, p.W, p.trace, p.e),
                       gn.block_gn_grads(p.net, p.W, p.trace, p.e)]
            updates += [gn.dtp_grads_for_error(p.net, p.W, o, p.trace, p.e, beta)[0] for o in oracle_feedback]
            leak.append(gn.nullspace_ratios(p.net, p.W, p.trace, pinv)[first])
            clean.append(max(max(gn.nullspace_ratios(p.net, p.W, p.trace, u).values()) for u in updates))
            gn_angle.append(angle(targets[1] - p.trace.s[1], gn_t[1] - p.trace.s[1]))
    checks = [Check("layer-wise pinv DTP, layer 1: min null-space ratio", min(leak), ge(0.1)),
              Check("BP/GNT/block-GN/oracles: max null-space ratio", max(clean), le(1e-10))]
    return Outcome(checks, {"pinv_ratio": leak, "pinv_ratio_median": float(np.median(leak)),
                            "other_max_ratio": clean, "pinv_target_angle_to_gn_deg": gn_angle,
                            "reference_ratio_theory_md": 0.98})


# -- block-diagonal GN identity (B = 1) -----------------------------------------

@claim("gnt-pre-block-gn",
       "For B = 1, lambda = 0 the GNT-pre update equals the block-diagonal GN update up to the factor "
       "||h_{n-1}||^2 + 1 (bias); GNT-post differs (recorded)",
       "derived (docs/theory.md §5.2); Meulemans et al. 2020 GNT ~ block-GN theorem (recalled)", "exact")
def gnt_pre_block_gn(ctx) -> Outcome:
    p = problem(ctx, 50, oracles.linear_feedback_mlp(M1, "tanh"), B=1)
    beta = 1.0
    pre = gn.gnt_pre_grads(p.net, p.W, p.trace, p.e, beta, 0.0, p.J)
    post, _ = gn.gnt_post_grads(p.net, p.W, p.trace, p.e, beta, 0.0, p.J)
    block = gn.block_gn_grads(p.net, p.W, p.trace, p.e)
    angles, ratio_err, post_angles = [], [], []
    for n, b in enumerate(p.net.blocks, start=1):
        h = ctx.host(p.trace.s[n - 1])[0]
        ratio = (np.linalg.norm(gn.flatten_update(pre[b.name], p.W[b.name]))
                 / np.linalg.norm(gn.flatten_update(block[b.name], p.W[b.name])))
        angles.append(angle(pre[b.name], block[b.name]))
        ratio_err.append(abs(ratio / (beta * (h @ h + 1)) - 1))
        post_angles.append(angle(post[b.name], block[b.name]))
    checks = [Check("max angle(GNT-pre, block-GN)", max(angles), lt(1e-6), "°"),
              Check("max |norm ratio / (||h||^2 + 1) - 1|", max(ratio_err), le(1e-10))]
    return Outcome(checks, {"angles_deg": angles, "ratio_error": ratio_err,
                            "post_vs_block_gn_deg": post_angles})


# -- DRL vs L-DRL toy (docs/theory.md §6.5) -----------------------------------

def _ldrl_trained(ctx, p: Problem, sigma: float, steps: int) -> dict:
    """Top feedback trained by refdtp's SGD on ldrl_grads_naive over a frozen noise set with
    sum eps eps^T = sum eta eta^T (antithetic sets tiled to a common length)."""
    from refdtp.ldrl import ldrl_grads_naive
    block, n = p.net.blocks[-1], len(p.net)
    d_in, d_out = int(np.prod(block.in_shape)), int(np.prod(block.out_shape))
    eps = np.tile(oracles.antithetic_design(block.in_shape, sigma, mean_covariance=True), (d_out, 1))
    eta = np.tile(oracles.antithetic_design(block.out_shape, sigma, mean_covariance=True), (d_in, 1))
    x = ctx.xp.repeat(p.trace.s[n - 1][:1], len(eps), axis=0)  # linear block: one sample suffices
    y = ctx.xp.repeat(p.trace.s[n][:1], len(eps), axis=0)
    _, cache = block.forward(p.W[block.name], x)
    om, opt = p.omega[block.name], SGD(0.25 / sigma ** 2)
    state = opt.init_state(om)
    for _ in range(steps):
        g = ldrl_grads_naive(block, p.W[block.name], om, x, y, block.route(cache), ctx.to(eps), ctx.to(eta))
        om, state = opt.step(om, g, state)
    return {**p.omega, block.name: om}


def _toy_angles(ctx, p: Problem, beta: float, sigma: float) -> dict:
    drl = oracles.drl_closed_form_all(p.net, p.W, p.omega, p.x, sigma, 0.0)
    ldrl = _ldrl_trained(ctx, p, sigma, 60)
    s1 = p.trace.s[1]
    t_drl = gn.dtp_grads_for_error(p.net, p.W, drl, p.trace, p.e, beta)[1][1] - s1
    t_ldrl = gn.dtp_grads_for_error(p.net, p.W, ldrl, p.trace, p.e, beta)[1][1] - s1
    t_gn = gn.gn_targets(p.net, p.W, p.trace, p.e, beta, 0.0, p.J)[1] - s1
    t_bp = -beta * np.einsum("bmn,bm->bn", p.J[1], ctx.host(p.e))  # -beta dl/ds_1
    pairs = {"drl_gn": (t_drl, t_gn), "ldrl_bp": (t_ldrl, t_bp), "drl_ldrl": (t_drl, t_ldrl)}
    per = {key: [angle(a[i], b[i]) for i in range(len(t_bp))] for key, (a, b) in pairs.items()}
    return {"drl_gn": max(per["drl_gn"]), "ldrl_bp": max(per["ldrl_bp"]), "per_sample": per,
            "drl_ldrl_mean": float(np.mean(per["drl_ldrl"])), "drl_ldrl_max": max(per["drl_ldrl"])}


def _top_singular_values(values):
    """Weights with the top weight W_2 = U diag(values) V^T (U, V random orthonormal)."""
    def build(rng, W: dict) -> dict:
        shape = W["fc_1"]["weight"].shape
        U, _ = np.linalg.qr(rng.standard_normal((shape[0], shape[0])))
        V, _ = np.linalg.qr(rng.standard_normal((shape[1], shape[0])))
        return {**W, "fc_1": {**W["fc_1"], "weight": U @ np.diag(values) @ V.T}}
    return build


@claim("drl-vs-ldrl-toy",
       "On a linear 8-8-3 net, DRL feedback gives GN targets -beta J^+ e and L-DRL feedback BP "
       "targets -beta J^T e: they differ (> 5 deg) unless J J^T is proportional to I",
       "Ernoult et al. 2022 sec. 4 vs Meulemans et al. 2020 sec. 4 (recalled); docs/theory.md §6.5",
       "angle")
def drl_vs_ldrl_toy(ctx) -> Outcome:
    beta, sigma, net = 1e-4, 1e-2, oracles.linear_feedback_mlp((8, 8, 3), None)
    spread = problem(ctx, 60, net, B=8, weights=_top_singular_values([1.0, 0.5, 0.25]))
    equal = problem(ctx, 61, net, B=8, weights=_top_singular_values([1.7, 1.7, 1.7]))
    generic, ortho = _toy_angles(ctx, spread, beta, sigma), _toy_angles(ctx, equal, beta, sigma)
    checks = [Check("max DRL target vs GN target", generic["drl_gn"], lt(1e-6), "°"),
              Check("max L-DRL target vs BP target", generic["ldrl_bp"], lt(1e-6), "°"),
              Check("mean DRL vs L-DRL target angle, s(J) = 1, 1/2, 1/4", generic["drl_ldrl_mean"],
                    gt(5.0), "°"),
              Check("max DRL vs L-DRL target angle, J J^T = 1.7^2 I", ortho["drl_ldrl_max"], lt(1e-6), "°")]
    return Outcome(checks, {"generic": generic, "orthogonal": ortho})
