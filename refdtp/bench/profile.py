"""Where one training step spends its time: per block and per kind of work.

``python -m refdtp.bench --profile`` (or ``python -m refdtp.bench.profile``) runs
one warm-up step, one plain timed step, and one step under :mod:`cProfile` for
each algorithm, with the blocks' feedback phases run one after another (cProfile
sees only the thread it runs in). It prints

- per block: wall seconds of the block's feedback phase (K_n iterations) and of
  its forward-map calls (forward pass, BP's vector-Jacobian products and
  weight gradients, target propagation);
- per kind of work: the self time of the functions doing it, grouped as GEMM
  (the functions that call ``@``/``matmul``: NumPy's GEMM does not appear as a
  call of its own, so its time is its caller's self time, together with the
  caller's few elementwise operations), im2col/col2im, Winograd transforms (their
  small 16x16 / 4x16 GEMMs included), activation, pool/unpool,
  noise generation, optimiser, and everything else ("Python and other");
- beside the GEMM line, the time the step's FLOPs would take at the measured
  GEMM rate, so the gap to the ceiling is visible.

Profiling inflates Python-heavy code; the unprofiled wall time is printed for
comparison. A command that prints figures; never a timed test.
"""
from __future__ import annotations

import cProfile
import pstats
import time
from collections import defaultdict

from .. import algorithms

KINDS = ("GEMM", "im2col/col2im", "Winograd transforms", "activation", "pool/unpool", "noise generation",
         "optimiser", "Python and other")
_IM2COL = {"im2col", "im2col_padded", "col2im", "pad2d", "channels_first"}
_GEMM_FUNCTIONS = {"conv2d", "conv_transpose2d", "conv2d_weight_grad", "grads", "_noisy_pool",
                   "_noisy_output", "feedback_linear", "difference_grads", "gemm_rate"}


def kind_of(filename: str, function: str) -> str:
    """The kind of work of a profiled function (see the module docstring)."""
    name = filename.replace("\\", "/")
    if "standard_normal" in function or "numpy/random" in name or function == "normal":
        return "noise generation"
    if function in _IM2COL:
        return "im2col/col2im"
    if name.endswith("ops/winograd.py") and function.endswith("_transform"):
        return "Winograd transforms"
    if name.endswith("refdtp/activations.py"):
        return "activation"
    if name.endswith("ops/pool.py") or function in ("_scatter_features", "_put_features"):
        return "pool/unpool"
    if name.endswith("refdtp/optim.py"):
        return "optimiser"
    if function in _GEMM_FUNCTIONS or name.endswith("ops/linear.py"):
        return "GEMM"
    return "Python and other"


def self_time_by_kind(profile: cProfile.Profile, top: int = 8) -> tuple[dict, list]:
    """({kind: seconds of self time}, the ``top`` functions by self time as (seconds, kind, name))."""
    out, rows = dict.fromkeys(KINDS, 0.0), []
    for (filename, line, function), (_, _, tottime, _, _) in pstats.Stats(profile).stats.items():
        kind = kind_of(filename, function)
        out[kind] += tottime
        rows.append((tottime, kind, f"{function} ({filename.rsplit('/', 1)[-1]}:{line})"))
    return out, sorted(rows, reverse=True)[:top]


class BlockTimer:
    """Wall time per block of its feedback phase and of its forward-map calls, by wrapping
    ``algorithms._train_block`` and each block's forward-side methods for the duration."""

    METHODS = ("forward", "forward_vjp", "forward_param_grads", "feedback")

    def __init__(self, net):
        self.net, self.feedback, self.forward = net, defaultdict(float), defaultdict(float)

    def __enter__(self):
        original = algorithms._train_block

        def timed_train_block(cfg, net, state, trace, omega, n, *args):
            t = time.perf_counter()
            try:
                return original(cfg, net, state, trace, omega, n, *args)
            finally:
                self.feedback[net.blocks[n - 1].name] += time.perf_counter() - t

        self._original = original
        algorithms._train_block = timed_train_block
        for block in self.net.blocks:
            for method in self.METHODS:
                setattr(block, method, self._timed(block.name, getattr(block, method)))
        return self

    def _timed(self, name, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.forward[name] += time.perf_counter() - t
        return timed

    def __exit__(self, *exc):
        algorithms._train_block = self._original
        for block in self.net.blocks:
            for method in self.METHODS:
                vars(block).pop(method, None)


def profile_step(cfg, net, state, x, labels, lr: float, sync) -> dict:
    """Profile one step of ``cfg.algorithm`` (state is not modified).

    Returns:
        {"wall": plain step seconds, "profiled": seconds under the profiler,
         "kinds": {kind: self seconds}, "top": [(self seconds, kind, function)],
         "blocks": {block: {"feedback", "forward"}}}.
    """
    t = time.perf_counter()
    algorithms.train_step(cfg, net, state, x, labels, lr, workers=1)
    sync()
    wall = time.perf_counter() - t
    profile = cProfile.Profile()
    with BlockTimer(net) as timer:
        t = time.perf_counter()
        profile.enable()
        algorithms.train_step(cfg, net, state, x, labels, lr, workers=1)
        sync()
        profile.disable()
        profiled = time.perf_counter() - t
    blocks = {b.name: {"feedback": timer.feedback.get(b.name, 0.0), "forward": timer.forward.get(b.name, 0.0)}
              for b in net.blocks}
    kinds, top = self_time_by_kind(profile)
    return {"wall": wall, "profiled": profiled, "kinds": kinds, "top": top, "blocks": blocks}


def format_profile(alg: str, result: dict, gemm_seconds: float | None = None) -> str:
    """A readable table of :func:`profile_step`'s result."""
    lines = [f"{alg}: {result['wall']:.3f} s per step (plain), {result['profiled']:.3f} s under the profiler",
             "  per block           feedback phase   forward-map calls"]
    for name, row in result["blocks"].items():
        lines.append(f"    {name:<16} {row['feedback']:>12.3f} s {row['forward']:>15.3f} s")
    lines.append("  per kind of work (self time)")
    total = sum(result["kinds"].values()) or 1.0
    for kind, sec in result["kinds"].items():
        extra = ""
        if kind == "GEMM" and gemm_seconds is not None:
            extra = f"   (the step's FLOPs at the measured GEMM rate: {gemm_seconds:.3f} s)"
        lines.append(f"    {kind:<18} {sec:>8.3f} s {100 * sec / total:>5.1f} %{extra}")
    lines.append("  top functions by self time")
    lines += [f"    {sec:>8.3f} s  {kind:<18} {name}" for sec, kind, name in result["top"]]
    return "\n".join(lines)
