"""Tests of refdtp.numerical: the checker passes on closed forms and FAILS on planted bugs."""
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refdtp import numerical as nm
from refdtp.numerical.core import _compare

FLOATS = {"min_value": -3.0, "max_value": 3.0, "allow_nan": False, "allow_infinity": False}


def _rng(*keys):
    return np.random.default_rng([20240917, *keys])


def _nonsymmetric(n, seed=0):
    a = _rng(seed).standard_normal((n, n))
    a[0, -1] += 2.0  # make sure A != A^T even for tiny draws
    return a


# ---------------------------------------------------------------- closed forms pass

@settings(deadline=None)
@given(m=st.integers(1, 5), n=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_linear_map_passes_every_face(m, n, seed):
    a = _rng(seed).standard_normal((m, n))
    x = _rng(seed, 1).uniform(-3, 3, n)

    def f(v):
        return a @ v

    nm.assert_allclose(nm.numerical_jacobian(f, x), a, name="J_num(A x)")
    nm.check_jacobian(lambda v: a, f, x)
    nm.check_vjp(f, lambda v, w: a.T @ w, x, seed=seed)
    nm.check_jvp(f, lambda v, u: a @ u, x, seed=seed)


@settings(deadline=None)
@given(x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=4),
                    elements=FLOATS),
       stencil=st.sampled_from([3, 5]), seed=st.integers(0, 100))
def test_elementwise_closed_forms_pass(x, stencil, seed):
    def f(v):
        return np.tanh(v) + v ** 2

    def df(v):
        return 1.0 - np.tanh(v) ** 2 + 2.0 * v

    opts = {"stencil": stencil}
    nm.check_vjp(f, lambda v, w: df(v) * w, x, seed=seed, **opts)
    nm.check_jvp(f, lambda v, u: df(v) * u, x, seed=seed, **opts)
    nm.check_jacobian(lambda v: np.diag(df(v).ravel()), f, x, **opts)
    nm.check_grad(lambda v: np.sum(f(v)), df, x, **opts)
    nm.check_grad(lambda v: np.sum(f(v)), df, x, directional=True, seed=seed, **opts)


