"""Tests of refdtp.metrics: angles, distances, DTP-vs-BP, JMC errors, weight alignment."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdtp import metrics, networks
from refdtp.backend import host_rng, to_backend
from refdtp.numerical import numerical_jacobian

F64 = np.float64


def _orthogonal_pair(seed: int, n: int):
    """A random vector a and a unit vector u orthogonal to it."""
    rng = host_rng(seed, 1)
    a, u = rng.standard_normal(n), rng.standard_normal(n)
    u -= (u @ a) / (a @ a) * a
    return a, u / np.linalg.norm(u)


# -- angle and distance -----------------------------------------------------

@settings(deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(2, 50),
       log_theta=st.floats(-12, -1), scale=st.floats(1e-3, 1e3))
def test_tiny_angles_are_resolved(seed, n, log_theta, scale):
    a, u = _orthogonal_pair(seed, n)
    theta = 10.0 ** log_theta  # radians
    b = scale * (a + math.tan(theta) * np.linalg.norm(a) * u)
    got = metrics.angle(a, b, degrees=False)
    assert got == pytest.approx(theta, rel=1e-6), f"angle {got} != {theta}"


def test_angle_of_1e_minus_7_degrees_is_not_rounded_to_zero():
    a, u = _orthogonal_pair(3, 10)
    theta = math.radians(1e-7)
    b = a + math.tan(theta) * np.linalg.norm(a) * u
    assert metrics.angle(a, b) == pytest.approx(1e-7, rel=1e-6)
    # The arccos form cannot see it (docs/theory.md §10.1): the metric must not be it.
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert abs(math.degrees(math.acos(min(1.0, cos))) - 1e-7) > 1e-8


@pytest.mark.parametrize("b, expected", [([2.0, 0.0], 0.0), ([0.0, 3.0], 90.0), ([-1.0, 0.0], 180.0),
                                         ([1.0, 1.0], 45.0)])
def test_angle_landmarks(b, expected):
    assert metrics.angle(np.array([1.0, 0.0]), np.array(b)) == pytest.approx(expected, abs=1e-12)


@settings(deadline=None)
@given(seed=st.integers(0, 2**16), s=st.floats(1e-6, 1e6), t=st.floats(1e-6, 1e6))
def test_angle_is_scale_invariant_and_symmetric(seed, s, t):
    rng = host_rng(seed, 2)
    a, b = rng.standard_normal(7), rng.standard_normal(7)
    ref = metrics.angle(a, b)
    assert metrics.angle(s * a, t * b) == pytest.approx(ref, abs=1e-9)
    assert metrics.angle(b, a) == pytest.approx(ref, abs=1e-12)
    assert metrics.angle(-a, b) == pytest.approx(180.0 - ref, abs=1e-9)


def test_angle_and_distance_of_dicts_concatenate_by_sorted_key():
    rng = host_rng(0, 3)
    a = {"weight": rng.standard_normal((3, 2)), "bias": rng.standard_normal(3)}
    b = {"bias": rng.standard_normal(3), "weight": rng.standard_normal((3, 2))}
    va = np.concatenate([a["bias"], a["weight"].ravel()])
    vb = np.concatenate([b["bias"], b["weight"].ravel()])
    assert metrics.angle(a, b) == pytest.approx(metrics.angle(va, vb), abs=1e-12)
    assert metrics.relative_distance(a, b) == pytest.approx(np.linalg.norm(va - vb) / np.linalg.norm(vb))
    assert metrics.distance_angle(a, b) == {"angle": metrics.angle(a, b),
                                            "distance": metrics.relative_distance(a, b)}


def test_zero_vectors_give_nan_and_results_are_python_floats():
    assert math.isnan(metrics.angle(np.zeros(3), np.ones(3)))
    assert math.isnan(metrics.relative_distance(np.ones(3), np.zeros(3)))
    r = metrics.angle(np.ones(3, np.float32), np.arange(3, dtype=np.float32))
    assert type(r) is float and type(metrics.relative_distance(np.ones(2), np.ones(2))) is float


# -- fixtures ---------------------------------------------------------------

def _mlp(feedback, symmetric, seed=0):
    net = networks.mlp((6, 5, 4, 3), "tanh", feedback=feedback)
    W, omega = net.init(seed, F64, symmetric=symmetric)
    x = host_rng(seed, 4).standard_normal((5, 6))
    labels = host_rng(seed, 5).integers(0, 3, 5)
    return net, W, omega, x, labels


def _inputs(net, W, x):
    tr = net.forward(W, x)
    return {b.name: tr.s[n] for n, b in enumerate(net.blocks)}


# -- JMC error --------------------------------------------------------------

@pytest.mark.parametrize("method", ["exact", "probes"])
def test_jmc_error_is_exactly_zero_for_exact_jmc_feedback(method):
    net, W, omega, x, _ = _mlp("jmc", symmetric=True)
    ins = _inputs(net, W, x)
    for b in net.blocks[1:]:
        r = metrics.jmc_error(b, W[b.name], omega[b.name], ins[b.name], method, n_probes=3)
        assert r["error"] == 0.0, f"{b.name}: {r}"


def test_jmc_error_is_zero_for_small_convnet_with_phi_feedback_and_avg_pool_first():
    net = networks.small_convnet(pool="avg", pool_first=True, feedback="jmc")
    W, omega = net.init(1, F64, symmetric=True)
    x = host_rng(1, 6).standard_normal((3, 1, 6, 6))
    ins = _inputs(net, W, x)
    for b in net.blocks:
        r = metrics.jmc_error(b, W[b.name], omega[b.name], ins[b.name], "exact")
        assert r["error"] <= 1e-15, f"{b.name}: {r}"


@pytest.mark.parametrize("feedback, symmetric", [("jmc", False), ("paper", True), ("paper", False)])
def test_jmc_error_is_positive_otherwise(feedback, symmetric):
    net, W, omega, x, _ = _mlp(feedback, symmetric)
    ins = _inputs(net, W, x)
    hidden = net.blocks[1]  # fc_1 has a tanh: paper feedback V tanh(y) cannot match
    err = metrics.jmc_error(hidden, W[hidden.name], omega[hidden.name], ins[hidden.name], "exact")["error"]
    assert err > 1e-3, f"{feedback}/{symmetric}: {err}"


def test_block_jacobians_match_finite_differences():
    net = networks.small_convnet(pool="max", pool_first=False)
    W, omega = net.init(2, F64)
    x = host_rng(2, 7).standard_normal((2, 1, 6, 6))
    block = net.blocks[0]
    JF, JG = metrics.block_jacobians(block, W["conv_0"], omega["conv_0"], x)
    y, fc = block.forward(W["conv_0"], x)
    route = block.route(fc)
    for b in range(2):
        def f(v):
            return block.forward(W["conv_0"], v.reshape((1,) + block.in_shape))[0]

        def g(v, b=b):
            route_b = tuple(None if r is None else r[b:b + 1] for r in route)  # sample b's routing
            return block.feedback(omega["conv_0"], v.reshape((1,) + block.out_shape), route_b)[0]

        np.testing.assert_allclose(JF[b], numerical_jacobian(f, x[b].ravel()), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(JG[b], numerical_jacobian(g, y[b].ravel()), rtol=1e-6, atol=1e-8)
    exact = metrics.jmc_error_exact(block, W["conv_0"], omega["conv_0"], x)
    direct = np.linalg.norm(JG - JF.transpose(0, 2, 1)) / np.linalg.norm(JF)
    assert exact == pytest.approx(direct, rel=1e-12)


def test_randomized_estimate_agrees_with_exact_within_its_statistical_error():
    net, W, omega, x, _ = _mlp("paper", symmetric=False, seed=3)
    ins = _inputs(net, W, x)
    block = net.blocks[1]
    exact = metrics.jmc_error(block, W[block.name], omega[block.name], ins[block.name], "exact")["error"]
    ses = []
    for seed in range(4):
        est = metrics.jmc_error(block, W[block.name], omega[block.name], ins[block.name], "probes",
                                n_probes=400, seed=seed)
        assert abs(est["error"] - exact) <= 4 * est["stderr"], f"seed {seed}: {est} vs {exact}"
        ses.append(est["stderr"])
    few = metrics.jmc_error_probes(block, W[block.name], omega[block.name], ins[block.name], 25)[1]
    assert 0 < max(ses) < 0.1 * exact and few > 2 * max(ses), (ses, few)


def test_auto_method_is_exact_for_small_blocks_and_probes_for_large():
    net = networks.simple_vgg(channels=(4, 4, 4, 4, 4))
    W, omega = net.init(0, F64)
    x = host_rng(0, 8).standard_normal((2, 3, 32, 32))
    ins = _inputs(net, W, x)
    methods = {b.name: metrics.jmc_error(b, W[b.name], omega[b.name], ins[b.name])["method"]
               for b in net.blocks[1:]}
    assert methods == {"conv_1": "probes", "conv_2": "exact", "conv_3": "exact", "conv_4": "exact",
                       "fc": "exact"}, methods


# -- DTP vs BP, weights, report ------------------------------------------------

def test_dtp_vs_bp_is_exact_at_the_output_block_for_random_feedback():
    net, W, omega, x, labels = _mlp("paper", symmetric=False)
    out = metrics.dtp_vs_bp(net, W, omega, x, labels, beta=0.005, per_param=True)
    assert set(out) == set(net.names)
    last = out[net.names[-1]]
    assert last["angle"] < 1e-8 and last["distance"] < 1e-10, last
    assert set(last["params"]) == {"weight", "bias"}
    assert max(out[n]["angle"] for n in net.names[:-1]) > 20.0, out  # random feedback: not aligned


def test_dtp_vs_bp_with_exact_jmc_feedback_vanishes_with_beta():
    net, W, omega, x, labels = _mlp("jmc", symmetric=True)
    errors = [metrics.dtp_vs_bp(net, W, omega, x, labels, beta=b)["fc_0"]["distance"] for b in (1e-2, 1e-3)]
    assert errors[1] < errors[0] / 8 and errors[1] < 1e-3, errors


def test_weight_alignment_zero_for_symmetric_init_and_large_for_random():
    net = networks.small_convnet(pool="max", pool_first=False)
    for symmetric, ok in ((True, lambda r: r["angle"] == 0 and r["distance"] == 0),
                          (False, lambda r: 45 < r["angle"] < 135)):
        W, omega = net.init(0, F64, symmetric=symmetric)
        out = metrics.weight_alignment(net, W, omega)
        assert set(out) == {"conv_1", "fc"}
        assert all(ok(r) for r in out.values()), (symmetric, out)


def test_alignment_report_structure_and_float32(xp):
    net = networks.simple_vgg(channels=(4, 4, 4, 4, 4))
    W, omega = net.init(0, np.float32, backend="numpy")
    x = host_rng(0, 9).standard_normal((3, 3, 32, 32)).astype(np.float32)
    labels = host_rng(0, 10).integers(0, 10, 3)
    name = "cupy" if xp is not np else "numpy"
    def dev(t):
        return {k: {n: to_backend(a, name) for n, a in v.items()} for k, v in t.items()}

    rep = metrics.alignment_report(net, dev(W), dev(omega), to_backend(x, name), to_backend(labels, name),
                                   n_probes=2, per_param=True)
    assert set(rep) == {"dtp_vs_bp", "total", "jmc", "weights"}
    assert set(rep["dtp_vs_bp"]) == set(net.names)
    assert set(rep["jmc"]) == set(rep["weights"]) == set(net.names[1:])
    numbers = [rep["total"]["angle"], rep["total"]["distance"]]
    numbers += [v for r in rep["dtp_vs_bp"].values() for k, v in r.items() if k != "params"]
    numbers += [r["error"] for r in rep["jmc"].values()] + [r["angle"] for r in rep["weights"].values()]
    assert all(type(v) is float and math.isfinite(v) for v in numbers), rep
    assert rep["dtp_vs_bp"]["fc"]["angle"] < 0.05  # float32 floor (docs/theory.md §10.1)
    if name == "cupy":
        host = _dtp_angles(net, W, omega, x, labels)
        tol = float32_angle_tolerance(net, W, omega, x, labels)
        for n in net.names:
            got = rep["dtp_vs_bp"][n]["angle"]
            assert abs(got - host[n]) <= tol[n], (n, got, host[n], tol[n])


def _ulp_perturbed(tree, rng):
    """Every float of a (nested dict of) array(s) moved one ulp of its own dtype, in a random direction."""
    if isinstance(tree, dict):
        return {k: _ulp_perturbed(v, rng) for k, v in tree.items()}
    toward = np.where(rng.random(tree.shape) < 0.5, -np.inf, np.inf).astype(tree.dtype)
    return np.nextafter(tree, toward)


def _dtp_angles(net, W, omega, x, labels) -> dict:
    return {n: r["angle"] for n, r in metrics.dtp_vs_bp(net, W, omega, x, labels).items()}


def float32_angle_tolerance(net, W, omega, x, labels, seeds=range(4), safety=4.0, floor=1e-3) -> dict:
    """Per-block tolerance (degrees) for a float32 DTP-vs-BP angle computed on two backends.

    Error analysis: (1/beta) dW_DTP is a difference of feedback outputs divided by beta = 0.005, so
    float32 round-off (u = 6e-8) is amplified by ~1/beta times the block's conditioning; each
    backend's angle is off the exact (float64) angle by its own round-off e_b, and two backends
    differ by at most |e_1| + |e_2|. |e| is measured on the host, per block, as the larger of the
    float32-vs-float64 difference and the spread under 1-ulp changes of every input (seeds); the
    tolerance is ``safety`` (two backends, each up to twice the measured spread) times that, plus
    a floor. On tiny SimpleVGG it is ~0.1 deg for conv_0 and ~1e-3 deg for the last blocks.
    """
    def f64(t):
        return {k: {p: a.astype(F64) for p, a in v.items()} for k, v in t.items()}

    base = _dtp_angles(net, W, omega, x, labels)
    exact = _dtp_angles(net, f64(W), f64(omega), x.astype(F64), labels)
    err = {n: abs(base[n] - exact[n]) for n in net.names}
    for s in seeds:
        rng = np.random.default_rng(s)
        moved = _dtp_angles(net, _ulp_perturbed(W, rng), _ulp_perturbed(omega, rng), _ulp_perturbed(x, rng),
                            labels)
        err = {n: max(err[n], abs(moved[n] - base[n])) for n in net.names}
    return {n: safety * e + floor for n, e in err.items()}


def test_float32_angle_tolerance_covers_one_ulp_input_noise_and_catches_real_errors():
    # The CPU stand-in for a second backend: the same float32 maths on inputs moved by one ulp.
    net = networks.simple_vgg(channels=(4, 4, 4, 4, 4))
    W, omega = net.init(0, np.float32, backend="numpy")
    x = host_rng(0, 9).standard_normal((3, 3, 32, 32)).astype(np.float32)
    labels = host_rng(0, 10).integers(0, 10, 3)
    tol = float32_angle_tolerance(net, W, omega, x, labels)
    base = _dtp_angles(net, W, omega, x, labels)
    worst = {n: 0.0 for n in net.names}
    for s in range(10, 16):  # stand-in draws independent of the tolerance's own
        rng = np.random.default_rng(s)
        moved = _dtp_angles(net, _ulp_perturbed(W, rng), _ulp_perturbed(omega, rng), _ulp_perturbed(x, rng),
                            labels)
        worst = {n: max(worst[n], abs(moved[n] - base[n])) for n in net.names}
    assert all(worst[n] <= tol[n] for n in net.names), (worst, tol)
    assert max(worst.values()) > 1e-2, worst  # the former fixed abs=1e-2 would have failed the stand-in
    assert max(tol.values()) < 0.5, tol  # still catches a wrong formula (errors of degrees)


def test_jmc_error_rejects_an_unknown_method():
    net, W, omega, x, _ = _mlp("jmc", symmetric=True)
    with pytest.raises(ValueError, match="method"):
        metrics.jmc_error(net.blocks[1], W["fc_1"], omega["fc_1"], np.zeros((1, 5)), "fd")
