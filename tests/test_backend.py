"""refdtp.backend: backend choice, host/device transfers, seeded randomness."""
import numpy as np
import pytest

from refdtp import backend


def test_get_xp_numpy_is_numpy():
    assert backend.get_xp("numpy") is np


def test_get_xp_unknown_name_raises_value_error_listing_backends():
    with pytest.raises(ValueError, match="numpy.*cupy"):
        backend.get_xp("torch")


@pytest.mark.skipif(backend.gpu_available(), reason="checks the no-GPU error path")
def test_get_xp_cupy_without_gpu_raises_backend_error_with_install_hint():
    with pytest.raises(backend.BackendError, match="pip install"):
        backend.get_xp("cupy")


def test_xp_fixture_arrays_round_trip_through_host(xp, rng):
    a = rng.standard_normal((3, 4))
    dev = xp.asarray(a)
    assert backend.array_module(dev) is xp
    back = backend.to_host(dev)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, a)


def test_to_backend_numpy_casts_dtype_and_keeps_values(rng):
    a = rng.standard_normal(5)
    b = backend.to_backend(a, "numpy", np.float32)
    assert b.dtype == np.float32
    np.testing.assert_array_equal(b, a.astype(np.float32))
    assert backend.backend_name(b) == "numpy"


def test_tree_transfers_keep_nested_structure(rng):
    tree = {"a": {"w": rng.standard_normal((2, 2)), "b": rng.standard_normal(2)}}
    out = backend.tree_to_host(backend.tree_to_backend(tree, "numpy", np.float64))
    assert out.keys() == tree.keys() and out["a"].keys() == tree["a"].keys()
    np.testing.assert_array_equal(out["a"]["w"], tree["a"]["w"])


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float16, np.complex128, bool])
def test_check_float_dtype_rejects_non_float32_64(dtype):
    with pytest.raises(TypeError, match="float32 or float64"):
        backend.check_float_dtype(dtype, "thing")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "float32"])
def test_check_float_dtype_accepts_float32_64(dtype):
    assert backend.check_float_dtype(dtype) == np.dtype(dtype)


def test_host_rng_same_keys_same_stream_different_keys_independent():
    a = backend.host_rng(5, 1, 2).standard_normal(8)
    b = backend.host_rng(5, 1, 2).standard_normal(8)
    c = backend.host_rng(5, 1, 3).standard_normal(8)
    d = backend.host_rng(6, 1, 2).standard_normal(8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_is_seeded_scaled_and_keeps_dtype(dtype):
    z1 = backend.Noise(3, 7, 0, 1).normal((4000,), 0.25, dtype)
    z2 = backend.Noise(3, 7, 0, 1).normal((4000,), 0.25, dtype)
    z3 = backend.Noise(3, 7, 0, 2).normal((4000,), 0.25, dtype)
    assert z1.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(z1, z2)
    assert not np.array_equal(z1, z3)
    # std of 4000 N(0, 0.25^2) draws: 0.25 +- 0.25/sqrt(2*4000) ~ 0.003 (5 sigma below).
    assert abs(float(z1.std()) - 0.25) < 0.015, f"noise std {z1.std()} != 0.25"


def test_noise_successive_draws_differ():
    noise = backend.Noise(0, 1)
    a, b = noise.normal((10,), 1.0, np.float64), noise.normal((10,), 1.0, np.float64)
    assert not np.array_equal(a, b)


def test_synchronize_is_a_no_op_on_numpy():
    assert backend.synchronize(np) is None