@settings(deadline=None)
@given(x=hnp.arrays(np.float64, st.integers(1, 5), elements=FLOATS),
       scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_dot_product_tests_pass_at_any_input_scale(x, scale):
    # The directional step grows with |x| (see _directional), so |f| ~ x**2 ~ 1e7
    # does not drown the difference in round-off.
    x = x * scale
    nm.check_vjp(lambda v: v ** 2 + np.sin(v), lambda v, w: (2 * v + np.cos(v)) * w, x)
    nm.check_jvp(lambda v: v ** 2 + np.sin(v), lambda v, u: (2 * v + np.cos(v)) * u, x)


@settings(deadline=None)
@given(x=hnp.arrays(np.float64, st.integers(1, 6), elements=FLOATS))
def test_numerical_grad_of_sums(x):
    nm.assert_allclose(nm.numerical_grad(np.sum, x), np.ones_like(x), name="grad sum")
    nm.assert_allclose(nm.numerical_grad(lambda v: np.sum(v ** 2), x), 2 * x, name="grad x^2")


def test_numerical_jvp_scales_with_non_unit_direction():
    a, x, v = _nonsymmetric(4), np.arange(4.0), np.array([3.0, -1.0, 0.5, 10.0])
    nm.assert_allclose(nm.numerical_jvp(lambda z: a @ z, x, v), a @ v, name="J v")
    nm.assert_allclose(nm.numerical_jvp(np.sin, x, v), np.cos(x) * v, name="sin' v")
    assert np.all(nm.numerical_jvp(np.sin, x, np.zeros(4)) == 0)


def test_batched_input_and_scalar_output():
    w_mat = _rng(1).standard_normal((3, 4))
    x = _rng(2).standard_normal((2, 4))  # (batch, in)

    def layer(h):  # (batch, in) -> (batch, out)
        return np.tanh(h @ w_mat.T)

    def layer_vjp(h, g):
        return ((1 - layer(h) ** 2) * g) @ w_mat

    nm.check_vjp(layer, layer_vjp, x)
    nm.check_jvp(layer, lambda h, u: (1 - layer(h) ** 2) * (u @ w_mat.T), x)
    nm.check_vjp(lambda h: np.sum(layer(h)), lambda h, g: g * layer_vjp(h, np.ones((2, 3))), x)


def test_jacobian_accepts_out_plus_in_shaped_tensor():
    x = _rng(3).standard_normal((2, 3))
    tensor = np.zeros((2, 3, 2, 3))
    for idx in np.ndindex(2, 3):
        tensor[idx + idx] = np.cos(x[idx])
    nm.check_jacobian(tensor, np.sin, x)


def test_step_scales_with_large_coordinates():
    # At x = 1e10 an absolute step of 1e-6 is below ulp(x) ~ 2e-6: only the scaled
    # step eps*max(1, |x|) (and the exact applied offset) gives the derivative.
    x = np.array([1e10, -3e7, 0.5])
    nm.assert_allclose(nm.numerical_grad(lambda v: np.sum(v ** 2), x), 2 * x, name="grad")


def test_flat_params_round_trip_and_dict_gradient():
    params = {"W": _rng(4).standard_normal((2, 3)), "b": np.array([0.5, -1.0])}
    vec, unflatten = nm.flat_params(params)
    assert vec.shape == (8,) and vec.dtype == np.float64
    back = unflatten(vec)
    assert list(back) == ["W", "b"]
    assert all(np.array_equal(back[k], params[k]) for k in params)
    x = np.array([1.0, -2.0, 0.5])

    def loss(v):
        p = unflatten(v)
        return 0.5 * np.sum((np.tanh(p["W"] @ x) + p["b"]) ** 2)

    def grads(v):
        p = unflatten(v)
        h = np.tanh(p["W"] @ x)
        r = h + p["b"]
        return nm.flat_params({"W": np.outer(r * (1 - h ** 2), x), "b": r})[0]

    nm.check_grad(loss, grads, vec)
    with pytest.raises(ValueError, match="expected 8 values"):
        unflatten(np.zeros(7))
    empty, unflatten_empty = nm.flat_params({})
    assert empty.shape == (0,) and unflatten_empty(empty) == {}


# ---------------------------------------------------------------- meta-tests: planted bugs fail

def _defect_cases(face):
    """(f, wrong derivative, x) for the three planted bugs of one face."""
    a = _nonsymmetric(4)
    x = _rng(5).uniform(-2, 2, 4)
    b = _rng(6).standard_normal(4)

    def lin(v):
        return a @ v

    def xsq_sin(v):
        return v ** 2 + np.sin(v)

    def scalar_lin(v):
        return b @ (a @ v)

    def scalar_xsq_sin(v):
        return np.sum(xsq_sin(v))

    s = 1.0 + 1e-3
    if face == "vjp":
        return {"scaled": (lin, lambda v, w: s * (a.T @ w), x),
                "transposed": (lin, lambda v, w: a @ w, x),
                "missing_term": (xsq_sin, lambda v, w: 2 * v * w, x)}
    if face == "jvp":
        return {"scaled": (lin, lambda v, u: s * (a @ u), x),
                "transposed": (lin, lambda v, u: a.T @ u, x),
                "missing_term": (xsq_sin, lambda v, u: 2 * v * u, x)}
    if face in ("grad", "grad_directional"):
        return {"scaled": (scalar_lin, lambda v: s * (a.T @ b), x),
                "transposed": (scalar_lin, lambda v: a @ b, x),
                "missing_term": (scalar_xsq_sin, lambda v: 2 * v, x)}
    return {"scaled": (lin, lambda v: s * a, x),  # jacobian
            "transposed": (lin, lambda v: a.T, x),
            "missing_term": (xsq_sin, lambda v: np.diag(2 * v), x)}


def _faces(face, f, d, x):
    if face == "vjp":
        return (lambda: nm.check_vjp(f, d, x)), (lambda: nm.vjp_error(f, d, x))
    if face == "jvp":
        return (lambda: nm.check_jvp(f, d, x)), (lambda: nm.jvp_error(f, d, x))
    if face == "grad":
        return (lambda: nm.check_grad(f, d, x)), (lambda: nm.grad_error(f, d, x))
    if face == "grad_directional":
        return ((lambda: nm.check_grad(f, d, x, directional=True)),
                (lambda: nm.grad_error(f, d, x, directional=True)))
    return (lambda: nm.check_jacobian(d, f, x)), (lambda: nm.jacobian_error(d, f, x))


@pytest.mark.parametrize("defect", ["scaled", "transposed", "missing_term"])
@pytest.mark.parametrize("face", ["vjp", "jvp", "grad", "grad_directional", "jacobian"])
def test_checker_fails_on_planted_bug(face, defect):
    f, wrong, x = _defect_cases(face)[defect]
    check, error = _faces(face, f, wrong, x)
    with pytest.raises(AssertionError, match="worst index") as info:
        check()
    assert "eps=1e-06" in str(info.value) and "FAILED" in str(info.value)
    r = error()
    assert not r.passed and r.ratio > 1 and r.max_abs > 0 and r.norm_rel > 0
    assert str(r) == r.report() and "analytic:" in str(r)


@pytest.mark.parametrize("face", ["vjp", "jvp", "grad", "grad_directional", "jacobian"])
def test_checker_passes_the_correct_version_of_the_planted_bugs(face):
    a, b = _nonsymmetric(4), _rng(6).standard_normal(4)
    x = _rng(5).uniform(-2, 2, 4)
    right = {"vjp": (lambda v: a @ v, lambda v, w: a.T @ w),
             "jvp": (lambda v: a @ v, lambda v, u: a @ u),
             "grad": (lambda v: b @ (a @ v), lambda v: a.T @ b),
             "grad_directional": (lambda v: b @ (a @ v), lambda v: a.T @ b),
             "jacobian": (lambda v: a @ v, lambda v: a)}[face]
    check, error = _faces(face, *right, x)
    assert check().passed and error().ratio < 1e-2


def test_autograd_meta_test_5e_4_relative_error_fails():
    with pytest.raises(AssertionError):
        nm.check_grad(lambda v: np.sum(v ** 2), lambda v: 2.001 * v, np.array([1.0, -0.5]))


# ---------------------------------------------------------------- structural checks

def test_vjp_structural_checks():
    a, x = _nonsymmetric(3), np.array([0.1, 0.2, 0.3])
    noise = iter(_rng(7).standard_normal(100) * 1e-14)
    cases = {
        "not exactly zero": lambda v, w: a.T @ w + 1e-13,
        "not deterministic": lambda v, w: a.T @ w + next(noise),
        "dtype float32": lambda v, w: (a.T @ w).astype(np.float32),
        "shape (1, 3)": lambda v, w: (a.T @ w)[None, :],
    }
    for message, vjp in cases.items():
        r = nm.vjp_error(lambda v: a @ v, vjp, x)
        assert not r.passed and any(message in p for p in r.problems), (message, r.problems)
        with pytest.raises(AssertionError, match=re.escape(message)):
            nm.check_vjp(lambda v: a @ v, vjp, x)


def test_jvp_structural_zero_tangent():
    r = nm.jvp_error(np.sin, lambda v, u: np.cos(v) * u + 1e-20, np.ones(3))
    assert not r.passed and "not exactly zero" in r.problems[0]


def test_results_are_reproducible_per_seed():
    a, x = _nonsymmetric(5), np.linspace(-1, 1, 5)
    one, two = (nm.vjp_error(np.tanh, lambda v, w: (1 - np.tanh(v) ** 2) * w, x, seed=s)
                for s in (3, 3))
    assert one == two
    other = nm.vjp_error(lambda v: a @ v, lambda v, w: a.T @ w, x, seed=4)
    assert other.seed == 4 and other.passed


# ---------------------------------------------------------------- hygiene

def test_non_float64_output_raises_type_error():
    x = np.ones(3)
    with pytest.raises(TypeError, match="float32"):
        nm.numerical_jacobian(lambda v: v.astype(np.float32), x)
    with pytest.raises(TypeError, match="int64"):
        nm.numerical_grad(lambda v: int(np.sum(v > 0)), x)
    r = nm.check_vjp(lambda v: np.sin(v).astype(np.float32), lambda v, w: np.cos(v) * w, x,
                     allow_lower_precision=True, eps=1e-3, rtol=1e-3)
    assert r.passed


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_raises_value_error(bad):
    x = np.array([1.0, bad, 2.0])
    with pytest.raises(ValueError, match=r"NaN or inf \(first at index \(1,\)"):
        nm.check_vjp(np.sin, lambda v, w: np.cos(v) * w, x)
    with pytest.raises(ValueError, match="NaN or inf"):
        nm.numerical_jvp(np.sin, np.ones(3), x)


def test_non_finite_output_raises_value_error():
    with pytest.raises(ValueError, match="not finite"):
        nm.numerical_grad(lambda v: np.sum(v) + np.inf, np.array([-1.0, 1.0]))


def test_caller_array_untouched_and_in_place_f_rejected():
    x = np.array([0.5, -1.5], dtype=np.float32)
    before = x.copy()
    nm.check_jacobian(lambda v: np.diag(np.cos(v)), np.sin, x)
    assert np.array_equal(x, before) and x.dtype == np.float32

    def mutating(v):
        v *= 2.0
        return v

    with pytest.raises(ValueError, match="read-only"):
        nm.numerical_jacobian(mutating, np.ones(2))


def test_complex_input_rejected():
    with pytest.raises(TypeError, match="complex"):
        nm.numerical_grad(np.sum, np.ones(2) * 1j)


# ---------------------------------------------------------------- comparison and messages

def test_assert_allclose_message_names_worst_index_and_values():
    expected = np.array([[1.0, 2.0], [3.0, 4.0]])
    actual = expected.copy()
    actual[1, 0] = 3.001
    actual[0, 1] = 2.0000001  # within tolerance
    with pytest.raises(AssertionError) as info:
        nm.assert_allclose(actual, expected, name="h_1")
    msg = str(info.value)
    for part in ("h_1", "(2, 2)", "float64", "worst index (1, 0)", "3.001", "3.0",
                 "abs error", "rel error", "atol + rtol*|expected|"):
        assert part in msg, (part, msg)
    nm.assert_allclose(expected * (1 + 5e-6), expected)  # within rtol 1e-5
    with pytest.raises(AssertionError, match="shape mismatch"):
        nm.assert_allclose(np.ones(2), np.ones(3))
    with pytest.raises(AssertionError, match="worst index \\(0,\\)"):
        nm.assert_allclose(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))
    nm.assert_allclose(np.array([np.inf]), np.array([np.inf]))


