"""Tests of refdtp.theory.gauss_newton (float64) and meta-tests of its claims.

The claims live in verify/claims/drl.py and verify/claims/gauss_newton.py.

The linear algebra is checked against the literal formulas, the Jacobians against
refdtp.numerical finite differences, the GN updates against the identities of
docs/theory.md §5.2; the meta-tests plant errors and assert that the claims then FAIL.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdtp import networks
from refdtp.activations import get_activation
from refdtp.backend import to_backend, to_host
from refdtp.feedback import drl_grads
from refdtp.metrics import angle, relative_distance
from refdtp.numerical import fitted_slope, flat_params, numerical_jacobian
from refdtp.targets import propagate_targets
from refdtp.theory import gauss_newton as gn
from refdtp.theory import oracles
from verify.claims import drl as drl_claims
from verify.claims import gauss_newton as claims
from verify.registry import CLAIMS, Context

F64 = np.float64


def _matrix(seed, m, n):
    """A well-conditioned random m x n matrix (singular values in [0.5, 2])."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, m)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    k = min(m, n)
    S = np.zeros((m, n))
    S[:k, :k] = np.diag(rng.uniform(0.5, 2.0, k))
    return U @ S @ V.T


def _setup(net, seed=0, B=2, weights=None):
    rng = np.random.default_rng(seed)
    W, omega = net.init(seed, F64)
    if weights is not None:
        W = weights(rng, W)
    x = rng.standard_normal((B,) + tuple(net.in_shape))
    trace = net.forward(W, x)
    e = trace.s[-1] - rng.standard_normal(trace.s[-1].shape)
    return W, omega, x, trace, e


def _upper(net, W, n):
    """s_n of one sample -> s_N of that sample, through blocks n+1..N."""
    def f(h):
        s = h[None]
        for b in net.blocks[n:]:
            s = b.forward(W[b.name], s)[0]
        return s[0]
    return f


# -- linear algebra ------------------------------------------------------------

@settings(deadline=None)
@given(m=st.integers(1, 5), n=st.integers(1, 5), lam=st.floats(1e-3, 10.0), seed=st.integers(0, 2 ** 16))
def test_damped_pinv_is_both_sides_of_the_push_through_identity(m, n, lam, seed):
    J = _matrix(seed, m, n)
    left = J.T @ np.linalg.solve(J @ J.T + lam * np.eye(m), np.eye(m))
    right = np.linalg.solve(J.T @ J + lam * np.eye(n), J.T)
    D = gn.damped_pinv(J, lam)
    assert relative_distance(left, right) <= 1e-12, "push-through identity violated by the solves"
    assert relative_distance(D, left) <= 1e-12, f"damped_pinv != J^T(JJ^T+lam I)^-1 ({m}x{n}, {lam})"


@settings(deadline=None)
@given(m=st.integers(1, 4), extra=st.integers(0, 3), seed=st.integers(0, 2 ** 16))
def test_pinv_is_a_right_inverse_for_full_row_rank(m, extra, seed):
    J = _matrix(seed, m, m + extra)
    P = gn.damped_pinv(J)
    assert np.abs(J @ P - np.eye(m)).max() <= 1e-12
    assert relative_distance(P, np.linalg.pinv(J)) <= 1e-12


def test_large_damping_gives_the_scaled_transpose():
    J = _matrix(1, 3, 5)
    lam = 1e4 * np.linalg.norm(J, 2) ** 2
    assert angle(lam * gn.damped_pinv(J, lam), J.T) < 0.01, "lambda J^T(JJ^T+lambda)^-1 should -> J^T"
    assert angle(gn.damped_pinv(J, 1e-2), J.T) > 1.0, "control: small damping is not the transpose"


def test_small_damping_approaches_the_pseudo_inverse_linearly():
    J = _matrix(2, 3, 5)
    smin2 = np.linalg.svd(J, compute_uv=False)[-1] ** 2
    lams = smin2 * np.array([1e-3, 1e-4, 1e-5, 1e-6])
    errors = [relative_distance(gn.damped_pinv(J, lam), np.linalg.pinv(J)) for lam in lams]
    assert 0.95 <= fitted_slope(lams, errors) <= 1.05, errors


def test_rank_deficient_pinv_drops_tiny_singular_values():
    J = _matrix(3, 4, 4)
    J[:, -1] = J[:, 0]  # rank 3
    assert relative_distance(gn.damped_pinv(J), np.linalg.pinv(J, rcond=1e-12)) <= 1e-10


