"""refdtp.activations: values, derivatives (vs finite differences), inverses, dtypes, registry."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdtp import activations as A
from refdtp import numerical as nm

ALL_NAMES = sorted(A.ACTIVATIONS)
INVERTIBLE = ["elu", "tanh", "leaky_relu", "sigmoid", "identity"]
KINK_GAP = 2e-3  # keep |a| above this: ReLU/LeakyReLU (and ELU, alpha != 1) kink at 0


def away_from_kink(a):
    """Move every entry at least KINK_GAP away from 0 (keeping its sign)."""
    return np.where(a < 0, -1.0, 1.0) * (np.abs(a) + KINK_GAP)


def inputs(seed, shape, scale=3.0):
    return away_from_kink(np.random.default_rng(seed).uniform(-scale, scale, shape))


SHAPES = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


@pytest.mark.parametrize("name", ALL_NAMES)
@given(seed=st.integers(0, 2**31), shape=SHAPES)
def test_derivative_matches_finite_differences_jvp_and_vjp(name, seed, shape):
    act = A.get_activation(name)
    a = inputs(seed, shape)

    def jac_times(v, u):
        return act.derivative(v, act.value(v)) * u

    nm.check_jvp(act.value, jac_times, a, seed=seed % 1000, rtol=1e-6)
    nm.check_vjp(act.value, jac_times, a, seed=seed % 1000, rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.5])
def test_elu_alpha_sets_negative_branch_and_its_derivative(alpha, rng):
    act = A.get_activation("elu", alpha=alpha)
    a = inputs(0, (50,))
    y = act.value(a)
    expected = np.where(a > 0, a, alpha * (np.exp(a) - 1))
    nm.assert_allclose(y, expected, rtol=1e-14, atol=1e-15, name=f"elu(alpha={alpha})")
    nm.assert_allclose(act.derivative(a, y), np.where(a > 0, 1.0, alpha * np.exp(a)),
                       rtol=1e-14, atol=1e-15, name="elu'")
    assert f"alpha={alpha}" in act.name
    assert act.smooth == (alpha == 1.0), "ELU is C^1 only for alpha = 1"
    nm.check_jvp(act.value, lambda v, u: act.derivative(v, act.value(v)) * u,
                 away_from_kink(rng.uniform(-3, 3, (4, 5))))


def test_leaky_relu_slope_applies_and_nonpositive_slope_is_rejected():
    act = A.get_activation("leaky_relu", negative_slope=0.2)
    a = np.array([-2.0, -0.5, 0.5, 3.0])
    np.testing.assert_array_equal(act.value(a), [-0.4, -0.1, 0.5, 3.0])
    np.testing.assert_array_equal(act.derivative(a, act.value(a)), [0.2, 0.2, 1.0, 1.0])
    with pytest.raises(ValueError, match="negative_slope"):
        A.get_activation("leaky_relu", negative_slope=0.0)


@pytest.mark.parametrize("name", INVERTIBLE)
@given(seed=st.integers(0, 2**31), shape=SHAPES)
def test_inverse_of_value_is_identity(name, seed, shape):
    act = A.get_activation(name)
    assert act.inverse is not None, f"{name} should have an inverse"
    a = inputs(seed, shape)
    nm.assert_allclose(act.inverse(act.value(a)), a, rtol=1e-10, atol=1e-12,
                       name=f"{name}^-1({name}(a))")


@pytest.mark.parametrize("name", ["relu", "phi_tanh", "phi_sigmoid", "phi_elu"])
def test_non_invertible_activations_have_no_inverse(name):
    assert A.get_activation(name).inverse is None


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_value_and_derivative_keep_the_input_dtype(name, dtype):
    act = A.get_activation(name)
    a = inputs(1, (3, 4)).astype(dtype)
    y = act.value(a)
    assert y.dtype == dtype, f"{name}: value dtype {y.dtype} != {np.dtype(dtype)}"
    d = act.derivative(a, y)
    assert d.dtype == dtype, f"{name}: derivative dtype {d.dtype} != {np.dtype(dtype)}"
    if act.inverse is not None:
        assert act.inverse(y).dtype == dtype


@pytest.mark.parametrize("forward, phi", sorted(A.JMC_PHI.items()))
def test_phi_derivative_at_the_output_equals_forward_derivative(forward, phi):
    """phi'(s(a)) = s'(a) (docs/theory.md §3.4): the exact-JMC feedback nonlinearity."""
    s, p = A.get_activation(forward), A.get_activation(phi)
    a = inputs(2, (40,))
    y = s.value(a)
    nm.assert_allclose(p.derivative(y, p.value(y)), s.derivative(a, y), rtol=1e-12, atol=1e-14,
                       name=f"{phi}'({forward}(a)) vs {forward}'(a)")


def test_large_inputs_do_not_overflow_or_warn():
    a = np.array([-800.0, -50.0, 50.0, 800.0])  # exp(800) overflows float64
    for name in ("elu", "sigmoid", "tanh"):
        act = A.get_activation(name)  # filterwarnings=error turns any overflow warning into a failure
        y = act.value(a)
        assert np.all(np.isfinite(y)), f"{name}({a}) = {y}"
        assert np.all(np.isfinite(act.derivative(a, y)))


def test_sigmoid_saturates_to_exact_limits():
    y = A.get_activation("sigmoid").value(np.array([-800.0, 0.0, 800.0]))
    np.testing.assert_array_equal(y, [0.0, 0.5, 1.0])


def test_unknown_activation_raises_value_error_listing_choices():
    with pytest.raises(ValueError) as info:
        A.get_activation("swish")
    msg = str(info.value)
    assert "swish" in msg
    for name in ALL_NAMES:
        assert name in msg, f"choice {name!r} missing from {msg!r}"


def test_relu_is_flagged_nonsmooth_and_tanh_smooth():
    assert not A.get_activation("relu").smooth
    assert not A.get_activation("leaky_relu").smooth
    assert A.get_activation("tanh").smooth
    assert "relu" in repr(A.get_activation("relu"))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_derivative_returns_a_fresh_array_that_callers_may_overwrite(name):
    """Act.jvp multiplies into f'(a): the derivative must never alias a, y or a cached constant."""
    act = A.get_activation(name)
    a = np.linspace(-2.0, 2.0, 11) * (0.4 if "phi" in name or name == "sigmoid" else 1.0)
    y = act.value(a)
    a0, y0 = a.copy(), y.copy()
    d1 = act.derivative(a, y)
    d1 *= 7.0
    d2 = act.derivative(a, y)
    assert not np.shares_memory(d1, d2) and not np.shares_memory(d1, a) and not np.shares_memory(d1, y)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_allclose(d1, 7.0 * d2, rtol=0, atol=0)
