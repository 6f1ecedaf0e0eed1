"""Shared fixtures and hypothesis profiles of the test suite.

- ``rng``: a NumPy Generator with a fixed seed derived from the test's node id,
  so every test draws the same numbers on every run and machine.
- ``xp``: the array module, parametrised over NumPy and CuPy; the CuPy case is
  marked ``gpu`` and skipped cleanly where :func:`refdtp.backend.gpu_available`
  is False.
- Hypothesis profiles ``dev`` (default: few examples) and ``ci`` (more),
  chosen with the HYPOTHESIS_PROFILE environment variable. Both have
  ``deadline=None``: timings on a shared 2-core machine are noise.
- BLAS runs single-threaded during tests (``threadpoolctl``; override with
  REFDTP_TEST_BLAS_THREADS). The test matrices are tiny: on a loaded 2-core
  machine a multi-threaded OpenBLAS spins and ran a small L-DRL training test
  15x slower (0.8 s vs 12 s) than one thread.
"""
from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from refdtp import backend

settings.register_profile("dev", max_examples=10, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=50, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Single-threaded BLAS for the whole session: the tests' matrices are small, and
# on a shared 2-core machine extra BLAS threads only contend.
_BLAS_LIMIT = backend.blas_threads(int(os.environ.get("REFDTP_TEST_BLAS_THREADS", "1")))
_BLAS_LIMIT.__enter__()


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A Generator seeded from the test's node id (stable across runs)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance (2 CPUs, no dashboard) shared by the sweep, search and paper tests."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """numpy, or cupy (gpu-marked; skipped without a GPU)."""
    if request.param == "cupy" and not backend.gpu_available():
        pytest.skip("CuPy backend needs CuPy and an NVIDIA GPU")
    return backend.get_xp(request.param)


def pytest_collection_finish(session):
    """Fail loudly when gpu-marked tests were selected (e.g. ``-m gpu``) on a machine that has
    a GPU (nvidia-smi lists one, or REFDTP_REQUIRE_GPU=1) but CuPy cannot use it: they would
    otherwise all skip and the run would look green."""
    if any(item.get_closest_marker("gpu") for item in session.items):
        message = backend.gpu_guard_message()
        if message:
            pytest.exit(message, returncode=3)
