"""``python -m refdtp.bench``: time full L-DRL and BP steps of SimpleVGG.

Prints median step times after a warm-up, the FLOPs of each step (counted
from the layer shapes, see refdtp.bench.flops), the achieved GFLOP/s beside
this machine's measured dense float32 GEMM rate, peak memory, and with
``--peer torch`` the same steps in plain PyTorch and the ratio refdtp/PyTorch.
A command that prints figures; never a timed test.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc

import numpy as np

from ..algorithms import init_state, train_step
from ..backend import device_memory_bytes, device_name, get_xp, host_rng, synchronize, to_backend
from ..config import build_network
from ..presets import get_preset
from .flops import (bp_step_flops, gemm_flops, ldrl_peer_step_flops, ldrl_step_flops,
                    scaled_channels, scaled_iterations)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m refdtp.bench", description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width-scale", type=float, default=1.0, help="scale SimpleVGG's channels")
    p.add_argument("--iter-scale", type=float, default=1.0, help="scale the feedback iterations")
    p.add_argument("--steps", type=int, default=3, help="timed steps per algorithm (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--algorithms", nargs="+", default=["ldrl", "bp"], choices=("ldrl", "bp"))
    p.add_argument("--peer", choices=("torch",), help="also time the same steps in PyTorch")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    return p.parse_args(argv)


def gemm_rate(xp, n: int = 2048, repeats: int = 5) -> float:
    """Measured dense float32 GEMM rate (GFLOP/s), median of ``repeats``."""
    rng = host_rng(0, 99)
    a = to_backend(rng.standard_normal((n, n), dtype=np.float32), "numpy" if xp is np else "cupy")
    b = a.T.copy()
    times = []
    for _ in range(repeats + 1):
        synchronize(xp)
        t = time.perf_counter()
        a @ b
        synchronize(xp)
        times.append(time.perf_counter() - t)
    return gemm_flops(n) / statistics.median(times[1:]) / 1e9


def _timed(step, steps: int, warmup: int, xp) -> list:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        synchronize(xp)
        t = time.perf_counter()
        step()
        synchronize(xp)
        times.append(time.perf_counter() - t)
    return times


def bench_refdtp(args, cfg, net, x, y, xp) -> dict:
    out = {}
    for alg in args.algorithms:
        cfg.algorithm = alg
        state = {"s": init_state(cfg, net, args.backend)}

        def step():
            state["s"] = train_step(cfg, net, state["s"], x, y, cfg.lr)[0]
        times = _timed(step, args.steps, args.warmup, xp)
        flops = (ldrl_step_flops(net, args.batch, cfg.feedback_iterations) if alg == "ldrl"
                 else bp_step_flops(net, args.batch))
        out[alg] = {"times_s": times, "median_s": statistics.median(times), "flops": flops,
                    "gflops_per_s": flops / statistics.median(times) / 1e9,
                    "peak_bytes": _peak_memory(step, xp)}
    return out


def _peak_memory(step, xp):
    """Peak bytes allocated during one step (tracemalloc sees NumPy's buffers)."""
    if xp is not np:
        step()
        return device_memory_bytes(xp)
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bench_peer(args, cfg, net, x_host, y_host) -> dict:
    from . import torch_peer
    device = torch_peer.device_for(args.backend)
    peer = torch_peer.make_peer(cfg.channels, net.num_classes, cfg.feedback_iterations,
                                cfg.feedback_sigma, cfg.feedback_lr, device=device)
    xt, yt = torch_peer.as_tensors(x_host, y_host, device)
    out = {"threads": torch_peer.threads()}
    for alg in args.algorithms:
        fn = peer.ldrl if alg == "ldrl" else peer.bp
        times = []
        for i in range(args.warmup + args.steps):
            torch_peer.synchronize(device)
            t = time.perf_counter()
            fn(xt, yt)
            torch_peer.synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
        flops = (ldrl_peer_step_flops(net, args.batch, cfg.feedback_iterations) if alg == "ldrl"
                 else bp_step_flops(net, args.batch))
        out[alg] = {"times_s": times, "median_s": statistics.median(times), "flops": flops,
                    "peak_bytes": torch_peer.peak_memory_bytes(device)}
    return out


def report(res: dict) -> None:
    m = res["machine"]
    print(f"device: {m['device']}; BLAS: {m['blas']}; dense float32 GEMM: {m['gemm_gflops']:.1f} GFLOP/s")
    print(f"SimpleVGG channels {res['channels']}, batch {res['batch']}, feedback iterations "
          f"{res['iterations']}, float32, {res['steps']} timed steps after {res['warmup']} warm-up")
    print(f"{'step':6s} {'refdtp s':>9s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'% GEMM':>7s} {'peak MB':>8s}"
          + (f" {'torch s':>8s} {'ratio':>6s}" if "peer" in res else ""))
    for alg, r in res["refdtp"].items():
        line = (f"{alg:6s} {r['median_s']:9.3f} {r['flops'] / 1e9:8.1f} {r['gflops_per_s']:8.1f} "
                f"{100 * r['gflops_per_s'] / m['gemm_gflops']:6.1f}% "
                f"{(r['peak_bytes'] or 0) / 2**20:8.0f}")
        if "peer" in res:
            p = res["peer"][alg]
            line += f" {p['median_s']:8.3f} {r['median_s'] / p['median_s']:6.2f}"
        print(line)
    if "peer" in res:
        print(f"ratio = refdtp / PyTorch ({res['peer']['threads']} torch threads); "
              "PyTorch runs the official code's form of the step (8 C_n per iteration vs refdtp's 4 C_n)")


def main(argv=None) -> int:
    args = parse_args(argv)
    xp = get_xp(args.backend)
    cfg = get_preset("cifar10-ldrl")
    cfg.channels = scaled_channels(cfg.channels, args.width_scale)
    cfg.feedback_iterations = scaled_iterations(cfg.feedback_iterations, args.iter_scale)
    net = build_network(cfg, (3, 32, 32), 10)
    rng = host_rng(0, 98)
    x_host = rng.standard_normal((args.batch, 3, 32, 32), dtype=np.float32)
    y_host = rng.integers(0, 10, args.batch)
    x, y = to_backend(x_host, args.backend), to_backend(y_host, args.backend)
    res = {"channels": cfg.channels, "iterations": cfg.feedback_iterations, "batch": args.batch,
           "steps": args.steps, "warmup": args.warmup,
           "machine": {"device": device_name(xp), "cpu_count": os.cpu_count(),
                       "blas": np.__config__.CONFIG["Build Dependencies"]["blas"]["name"],
                       "gemm_gflops": gemm_rate(xp)}}
    res["refdtp"] = bench_refdtp(args, cfg, net, x, y, xp)
    if args.peer:
        try:
            res["peer"] = bench_peer(args, cfg, net, x_host, y_host)
        except ImportError:
            print("--peer torch: PyTorch is not installed (pip install torch); skipping the peer",
                  file=sys.stderr)
    report(res)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
