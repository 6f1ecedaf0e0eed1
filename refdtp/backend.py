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
import os
import shutil
import subprocess
import warnings

import numpy as np


def _import_cupy():
    """Import CuPy if it is usable; never raise, never let a warning escape.

    Warnings raised while importing (e.g. CuPy's "multiple cupy-* packages are
    installed") are recorded, not raised: under ``filterwarnings = error`` (the
    test suite's setting) they would otherwise turn into an exception here and
    every GPU test would skip silently.

    Returns:
        (module or None, the import exception or None, [warning messages]).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:  # refdtp must import on machines without CuPy or without a GPU.
            import cupy
            module, error = cupy, None
        except Exception as exc:  # noqa: BLE001 (ImportError, or a CUDA library that fails to load)
            module, error = None, exc
    return module, error, [f"{w.category.__name__}: {w.message}" for w in caught]


_cupy, _CUPY_IMPORT_ERROR, CUPY_IMPORT_WARNINGS = _import_cupy()

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


def cupy_unusable_reason() -> str | None:
    """Why the "cupy" backend cannot run here, or None when it can."""
    if _cupy is None:
        err = _CUPY_IMPORT_ERROR
        return f"CuPy import failed: {type(err).__name__}: {err}" if err else "CuPy is not installed"
    try:
        n = _cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 (CuPy installed, but no driver or no device.)
        return f"CuPy imported, but the CUDA runtime failed: {type(exc).__name__}: {exc}"
    return None if n > 0 else "CuPy imported, but no CUDA device is visible"


def gpu_available() -> bool:
    """True when CuPy imports and at least one CUDA device is visible."""
    return cupy_unusable_reason() is None


def nvidia_smi_gpus() -> list:
    """GPU lines of ``nvidia-smi -L`` ([] without nvidia-smi, or when it fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return [ln.strip() for ln in out.stdout.splitlines() if ln.strip().startswith("GPU")]


def gpu_required() -> bool:
    """True when a GPU run must not skip: REFDTP_REQUIRE_GPU=1, or nvidia-smi sees a GPU."""
    return os.environ.get("REFDTP_REQUIRE_GPU", "") == "1" or bool(nvidia_smi_gpus())


def gpu_guard_message() -> str | None:
    """A loud error for GPU tests that would all skip on a machine that has a GPU, else None."""
    reason = cupy_unusable_reason()
    if reason is None or not gpu_required():
        return None
    why = "REFDTP_REQUIRE_GPU=1" if os.environ.get("REFDTP_REQUIRE_GPU") == "1" else "nvidia-smi sees a GPU"
    extra = "".join(f"\n  import warning: {w}" for w in CUPY_IMPORT_WARNINGS)
    return (f"GPU tests were asked for and {why}, but the cupy backend is unusable: {reason}{extra}\n"
            "  Run `python -m refdtp.backend` for the full report.")


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


class UsedBytesCounter:
    """High-water mark of bytes in use, fed by CuPy memory-hook callbacks.

    Counts what the step's arrays hold (``mem_size`` of each pool allocation
    until it is freed), not what the pool keeps reserved (cached blocks, the
    GEMM-rate benchmark's buffers): the analogue of PyTorch's
    ``max_memory_allocated``.
    """
    name = "refdtp_used_bytes"

    def __init__(self):
        self.used = self.peak = 0

    def malloc_postprocess(self, **kw):
        """CuPy calls it with device_id, size, rounded_size, mem_ptr (0 on failure)."""
        if kw.get("mem_ptr", 1) == 0:
            return
        self.used += int(kw.get("rounded_size", kw.get("mem_size", kw.get("size", 0))))
        self.peak = max(self.peak, self.used)

    def free_postprocess(self, **kw):
        self.used -= int(kw.get("mem_size", 0))


def step_peak_bytes(xp, step):
    """Peak bytes in use while ``step()`` runs once (its arrays plus what was held before).

    NumPy: tracemalloc's peak of the step's buffers. CuPy: the pool's used
    bytes before the step (cached blocks freed first) plus the high-water mark
    of a :class:`UsedBytesCounter` memory hook over the step.
    """
    if xp is np:
        import tracemalloc
        tracemalloc.start()
        try:
            step()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    synchronize(xp)
    pool = xp.get_default_memory_pool()
    pool.free_all_blocks()
    before = int(pool.used_bytes())
    hook = type("UsedBytesHook", (UsedBytesCounter, xp.cuda.MemoryHook), {})()
    with hook:
        step()
        synchronize(xp)
    return before + hook.peak


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


def device_generator(xp, seq: np.random.SeedSequence):
    """A CuPy Generator on a counter-based Philox4x32-10 stream keyed by ``seq``.

    ``cupy.random.default_rng`` is cuRAND's XORWOW, whose per-thread state
    set-up (``curand_init`` with a sub-sequence skip-ahead) is slow; one is
    built per block per step. Philox state set-up is a key and a counter. The
    stream is still determined by (seed, keys) alone. Falls back to
    ``default_rng`` on a CuPy without the Philox bit generator.
    """
    philox = getattr(xp.random, "Philox4x3210", None)
    if philox is None or not hasattr(xp.random, "Generator"):
        return xp.random.default_rng(int(seq.generate_state(1, np.uint64)[0]))
    return xp.random.Generator(philox(seq))


#: NumPy bit generators of :class:`Noise`: SFC64 draws float32 normals about 1.7x faster than
#: PCG64 here (45 vs 77 ms for 4.2 M, the per-iteration eps of SimpleVGG's conv_1 block), and
#: passes the same statistical batteries (NumPy's documentation of SFC64).
NOISE_GENERATORS = {"sfc64": np.random.SFC64, "pcg64": np.random.PCG64}


class Noise:
    """Gaussian noise drawn on the array's own backend from a seeded stream.

    On NumPy this wraps ``numpy.random.Generator`` on ``bit_generator`` (PCG64 by default;
    training uses the run's ``Config.noise_generator``); on CuPy, a
    ``cupy.random.Generator`` on Philox4x32-10 (:func:`device_generator`;
    drawing on the device avoids a host -> device copy of every noise tensor).
    The two backends give different numbers for the same seed; parity tests
    therefore draw their noise on the host and pass it in explicitly.

    Args:
        seed: base seed of the run.
        keys: integers naming the stream (e.g. purpose, epoch, step, block).
        backend: "numpy" or "cupy".
        bit_generator: a key of :data:`NOISE_GENERATORS` (NumPy only).
    """

    def __init__(self, seed: int, *keys: int, backend: str = "numpy", bit_generator: str = "pcg64"):
        self.backend = backend
        self.xp = get_xp(backend)
        seq = np.random.SeedSequence([int(seed), *map(int, keys)])
        if bit_generator not in NOISE_GENERATORS:
            raise ValueError(f"unknown noise bit generator {bit_generator!r}; "
                             f"one of {sorted(NOISE_GENERATORS)}")
        if self.xp is np:
            self._gen = np.random.Generator(NOISE_GENERATORS[bit_generator](seq))
        else:
            self._gen = device_generator(self.xp, seq)

    def normal(self, shape, scale: float, dtype):
        """Samples of N(0, scale^2), shape ``shape``, dtype ``dtype``."""
        dtype = np.dtype(dtype)
        z = self._gen.standard_normal(size=tuple(shape), dtype=dtype)
        z *= dtype.type(scale)
        return z


def _main(argv=None) -> int:
    from .gpu_env import main
    return main(argv)


if __name__ == "__main__":
    raise SystemExit(_main())
