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


@pytest.mark.parametrize("bits", sorted(backend.NOISE_GENERATORS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_is_seeded_scaled_and_keeps_dtype(dtype, bits):
    z1 = backend.Noise(3, 7, 0, 1, bit_generator=bits).normal((4000,), 0.25, dtype)
    z2 = backend.Noise(3, 7, 0, 1, bit_generator=bits).normal((4000,), 0.25, dtype)
    z3 = backend.Noise(3, 7, 0, 2, bit_generator=bits).normal((4000,), 0.25, dtype)
    other = backend.Noise(3, 7, 0, 1, bit_generator="pcg64" if bits == "sfc64" else "sfc64")
    assert z1.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(z1, z2)
    assert not np.array_equal(z1, z3)
    assert not np.array_equal(z1, other.normal((4000,), 0.25, dtype))
    # std of 4000 N(0, 0.25^2) draws: 0.25 +- 0.25/sqrt(2*4000) ~ 0.003 (5 sigma below).
    assert abs(float(z1.std()) - 0.25) < 0.015, f"noise std {z1.std()} != 0.25"


def test_unknown_noise_bit_generator_is_refused():
    with pytest.raises(ValueError, match="unknown noise bit generator 'xorshift'"):
        backend.Noise(0, 1, bit_generator="xorshift")


def test_noise_successive_draws_differ():
    noise = backend.Noise(0, 1)
    a, b = noise.normal((10,), 1.0, np.float64), noise.normal((10,), 1.0, np.float64)
    assert not np.array_equal(a, b)


def test_synchronize_is_a_no_op_on_numpy():
    assert backend.synchronize(np) is None


# -- CuPy import, environment report, GPU guard (item: "every GPU test can skip silently") --------

FAKE_CUPY = '''
import warnings
warnings.warn("CuPy may not function correctly because multiple CuPy packages are installed")
__version__ = "14.0.0-fake"
'''


def test_cupy_import_records_warnings_instead_of_raising_them(tmp_path, monkeypatch):
    # Under filterwarnings=error (setup.cfg) an import-time warning used to become the import error,
    # so gpu_available() was False and every GPU test skipped.
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text(FAKE_CUPY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "cupy", raising=False)
    module, error, caught = backend._import_cupy()
    assert error is None and module.__version__ == "14.0.0-fake"
    assert any("multiple CuPy packages" in w for w in caught), caught


def test_cupy_import_failure_is_recorded_not_raised(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "cupy", None)  # "import cupy" raises ImportError
    module, error, _ = backend._import_cupy()
    assert module is None and isinstance(error, ImportError)


class _FakeRuntime:
    def __init__(self, count):
        self.count = count

    def getDeviceCount(self):
        if isinstance(self.count, Exception):
            raise self.count
        return self.count

    def runtimeGetVersion(self):
        return 13000

    def driverGetVersion(self):
        return 13010


def _fake_cupy(count):
    import types
    cuda = types.SimpleNamespace(runtime=_FakeRuntime(count))
    return types.SimpleNamespace(__version__="14.0.0", cuda=cuda)


@pytest.mark.parametrize("count, expect", [(0, "no CUDA device"), (RuntimeError("no driver"), "no driver")])
def test_unusable_reason_names_the_cause(monkeypatch, count, expect):
    monkeypatch.setattr(backend, "_cupy", _fake_cupy(count))
    assert expect in backend.cupy_unusable_reason() and not backend.gpu_available()


def test_unusable_reason_reports_the_import_error(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_CUPY_IMPORT_ERROR", ImportError("libcudart.so.13: cannot open"))
    assert "libcudart.so.13" in backend.cupy_unusable_reason()


@pytest.mark.parametrize("env, smi, loud", [("1", [], True), ("", ["GPU 0: NVIDIA H200"], True),
                                            ("", [], False)])
def test_gpu_guard_is_loud_only_where_a_gpu_is_expected(monkeypatch, env, smi, loud):
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_CUPY_IMPORT_ERROR", ImportError("no cupy"))
    monkeypatch.setattr(backend, "CUPY_IMPORT_WARNINGS", ["UserWarning: two cupy packages"])
    monkeypatch.setenv("REFDTP_REQUIRE_GPU", env)
    monkeypatch.setattr(backend, "nvidia_smi_gpus", lambda: smi)
    msg = backend.gpu_guard_message()
    assert (msg is not None) == loud
    if loud:
        assert "no cupy" in msg and "two cupy packages" in msg


def test_gpu_guard_is_silent_when_cupy_works(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", _fake_cupy(1))
    monkeypatch.setenv("REFDTP_REQUIRE_GPU", "1")
    assert backend.gpu_guard_message() is None


def test_env_report_lists_versions_and_reason(monkeypatch, capsys):
    monkeypatch.setattr(backend, "_cupy", _fake_cupy(RuntimeError("cudaErrorNoDevice")))
    monkeypatch.setattr(backend, "nvidia_smi_gpus", list)
    from refdtp import gpu_env
    rep = gpu_env.env_report()
    assert rep["cupy"] == "14.0.0" and rep["cuda_runtime"] == "13.0" and rep["cuda_driver"] == "13.1"
    assert "cudaErrorNoDevice" in rep["unusable_reason"] and rep["usable"] is False
    assert backend._main([]) == 0
    assert "cudaErrorNoDevice" in capsys.readouterr().out


def test_pytest_m_gpu_fails_loudly_when_a_gpu_is_required_but_cupy_is_unusable(tmp_path):
    import os
    import subprocess
    import sys
    if backend.gpu_available():
        pytest.skip("checks the no-CuPy path")
    env = {**os.environ, "REFDTP_REQUIRE_GPU": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                          "tests/test_backend.py::test_xp_fixture_arrays_round_trip_through_host"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "cupy backend is unusable" in out.stdout + out.stderr


# -- device noise and per-step memory -----------------------------------------------------------

class _FakeDeviceRandom:
    """Stands in for cupy.random: records which bit generator the Generator was built on."""

    class Philox4x3210:
        def __init__(self, seed):
            self.seed = seed

    class Generator:
        def __init__(self, bit_generator):
            self.bit_generator = bit_generator

    @staticmethod
    def default_rng(seed):
        raise AssertionError("XORWOW default_rng used")


def test_device_generator_uses_philox_keyed_by_the_seed_sequence():
    import types
    xp = types.SimpleNamespace(random=_FakeDeviceRandom)
    seq = np.random.SeedSequence([3, 7, 0, 1, 2])
    gen = backend.device_generator(xp, seq)
    assert isinstance(gen.bit_generator, _FakeDeviceRandom.Philox4x3210)
    assert gen.bit_generator.seed is seq


def test_used_bytes_counter_tracks_the_high_water_mark_not_the_reservation():
    c = backend.UsedBytesCounter()
    # the keyword arguments CuPy's SingleDeviceMemoryPool passes to its memory hooks
    c.malloc_postprocess(device_id=0, size=100, rounded_size=512, mem_ptr=1)
    c.malloc_postprocess(device_id=0, size=100, rounded_size=512, mem_ptr=2)
    c.free_postprocess(device_id=0, mem_ptr=1, mem_size=512)
    c.malloc_postprocess(device_id=0, size=10, rounded_size=512, mem_ptr=3)
    c.malloc_postprocess(device_id=0, size=10, rounded_size=512, mem_ptr=0)  # a failed malloc
    assert c.peak == 1024 and c.used == 1024


def test_step_peak_bytes_on_numpy_sees_the_step_buffers():
    peak = backend.step_peak_bytes(np, lambda: np.ones(1_000_000))
    assert 8e6 <= peak < 9e6