def test_gn_direction_reaches_the_output_target_with_minimum_norm():
    J = np.stack([_matrix(s, 3, 5) for s in range(4)])
    e = np.random.default_rng(0).standard_normal((4, 3))
    d = gn.gn_direction(J, e)
    assert np.abs(np.einsum("bmn,bn->bm", J, d) - e).max() <= 1e-12, "J J^+ e != e"
    null = np.eye(5) - np.linalg.pinv(J[0]) @ J[0]
    assert np.linalg.norm(null @ d[0]) <= 1e-12 * np.linalg.norm(d[0]), "GN step not in the row space"


def test_nullspace_ratio_of_row_space_and_planted_null_components():
    Jt = _matrix(4, 6, 15)[:5]  # 5 x 15: a 10-dim null space
    rng = np.random.default_rng(0)
    row = Jt.T @ rng.standard_normal(5)
    null = (np.eye(15) - np.linalg.pinv(Jt) @ Jt) @ rng.standard_normal(15)
    assert gn.nullspace_ratio(Jt, row) <= 1e-12
    v = row + null
    assert abs(gn.nullspace_ratio(Jt, v) - np.linalg.norm(null) / np.linalg.norm(v)) <= 1e-12


def test_antithetic_noise_has_the_gaussian_second_moment():
    eps = oracles.antithetic_design((2, 3), 0.1, mean_covariance=True).reshape(12, 6)
    assert np.abs(eps.T @ eps / len(eps) - 0.01 * np.eye(6)).max() <= 1e-15
    assert np.abs(eps.sum(0)).max() == 0.0


# -- Jacobians against finite differences ----------------------------------------

@pytest.mark.parametrize("make", [lambda: networks.mlp((5, 4, 4, 3), "tanh"),
                                  lambda: networks.small_convnet(pool="avg")],
                         ids=["mlp", "small_convnet"])
def test_total_jacobians_match_finite_differences(make):
    net = make()
    W, _, _, trace, _ = _setup(net, B=2)
    J = gn.total_jacobians(net, W, trace)
    assert np.abs(J[-1] - np.eye(J[-1].shape[1])).max() == 0.0
    for n in range(len(net)):
        for b in range(2):
            fd = numerical_jacobian(_upper(net, W, n), trace.s[n][b])
            assert relative_distance(J[n][b], fd) <= 1e-7, f"J_{n} sample {b}"


def test_pre_jacobians_are_total_jacobians_times_the_activation_derivative():
    net = networks.mlp((5, 4, 4, 3), "tanh")
    W, _, _, trace, _ = _setup(net)
    J = gn.total_jacobians(net, W, trace)
    P = gn.pre_jacobians(net, W, trace, J)
    for n in range(1, len(net)):
        D = 1 - to_host(trace.s[n]) ** 2
        assert relative_distance(P[n], J[n] * D[:, None, :]) <= 1e-14
    assert relative_distance(P[-1], J[-1]) == 0.0  # linear output block


def test_param_jacobian_matches_finite_differences():
    net = networks.mlp((4, 3, 2), "tanh")
    W, _, x, trace, _ = _setup(net, B=3)
    for n, b in enumerate(net.blocks, start=1):
        vec, unflatten = flat_params(W[b.name])

        def output(v, name=b.name, unflatten=unflatten):
            """The network output as a function of block ``name``'s flattened parameters."""
            return net.forward({**W, name: unflatten(v)}, x).s[-1]
        fd = numerical_jacobian(output, vec)
        assert relative_distance(gn.param_jacobian(net, W, trace, n), fd) <= 1e-7, b.name


def test_feedback_composite_is_the_jacobian_of_difference_target_propagation():
    net = networks.mlp((5, 4, 4, 3), "tanh", feedback="paper")
    W, omega, _, trace, _ = _setup(net, B=1)

    def targets_of(n):
        """The map tN -> t_n of difference target propagation (one sample)."""
        def target(tN):
            return propagate_targets(net, omega, trace, tN[None])[n][0]
        return target

    for n in (1, 2):
        fd = numerical_jacobian(targets_of(n), trace.s[-1][0])
        assert relative_distance(oracles.feedback_composite(net, omega, trace, n)[0], fd) <= 1e-7


# -- GN updates ------------------------------------------------------------------

def test_gnt_pre_equals_block_gn_up_to_the_input_norm_for_one_sample():
    net = networks.mlp((6, 5, 4, 3), "tanh")
    W, _, _, trace, e = _setup(net, B=1)
    beta = 0.3
    pre = gn.gnt_pre_grads(net, W, trace, e, beta)
    block = gn.block_gn_grads(net, W, trace, e)
    post, _ = gn.gnt_post_grads(net, W, trace, e, beta)
    for n, b in enumerate(net.blocks, start=1):
        h = trace.s[n - 1][0]
        ratio = np.linalg.norm(gn.flatten_update(pre[b.name], W[b.name])) / np.linalg.norm(
            gn.flatten_update(block[b.name], W[b.name]))
        assert angle(pre[b.name], block[b.name]) < 1e-6, b.name
        assert abs(ratio / (beta * (h @ h + 1)) - 1) <= 1e-10, b.name
    assert angle(post["fc_0"], block["fc_0"]) > 0.1, "GNT-post should differ from block-GN on a tanh layer"


