"""How many BLAS threads a run uses: chosen per problem size and per free core, never more.

OpenBLAS threads that spin-wait for a core another process keeps busy collapse
(the demo took 29 s with 2 threads against 8 s with 1 while another job kept one
of 2 cores busy), and small products gain nothing from a second thread. Without
``--threads`` a run therefore takes 1 thread for a small problem, else the cores
of its CPU affinity not taken by the load of other processes; the feedback
phase then trains at most that many blocks at once (:func:`current_blas_threads`).
"""
from __future__ import annotations

import os
import time

import numpy as np

#: Below this many FLOPs per batch in the largest weight layer's forward GEMM, one BLAS thread.
#: 1 GFLOP is ~20-50 ms on one core: splitting it saves little against the step's single-threaded
#: element-wise and Python work (the 4.7 MFLOP demo runs in ~9 s with 1 or 2 threads on an idle
#: 2-core host), while threads that spin-wait for a busy core collapse (29 s vs 8 s).
SMALL_GEMM_FLOPS = 1e9


def current_blas_threads() -> int:
    """The host BLAS's thread limit now (inside :func:`blas_threads`, the run's choice), at least 1."""
    from threadpoolctl import threadpool_info
    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(1, min(counts)) if counts else max(1, os.cpu_count() or 1)


def free_cores() -> tuple[int, float]:
    """(cores this process may run on, 1-minute load average of the others).

    The load average counts this process too; its share is estimated from its
    own CPU time t as 1 - exp(-t / 60) (the 1-minute average's decay), at most 1.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        load = 0.0
    own = 1.0 - float(np.exp(-time.process_time() / 60.0))
    return max(cores, 1), max(load - own, 0.0)


def choose_blas_threads(requested: int | None, gemm_flops: float,
                        threshold: float = SMALL_GEMM_FLOPS) -> tuple[int, str]:
    """BLAS thread count of a run and why: ``requested`` (``--threads``) when given, else
    1 for a small problem, else the cores not taken by other processes (at least 1).

    Args:
        requested: the user's ``--threads``, or None.
        gemm_flops: FLOPs of the largest weight layer's forward GEMM on one batch.
    Returns:
        (threads >= 1, a short reason for the run's start line and report).
    """
    if requested is not None:
        return int(requested), "--threads"
    cores, others = free_cores()
    if gemm_flops < threshold:
        return 1, f"small problem: largest GEMM {gemm_flops / 1e9:.2g} < {threshold / 1e9:g} GFLOP per batch"
    n = max(1, min(cores, int(cores - others + 0.5)))
    return n, f"{cores} cores available, load of others {others:.2f}"


def run_threads(net, batch: int, requested: int | None) -> tuple[int, str]:
    """(BLAS threads, reason) of a run: ``requested``, else chosen from the largest
    weight layer's forward GEMM FLOPs per batch and the free cores."""
    ops = [b.F.param_op for b in net.blocks if getattr(b.F, "param_op", None) is not None]
    flops = max((batch * op.flops_per_sample() for op in ops if hasattr(op, "flops_per_sample")),
                default=0)
    return choose_blas_threads(requested, flops)
