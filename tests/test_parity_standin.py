"""The ``backend-parity`` claim's comparison, proven on the CPU with a stand-in second backend.

The stand-in is NumPy whose every float input is moved by one ulp
(:class:`verify.claims.parity.PerturbedContext`): a correct second backend differs from
NumPy by round-off, which this models. The comparison must pass it with a wide margin and
must fail a 1e-6 relative error planted at any group's largest entry. The previous
comparison (relative error per leaf, atol only as a floor under the denominator) failed
the stand-in: 6.7e-4 on the library numbers (limit 1e-10), 5e-3 on
``jmc-implies-gradient-matching``'s numbers (limit 1e-6).
"""
import copy
import math

import numpy as np
import pytest

import verify.theory  # noqa: F401  (registers every claim)
from verify.claims import parity as P
from verify.registry import Context


@pytest.fixture(scope="module")
def numbers():
    ref, standin = Context(), P.PerturbedContext()
    return {"library": (P.library_numbers(ref), P.library_numbers(standin), P.LIBRARY_TOL),
            "claims": (P.claim_quantities(ref), P.claim_quantities(standin), P.CLAIM_TOL)}


def _leaf_list(tree):
    return [v for _, v in P.leaves(tree)]


def planted(tree, rel):
    """A copy of ``tree`` whose largest-magnitude entry is multiplied by (1 + rel)."""
    flat = _leaf_list(tree)
    i = int(np.argmax([np.abs(v).max(initial=0.0) for v in flat]))
    j = int(np.argmax(np.abs(flat[i])))
    counter = iter(range(len(flat)))

    def rebuild(t):
        if isinstance(t, dict):
            return {k: rebuild(v) for k, v in t.items()}
        if isinstance(t, (list, tuple)):
            return type(t)(rebuild(v) for v in t)
        k = next(counter)
        if k != i:
            return t
        if hasattr(t, "shape"):
            out = np.array(t, dtype=np.float64, copy=True)
            out.reshape(-1)[j] *= 1 + rel
            return out
        return float(t) * (1 + rel)
    return rebuild(copy.deepcopy(tree))


def test_perturbed_context_moves_every_float_input_by_one_ulp_and_keeps_integers():
    ctx = P.PerturbedContext(seed=3)
    x = np.random.default_rng(0).standard_normal(1000)
    y = ctx.to(x)
    assert np.array_equal(np.abs(y - x), np.spacing(np.abs(x)))
    assert 0.4 < np.mean(y > x) < 0.6
    np.testing.assert_array_equal(ctx.to(x), y)  # the same input, the same perturbation
    labels = np.arange(5)
    np.testing.assert_array_equal(ctx.to(labels), labels)


@pytest.mark.parametrize("which", ["library", "claims"])
def test_one_ulp_standin_passes_with_a_wide_margin(numbers, which):
    a, b, tol = numbers[which]
    res = P.compare(a, b, tol)
    assert res["ratio"] < 0.02, res  # >= 50x inside the tolerance
    assert res["normwise"] > 0  # the stand-in did change the numbers


@pytest.mark.parametrize("which", ["library", "claims"])
def test_a_planted_1e6_relative_error_fails_in_every_group(numbers, which):
    a, b, tol = numbers[which]
    missed = []
    for group in a:
        bad = {**b, group: planted(b[group], 1e-6)}
        if P.compare(a, bad, tol)["ratio"] <= 1.0:
            missed.append(group)
    assert not missed, f"a 1e-6 relative error went unnoticed in {missed}"


def test_the_old_leafwise_relative_comparison_fails_the_standin(numbers):
    # Documents why the comparison changed: rounding noise around an exact 0 cannot agree relatively.
    a, b, _ = numbers["library"]
    worst = max(float((np.abs(u - v) / np.maximum(np.maximum(np.abs(u), np.abs(v)), 1e-12)).max())
                for (_, u), (_, v) in zip(P.leaves(a), P.leaves(b), strict=True))
    assert worst > 1e-10


def test_compare_backends_passes_the_standin_and_fails_a_scaled_input():
    ok = P.compare_backends(Context(), P.PerturbedContext())
    assert ok.passed, [(c.name, c.value) for c in ok.checks]

    class Scaled(Context):  # a "backend" with a 1e-6 relative error in every input
        def to(self, a):
            a = np.asarray(a)
            return super().to(a * (1 + 1e-6) if a.dtype.kind == "f" else a)
    bad = P.compare_backends(Context(), Scaled())
    assert not bad.passed and not bad.checks[0].passed


def test_compare_rejects_different_structures_and_handles_nan_and_zero_groups():
    with pytest.raises(ValueError, match="trees differ"):
        P.compare({"g": {"a": 1.0}}, {"g": {"b": 1.0}}, P.LIBRARY_TOL)
    tol = P.Tolerance(1e-9, 1e-9)
    assert P.compare({"g": [math.nan, 0.0]}, {"g": [math.nan, 0.0]}, tol)["ratio"] == 0.0
    assert P.compare({"g": [math.nan, 1.0]}, {"g": [1.0, 1.0]}, tol)["ratio"] == math.inf
    assert P.compare({"g": [0.0]}, {"g": [1e-300]}, tol)["ratio"] > 1.0
    # rounding noise around an exact 0, next to an O(1) entry of the same group, is fine
    assert P.compare({"g": [1.0, 1e-16]}, {"g": [1.0, -1e-16]}, tol)["ratio"] < 1.0


# -- the GPU parity tests' tolerances (tests/test_parity_gpu.py), same stand-in -----------------

def _ulp(tree, rng):
    """Every float array of a nested dict moved one ulp of its own dtype, in random directions."""
    if isinstance(tree, dict):
        return {k: _ulp(v, rng) for k, v in tree.items()}
    a = np.asarray(tree)
    if a.dtype.kind != "f":
        return a
    return np.nextafter(a, np.where(rng.random(a.shape) < 0.5, -np.inf, np.inf).astype(a.dtype))


def _feedback_case(dtype, net_name, n):
    import test_parity_gpu as T
    net, W, omega, x, _, rng = T.network_case(T.NETS[net_name], dtype)
    shapes = net.forward(W, x).s
    eps = (0.1 * rng.standard_normal(shapes[n - 1].shape)).astype(dtype)
    eta = (0.1 * rng.standard_normal(shapes[n].shape)).astype(dtype)
    host = T.feedback_outputs(net, W, omega, x, n, eps, eta, 0.1)
    r = np.random.default_rng(7)
    standin = T.feedback_outputs(net, _ulp(W, r), _ulp(omega, r), _ulp(x, r), n, _ulp(eps, r), _ulp(eta, r),
                                 0.1)
    return T, host, standin


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("net_name, n", [("simple_vgg", 2), ("lenet", 2)])
def test_gpu_parity_tolerances_pass_the_one_ulp_standin_and_fail_a_planted_error(net_name, n, dtype):
    T, host, standin = _feedback_case(dtype, net_name, n)
    T.assert_parity(host, standin, dtype, f"{net_name} block {n}")
    rel = 10 * T.TOL[np.dtype(dtype)]["rtol"]  # ten times the relative tolerance, at the largest entry
    bad = dict(standin, ldrl_fused=planted(standin["ldrl_fused"], rel))
    with pytest.raises(AssertionError):
        T.assert_parity(host, bad, dtype, f"{net_name} block {n}")