def test_gnt_post_is_the_dtp_update_of_the_gn_targets_and_bp_and_gn_are_row_space_updates():
    net = oracles.linear_feedback_mlp((6, 6, 5, 3), None)
    W, omega, _, trace, e = _setup(net, B=4)
    oracle = oracles.greedy_drl_feedback(net, W, omega, trace, 0.0)
    dtp, _ = gn.dtp_grads_for_error(net, W, oracle, trace, e, 1e-3)
    gnt, targets = gn.gnt_post_grads(net, W, trace, e, 1e-3)
    J = gn.total_jacobians(net, W, trace)
    for n in range(1, len(net) + 1):
        moved = np.einsum("bmn,bn->bm", J[n], to_host(targets[n] - trace.s[n]).reshape(4, -1))
        assert np.abs(moved + 1e-3 * e).max() <= 1e-13, "GN targets must move the output by -beta e"
    assert angle(dtp, gnt) < 1e-6
    for update in (gnt, gn.bp_grads_for_error(net, W, trace, e), gn.block_gn_grads(net, W, trace, e)):
        assert max(gn.nullspace_ratios(net, W, trace, update).values()) <= 1e-10
    pinv, _ = gn.dtp_grads_for_error(net, W, oracles.layerwise_pinv_feedback(net, W), trace, e, 1e-3)
    assert gn.nullspace_ratios(net, W, trace, pinv)["fc_0"] > 0.05


# -- oracle feedback -------------------------------------------------------------

def test_exact_inverse_feedback_inverts_every_block():
    net = oracles.exact_inverse_mlp((4, 4, 4), "tanh")
    W, _, _, trace, _ = _setup(net, weights=claims._near_identity)
    omega = oracles.exact_inverse_feedback(net, W)
    for n, b in enumerate(net.blocks, start=1):
        back = b.feedback(omega[b.name], trace.s[n], b.route(trace.caches[n - 1]))[0]
        assert relative_distance(back, trace.s[n - 1]) <= 1e-13


def test_inverse_activation_derivative_matches_finite_differences():
    act = oracles.inverse_activation(get_activation("tanh"))
    y = np.linspace(-0.9, 0.9, 7)
    fd = np.diag(numerical_jacobian(act.value, y))
    assert relative_distance(act.derivative(y, act.value(y)), fd) <= 1e-8


@pytest.mark.parametrize("wd", [0.0, 0.2])
def test_drl_closed_form_is_a_stationary_point_of_drl_grads_and_the_greedy_oracle(wd):
    net = oracles.linear_feedback_mlp((6, 5, 4, 3), None)
    W, omega, x, trace, _ = _setup(net, B=3)
    sigma = 0.05
    solved = oracles.drl_closed_form_all(net, W, omega, x, sigma, wd)
    oracle = oracles.greedy_drl_feedback(net, W, omega, trace, wd / 2)
    for n in range(len(net), 1, -1):
        name = net.blocks[n - 1].name
        x_rep, eps = oracles.antithetic_batch(x, net.blocks[n - 1].in_shape, sigma)
        g, _ = drl_grads(net, W, solved, net.forward(W, x_rep), n, eps, sigma)
        total = gn.flatten_update({k: g[k] + wd * solved[name][k] for k in g}, g)
        assert np.linalg.norm(total) <= 1e-12, f"block {n}: gradient {np.linalg.norm(total)}"
        assert relative_distance(solved[name]["weight"], oracle[name]["weight"]) <= 1e-10


def test_drl_closed_form_rejects_nonlinear_feedback_heads():
    net = networks.small_convnet(pool="avg")
    W, omega, x, trace, _ = _setup(net, B=1)
    with pytest.raises(ValueError, match="must end with its weight op"):
        oracles.drl_closed_form(net, W, omega, trace, 2, 0 * trace.s[1], 0.1, 0.0)


