"""``python -m refdtp.backend``: what the cupy backend sees on this machine.

Prints the CuPy version, the device, the CUDA runtime and driver versions,
the GPUs nvidia-smi lists, and, when CuPy cannot be used, why: the import
error or the CUDA error, and any warning raised while importing CuPy. Exit
status 0 always (it reports; ``pytest -m gpu`` is what fails loudly).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from . import backend


def _cuda_version(v: int) -> str:
    """CUDA's integer version 12040 -> "12.4"."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def env_report() -> dict:
    """What the cupy backend sees here: versions, device, and why it is unusable if it is."""
    rep = {"numpy": np.__version__, "cupy": None, "usable": backend.gpu_available(),
           "unusable_reason": backend.cupy_unusable_reason(),
           "import_warnings": list(backend.CUPY_IMPORT_WARNINGS), "nvidia_smi": backend.nvidia_smi_gpus(),
           "REFDTP_REQUIRE_GPU": os.environ.get("REFDTP_REQUIRE_GPU")}
    if backend._cupy is None:
        return rep
    rep["cupy"] = getattr(backend._cupy, "__version__", "?")
    rt = backend._cupy.cuda.runtime
    for key, fn in (("cuda_runtime", rt.runtimeGetVersion), ("cuda_driver", rt.driverGetVersion)):
        try:
            rep[key] = _cuda_version(int(fn()))
        except Exception as exc:  # noqa: BLE001
            rep[key] = f"unavailable ({type(exc).__name__}: {exc})"
    if rep["usable"]:
        try:
            rep["device"] = backend.device_name(backend._cupy)
            rep["device_count"] = int(rt.getDeviceCount())
        except Exception as exc:  # noqa: BLE001
            rep["device"] = f"unavailable ({type(exc).__name__}: {exc})"
    return rep


def format_env_report(rep: dict) -> str:
    """The report as ``key: value`` lines."""
    lines = [f"{k}: {v}" for k, v in rep.items() if k not in ("import_warnings", "nvidia_smi")]
    lines += [f"nvidia-smi: {g}" for g in rep["nvidia_smi"]] or ["nvidia-smi: no GPU listed"]
    lines += [f"import warning: {w}" for w in rep["import_warnings"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rep = env_report()
    print(json.dumps(rep, indent=1, default=str) if "--json" in argv else format_env_report(rep))
    return 0

