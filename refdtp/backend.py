"""Array backends: NumPy on the CPU, CuPy on an NVIDIA GPU.

This is the only module of refdtp that imports :mod:`cupy`. Every other module
writes its maths once against ``xp = array_module(x)`` (the CuPy "CPU/GPU
agnostic" idiom) and moves data only through :func:`to_backend` and
:func:`to_host`, so a NumPy array and a CuPy array are never mixed silently.

Randomness comes from explicit, seeded generators built by :func:`generator`.
A generator is derived from a seed and a tuple of integer keys (purpose,
epoch, step, block, ...), never from hidden global state, so a run that is
stopped and resumed draws exactly the numbers an uninterrupted run draws.
"""
from __future__ import annotations

import contextlib

import numpy as np

try:  # refdtp must import on machines without CuPy or without a GPU.
    import cupy as _cupy
    _CUPY_IMPORT_ERROR = None
except Exception as exc:  # ImportError, or a CUDA library that fails to load
    _cupy = None
    _CUPY_IMPORT_ERROR = exc

BACKENDS = ("numpy", "cupy")

#: dtype of training runs (forward, feedback and optimiser arithmetic).
TRAIN_DTYPE = np.dtype(np.float32)
#: dtype of verification, finite differences and gradient tests.
VERIFY_DTYPE = np.dtype(np.float64)
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_INSTALL_HINT = (
    "The 'cupy' backend needs CuPy and a visible NVIDIA GPU. Install it with "
    "`pip install -e \".[gpu]\"` (cupy-cuda12x; use cupy-cuda13x for CUDA 13 drivers) "
    "or use --backend numpy.")


class BackendError(RuntimeError):
    """Raised when a backend is unknown or unavailable on this machine."""


def gpu_available() -> bool:
    """True when CuPy imports and at least one CUDA device is visible."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CuPy installed, but no driver or no device.
        return False


def get_xp(name: str):
    """The array module for a backend name.

    Args:
        name: "numpy" or "cupy".

    Returns:
        The module :mod:`numpy` or :mod:`cupy`.

    Raises:
        ValueError: unknown backend name.
        BackendError: "cupy" asked for where CuPy or a GPU is missing.
    """
    if name == "numpy":
        return np
    if name == "cupy":
        if not gpu_available():
            reason = f" (import failed: {_CUPY_IMPORT_ERROR})" if _CUPY_IMPORT_ERROR else ""
            raise BackendError(_INSTALL_HINT + reason)
        return _cupy
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def array_module(*arrays):
    """numpy or cupy, chosen by where the given arrays live (CuPy wins)."""
    if _cupy is None:
        return np
    return _cupy.get_array_module(*arrays)


def backend_name(a) -> str:
    """"cupy" for a CuPy array, "numpy" otherwise."""
    return "cupy" if (_cupy is not None and isinstance(a, _cupy.ndarray)) else "numpy"


def to_host(a):
    """A NumPy copy (or the array itself) of a NumPy or CuPy array or scalar."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def to_backend(a, name: str, dtype=None):
    """Move an array to a backend (an explicit host -> device copy for "cupy").

    Args:
        a: array-like on either backend.
        name: "numpy" or "cupy".
        dtype: optional dtype to cast to on the way.
    """
    xp = get_xp(name)
    if xp is np:
        out = to_host(a)
        return out if dtype is None else out.astype(dtype, copy=False)
    return xp.asarray(a, dtype=dtype)


def tree_to_backend(tree, name: str, dtype=None):
    """:func:`to_backend` applied to every array of a (nested) dict."""
    if isinstance(tree, dict):
        return {k: tree_to_backend(v, name, dtype) for k, v in tree.items()}
    return to_backend(tree, name, dtype)


def tree_to_host(tree):
    """:func:`to_host` applied to every array of a (nested) dict."""
    if isinstance(tree, dict):
        return {k: tree_to_host(v) for k, v in tree.items()}
    return to_host(tree)


def check_float_dtype(dtype, what: str = "array") -> np.dtype:
    """Return ``dtype`` as a NumPy dtype; raise TypeError unless float32/float64."""
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{what}: dtype must be float32 or float64, got {dt}")
    return dt


def synchronize(xp) -> None:
    """Wait for queued GPU work (no-op on NumPy); use before reading a timer."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


def blas_threads(n):
    """Context manager limiting the host BLAS (OpenBLAS, MKL) to ``n`` threads.

    ``None`` or ``n <= 0`` leaves the library's default. Uses threadpoolctl
    (installed with refdtp). Matters on small machines: on a busy 2-core
    host, OpenBLAS with 2 threads ran small products 6-40x slower than with 1.
    """
    if n is None or n <= 0:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=int(n), user_api="blas")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for host MemoryError and CuPy's device OutOfMemoryError."""
    if isinstance(exc, MemoryError):
        return True
    return _cupy is not None and isinstance(exc, _cupy.cuda.memory.OutOfMemoryError)


def device_memory_bytes(xp):
    """Bytes held by CuPy's default memory pool (its high-water mark), or None on NumPy."""
    if xp is np:
        return None
    return int(xp.get_default_memory_pool().total_bytes())


def device_name(xp) -> str:
    """A readable name of the device that runs ``xp``'s arrays."""
    if xp is np:
        import platform
        return f"CPU ({platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores)"
    props = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
    return props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])


# --------------------------------------------------------------------------
# Seeded randomness
# --------------------------------------------------------------------------

def host_rng(seed: int, *keys: int) -> np.random.Generator:
    """A NumPy Generator determined by ``seed`` and integer ``keys``.

    ``host_rng(s, 3, 7)`` and ``host_rng(s, 3, 8)`` are independent streams
    (NumPy's SeedSequence spawning), and the same arguments always give the
    same stream. Weight initialisation and test data are drawn here.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


class Noise:
    """Gaussian noise drawn on the array's own backend from a seeded stream.

    On NumPy this wraps ``numpy.random.Generator``; on CuPy,
    ``cupy.random.Generator`` (drawing on the device avoids a host -> device
    copy of every noise tensor). The two backends give different numbers for
    the same seed; parity tests therefore draw their noise on the host and
    pass it in explicitly.

    Args:
        seed: base seed of the run.
        keys: integers naming the stream (e.g. purpose, epoch, step, block).
        backend: "numpy" or "cupy".
    """

    def __init__(self, seed: int, *keys: int, backend: str = "numpy"):
        self.backend = backend
        self.xp = get_xp(backend)
        seq = np.random.SeedSequence([int(seed), *map(int, keys)])
        if self.xp is np:
            self._gen = np.random.default_rng(seq)
        else:
            self._gen = self.xp.random.default_rng(int(seq.generate_state(1, np.uint64)[0]))

    def normal(self, shape, scale: float, dtype):
        """Samples of N(0, scale^2), shape ``shape``, dtype ``dtype``."""
        dtype = np.dtype(dtype)
        z = self._gen.standard_normal(size=tuple(shape), dtype=dtype)
        z *= dtype.type(scale)
        return z