def test_functions_run_on_the_array_backend(xp):
    """Backend arrays in, same numbers out (the cupy case runs only with a GPU)."""
    name = "numpy" if xp is np else "cupy"
    net = oracles.linear_feedback_mlp((5, 4, 3), "tanh")
    W, omega, x, trace, e = _setup(net, B=2)
    Wd = {k: {p: to_backend(a, name) for p, a in v.items()} for k, v in W.items()}
    trace_d = net.forward(Wd, to_backend(x, name))
    e_d = to_backend(e, name)
    host, _ = gn.gnt_post_grads(net, W, trace, e, 0.1)
    dev, _ = gn.gnt_post_grads(net, Wd, trace_d, e_d, 0.1)
    assert relative_distance(dev, host) <= 1e-12
    block_d, block_h = gn.block_gn_grads(net, Wd, trace_d, e_d), gn.block_gn_grads(net, W, trace, e)
    assert relative_distance(block_d, block_h) <= 1e-12
    om_d = oracles.drl_closed_form_all(net, Wd, {k: {p: to_backend(a, name) for p, a in v.items()}
                                            for k, v in omega.items()}, to_backend(x, name), 0.01, 0.2)
    om_h = oracles.drl_closed_form_all(net, W, omega, x, 0.01, 0.2)
    assert relative_distance(om_d, om_h) <= 1e-10


# -- the claims pass, and fail on planted errors ---------------------------------

IDS = ["drl-damped-pinv", "drl-sigma-rate", "drl-gauss-newton", "gn-exact-inverse", "gn-nullspace",
       "gnt-pre-block-gn", "drl-vs-ldrl-toy"]


def _run(cid):
    outcome = CLAIMS[cid].run(Context())
    failed = [c.name for c in outcome.checks if not c.passed]
    return outcome, failed


@pytest.mark.parametrize("cid", IDS)
def test_claim_passes_with_every_number_recorded(cid):
    outcome, failed = _run(cid)
    assert outcome.checks and not failed, f"{cid}: failed checks {failed}"
    assert all(isinstance(c.value, float) and math.isfinite(c.value) for c in outcome.checks)
    assert outcome.data, f"{cid}: no data recorded"


def test_planted_wrong_lambda_eff_fails(monkeypatch):
    monkeypatch.setattr(drl_claims, "lambda_eff", lambda wd: wd)  # TF20-style guess, not refdtp's wd/2
    _, failed = _run("drl-damped-pinv")
    assert any("top composite vs damped pinv" in f for f in failed), failed
    _, failed = _run("drl-sigma-rate")
    assert any("M1t top" in f for f in failed), failed


def test_planted_transposed_feedback_fails(monkeypatch):
    def transposed(net, W, omega, x, sigma, wd, rcond=gn.RCOND):
        return oracles.transpose_feedback(net, W)
    monkeypatch.setattr(oracles, "drl_closed_form_all", transposed)
    _, failed = _run("drl-gauss-newton")
    assert any("angle(DTP-DRL, GNT-post)" in f for f in failed), failed


def test_planted_drl_gradient_scale_fails(monkeypatch):
    def doubled(*args, **kwargs):
        g, loss = drl_grads(*args, **kwargs)
        return {k: 2 * v for k, v in g.items()}, loss
    monkeypatch.setattr(drl_claims, "drl_grads", doubled)
    _, failed = _run("drl-damped-pinv")
    assert any("stationarity" in f for f in failed) and any("SGD" in f for f in failed), failed


def test_planted_gaussian_noise_design_breaks_the_sigma_rate(monkeypatch):
    rng = np.random.default_rng(0)

    def gaussian_design(shape, sigma, mean_covariance):
        return sigma * rng.standard_normal((200,) + tuple(shape))
    monkeypatch.setattr(oracles, "antithetic_design", gaussian_design)
    _, failed = _run("drl-sigma-rate")
    assert any("slope" in f for f in failed), failed


def test_planted_perturbed_inverse_fails(monkeypatch):
    exact = oracles.exact_inverse_feedback

    def perturbed(net, W):
        return exact(net, {k: {**v, "weight": v["weight"] + 1e-3} for k, v in W.items()})
    monkeypatch.setattr(oracles, "exact_inverse_feedback", perturbed)
    _, failed = _run("gn-exact-inverse")
    assert any("slope" in f for f in failed) and any("oracle" in f for f in failed), failed


def test_planted_gn_feedback_in_place_of_layerwise_pinv_fails(monkeypatch):
    monkeypatch.setattr(oracles, "layerwise_pinv_feedback",
                        lambda net, W, rcond=gn.RCOND: oracles.transpose_feedback(net, W))
    _, failed = _run("gn-nullspace")
    assert failed == ["layer-wise pinv DTP, layer 1: min null-space ratio"], failed


def test_planted_post_activation_targets_break_the_block_gn_identity(monkeypatch):
    monkeypatch.setattr(gn, "gnt_pre_grads", lambda *a, **k: gn.gnt_post_grads(*a, **k)[0])
    _, failed = _run("gnt-pre-block-gn")
    assert any("angle(GNT-pre, block-GN)" in f for f in failed), failed