def test_default_atol_scales_with_max_numeric_not_size():
    big = np.full(10_000, 1e3)
    r = _compare("t", "t", big + 5e-5, big, rtol=0.0, atol=None)
    assert r.passed and math.isclose(r.atol, 1e-4)  # 1e-7 * max|n|
    assert not _compare("t", "t", big + 2e-4, big, rtol=0.0, atol=None).passed


def test_relative_error_is_normwise():
    assert nm.relative_error(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == 0.0
    assert math.isclose(nm.relative_error(np.array([0.0, 5.0]), np.array([0.0, 4.0])), 0.2)
    assert nm.relative_error(np.zeros(3), np.zeros(3)) == 0.0


@settings(deadline=None)
@given(n=st.integers(1, 500), seed=st.integers(0, 2**32 - 1))
def test_unit_vector_norm_and_floor(n, seed):
    u = nm.unit_vector(np.random.default_rng(seed), (n,))
    assert math.isclose(np.linalg.norm(u), 1.0, rel_tol=1e-12)
    assert np.all(np.abs(u) >= 0.1 / math.sqrt(n) * (1 - 1e-12))


# ---------------------------------------------------------------- Taylor test and slopes

def test_taylor_rates_two_for_correct_one_for_wrong():
    a, x = _nonsymmetric(3), np.array([0.3, -0.2, 0.9])
    h = _rng(8).standard_normal(3)

    def f(v):
        return np.tanh(a @ v)

    good = (1 - f(x) ** 2) * (a @ h)
    r = nm.check_taylor(f, x, h, good)
    assert all(1.9 < rate < 2.1 for rate in r.rates1) and all(0.9 < q < 1.1 for q in r.rates0)
    transposed = nm.taylor_rates(f, x, h, (1 - f(x) ** 2) * (a.T @ h))
    assert all(0.9 < rate < 1.1 for rate in transposed.rates1)
    assert nm.taylor_rates(f, x, h, 1.001 * good).min_rate < 1.9  # even a 1e-3 error shows
    with pytest.raises(AssertionError, match="remainder rate"):
        nm.check_taylor(f, x, h, 1.01 * good)
    scalar = nm.taylor_rates(lambda v: np.sum(np.sin(v)), x, h, np.cos(x) @ h)
    assert scalar.min_rate > 1.9


def test_taylor_linear_function_is_at_noise_floor():
    a, x, h = _nonsymmetric(3), np.ones(3), np.array([1.0, 2.0, -1.0])
    r = nm.check_taylor(lambda v: a @ v, x, h, a @ h)
    assert r.at_noise_floor and r.min_rate == math.inf


@settings(deadline=None)
@given(p=st.floats(-3, 3), c=st.floats(0.1, 10))
def test_fitted_slope_recovers_exponent(p, c):
    xs = np.geomspace(1e-4, 1e-1, 8)
    assert math.isclose(nm.fitted_slope(xs, c * xs ** p), p, abs_tol=1e-9)


def test_fitted_slope_with_noise_and_errors():
    xs = np.geomspace(1e-3, 1.0, 12)
    ys = 3.0 * xs ** 2 * np.exp(_rng(9).normal(0, 0.05, 12))
    assert abs(nm.fitted_slope(xs, ys) - 2.0) < 0.05
    with pytest.raises(ValueError):
        nm.fitted_slope([1.0], [1.0])
    with pytest.raises(ValueError):
        nm.fitted_slope([1.0, 2.0], [0.0, 1.0])


# ---------------------------------------------------------------- 5-point stencil and kinks

def test_five_point_stencil_detects_kinks():
    def relu(v):
        return np.maximum(v, 0.0)

    with pytest.raises(nm.NondifferentiableError, match="kink"):
        nm.numerical_jacobian(np.abs, np.array([1.0, 0.0]), stencil=5)
    with pytest.raises(nm.NondifferentiableError, match="coordinate 0"):
        nm.numerical_grad(lambda v: np.sum(relu(v)), np.array([3e-7, 1.0]), stencil=5)
    with pytest.raises(nm.NondifferentiableError):
        nm.check_vjp(relu, lambda v, w: (v > 0) * w, np.zeros(4), stencil=5)
    with pytest.raises(nm.NondifferentiableError, match="finiteness"):
        nm.numerical_grad(lambda v: np.sum(np.where(v >= 0, v, np.inf)), np.zeros(1), stencil=5)
    x = np.array([0.5, -0.7, 2.0])  # away from the kink: fine
    nm.check_vjp(relu, lambda v, w: (v > 0) * w, x, stencil=5)
    nm.check_jacobian(lambda v: np.diag((v > 0).astype(np.float64)), relu, x, stencil=5)
    with pytest.raises(ValueError, match="stencil"):
        nm.numerical_jvp(np.sin, x, x, stencil=4)


@pytest.mark.parametrize("x0", [0.0, 1.0, 1e3])
def test_five_point_stencil_smooth_and_more_accurate(x0):
    # No false kink at an extremum (x0 = 0), at 1 or on a large offset; 5 points beat 3.
    x = np.array([x0])

    def f(v):
        return 1e3 + np.cos(v) + v ** 3

    exact = -np.sin(x) + 3 * x ** 2
    g5 = nm.numerical_grad(lambda v: np.sum(f(v)), x, stencil=5)
    g3 = nm.numerical_grad(lambda v: np.sum(f(v)), x, eps=1e-3)
    g5_big = nm.numerical_grad(lambda v: np.sum(f(v)), x, eps=1e-3, stencil=5)
    nm.assert_allclose(g5, exact, name="5-point")
    assert np.abs(g5_big - exact).max() <= np.abs(g3 - exact).max()
