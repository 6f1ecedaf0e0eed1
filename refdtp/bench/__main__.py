"""``python -m refdtp.bench``: time full L-DRL and BP steps of SimpleVGG.

Prints median (and min-max) step times after a warm-up, the FLOPs of each step
(counted from the layer shapes, see refdtp.bench.flops), the achieved GFLOP/s
beside this machine's measured dense float32 GEMM rate, the peak memory in use
during one step, and with ``--peer torch`` the same steps in plain PyTorch in
two variants ("official": F(x) re-run every feedback iteration, as the
official code; "competent": clean pool indices kept from the first pass) and
the ratios refdtp/PyTorch. The implementations' steps are interleaved (ours,
official, competent, ours, ...) in one process over ``--steps`` rounds, so
clock and thermal drift hit all alike. A peer that fails (PyTorch missing, or a
CPU-only PyTorch asked for CUDA) is reported with its reason; refdtp's figures
are still printed. A command that prints figures; never a timed test.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from ..algorithms import init_state, train_step
from ..backend import device_name, get_xp, host_rng, step_peak_bytes, synchronize, to_backend
from ..config import build_network
from ..training.presets import get_preset
from .flops import (
    bp_step_flops,
    gemm_flops,
    ldrl_peer_step_flops,
    ldrl_step_flops,
    scaled_channels,
    scaled_iterations,
    weight_layer_flops,
)
from .profile import format_profile, profile_step

PEER_VARIANTS = ("official", "competent")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m refdtp.bench", description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width-scale", type=float, default=1.0, help="scale SimpleVGG's channels")
    p.add_argument("--iter-scale", type=float, default=1.0, help="scale the feedback iterations")
    p.add_argument("--steps", type=int, default=5, help="timed rounds (each times every implementation once)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--algorithms", nargs="+", default=["ldrl", "bp"], choices=("ldrl", "bp"))
    p.add_argument("--peer", choices=("torch",), help="also time the same steps in PyTorch")
    p.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n GEMM-rate measurement")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing, profile one step of each algorithm: time per block and per kind "
                        "of work (refdtp.bench.profile)")
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
    del a, b
    if xp is not np:  # the GEMM buffers must not count as the steps' memory
        xp.get_default_memory_pool().free_all_blocks()
    return gemm_flops(n) / statistics.median(times[1:]) / 1e9


def competent_peer_flops(net, batch: int, iterations) -> int:
    """The official peer's FLOPs less the F(x) re-run (one C_n per feedback iteration)."""
    C = weight_layer_flops(net, batch)
    rerun = sum(k * c for k, c in zip(iterations, C[1:], strict=True))
    return ldrl_peer_step_flops(net, batch, iterations) - rerun


def refdtp_steps(args, cfg, net, x, y, xp) -> dict:
    """{alg: (step(), sync())} of refdtp, each on its own training state."""
    out = {}
    for alg in args.algorithms:
        cfg.algorithm = alg
        state = {"s": init_state(cfg, net, args.backend)}

        def step(state=state, alg=alg):
            cfg.algorithm = alg
            state["s"] = train_step(cfg, net, state["s"], x, y, cfg.lr)[0]
        out[alg] = (step, lambda: synchronize(xp))
    return out


def load_peer_module():
    """The PyTorch peer module (ImportError where PyTorch is missing); tests replace it."""
    from . import torch_peer
    return torch_peer


def peer_steps(args, cfg, net, x_host, y_host) -> tuple[dict, dict, str | None]:
    """({(variant, alg): (step, sync)}, info, error): the peers' steps, or the reason they cannot run."""
    try:
        tp = load_peer_module()
        device = tp.device_for(args.backend)
        xt, yt = tp.as_tensors(x_host, y_host, device)
        steps = {}
        for variant in PEER_VARIANTS:
            peer = tp.make_peer(cfg.channels, net.num_classes, cfg.feedback_iterations, cfg.feedback_sigma,
                                cfg.feedback_lr, device=device, variant=variant)
            for alg in args.algorithms:
                if alg == "bp" and variant != "official":
                    continue  # the variants differ only in the L-DRL feedback loop
                fn = peer.ldrl if alg == "ldrl" else peer.bp
                steps[(variant, alg)] = (lambda fn=fn: fn(xt, yt), lambda: tp.synchronize(device))
        return steps, {"threads": tp.threads(), "device": device, "module": tp}, None
    except Exception as exc:  # noqa: BLE001 (ImportError, or "Torch not compiled with CUDA enabled")
        return {}, {}, f"{type(exc).__name__}: {exc}"


def interleaved(steps: dict, rounds: int, warmup: int) -> tuple[dict, dict]:
    """Time every step once per round, in turn, for ``rounds`` rounds after ``warmup``.

    Returns:
        ({name: [seconds per round]}, {name: error}) -- a step that raises is dropped
        from later rounds and its error kept.
    """
    times, errors = {k: [] for k in steps}, {}
    for r in range(warmup + rounds):
        for name, (step, sync) in steps.items():
            if name in errors:
                continue
            try:
                sync()
                t = time.perf_counter()
                step()
                sync()
            except Exception as exc:  # noqa: BLE001 (a peer failing mid-run must not lose our figures)
                errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    return times, errors


def summary(times: list, flops: int) -> dict:
    med = statistics.median(times)
    return {"times_s": times, "median_s": med, "min_s": min(times), "max_s": max(times), "flops": flops,
            "gflops_per_s": flops / med / 1e9}


def _flops(net, args, cfg, impl, alg) -> int:
    if alg == "bp":
        return bp_step_flops(net, args.batch)
    its = cfg.feedback_iterations
    return {"refdtp": ldrl_step_flops, "official": ldrl_peer_step_flops,
            "competent": competent_peer_flops}[impl](net, args.batch, its)


def run(args, cfg, net, xp, x, y, x_host, y_host) -> dict:
    """Every measurement: refdtp and (optionally) both peers, interleaved, then peak memory."""
    steps = {("refdtp", alg): s for alg, s in refdtp_steps(args, cfg, net, x, y, xp).items()}
    res = {"refdtp": {}}
    peer_info = {}
    if args.peer:
        psteps, peer_info, err = peer_steps(args, cfg, net, x_host, y_host)
        steps.update(psteps)
        if err:
            res["peer_error"] = err
            print(f"--peer torch: the PyTorch peer cannot run ({err}); reporting refdtp alone",
                  file=sys.stderr)
    times, errors = interleaved(steps, args.steps, args.warmup)
    for (impl, alg), (step, _) in steps.items():
        if errors.get((impl, alg)) or not times[(impl, alg)]:
            res.setdefault("step_errors", {})[f"{impl}/{alg}"] = errors.get((impl, alg), "no timed rounds")
            continue
        row = summary(times[(impl, alg)], _flops(net, args, cfg, impl, alg))
        if impl == "refdtp":
            row["peak_bytes"] = step_peak_bytes(xp, step)
        else:
            row["peak_bytes"] = peer_info["module"].step_peak_bytes(step, peer_info["device"])
        res.setdefault(impl, {})[alg] = row
    if peer_info:
        res["peer_threads"] = peer_info["threads"]
    return res


def report(res: dict) -> None:
    m = res["machine"]
    print(f"device: {m['device']}; BLAS: {m['blas']}; dense float32 GEMM: {m['gemm_gflops']:.1f} GFLOP/s")
    print(f"SimpleVGG channels {res['channels']}, batch {res['batch']}, feedback iterations "
          f"{res['iterations']}, float32, {res['steps']} interleaved rounds after {res['warmup']} warm-up")
    print(f"{'impl':10s} {'step':5s} {'median s':>9s} {'min-max s':>17s} {'GFLOP':>8s} {'GFLOP/s':>8s} "
          f"{'% GEMM':>7s} {'peak MB':>8s} {'ours/it':>8s}")
    ours = res["refdtp"]
    for impl in ("refdtp", *PEER_VARIANTS):
        for alg, r in res.get(impl, {}).items():
            ratio = ("-" if impl == "refdtp" or alg not in ours
                     else f"{ours[alg]['median_s'] / r['median_s']:.2f}")
            peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f}"
            print(f"{impl:10s} {alg:5s} {r['median_s']:9.4f} {r['min_s']:8.4f}-{r['max_s']:<8.4f} "
                  f"{r['flops'] / 1e9:8.1f} {r['gflops_per_s']:8.1f} "
                  f"{100 * r['gflops_per_s'] / m['gemm_gflops']:6.1f}% {peak:>8s} {ratio:>8s}")
    if "peer_threads" in res:
        print(f"ours/it = refdtp median / that implementation's median ({res['peer_threads']} torch threads, "
              "TF32 off). official: F(x) re-run per feedback iteration (8 C_n); competent: clean "
              "indices kept (7 C_n); refdtp: 4 C_n")
    for what, err in [("peer", res.get("peer_error"))] + list(res.get("step_errors", {}).items()):
        if err:
            print(f"{what}: not measured ({err})")


def profile_all(args, cfg, net, xp, x, y, gemm_gflops: float) -> dict:
    """One warm-up step, then :func:`refdtp.bench.profile.profile_step` per algorithm; prints each table."""
    out = {}
    for alg in args.algorithms:
        cfg.algorithm = alg
        state = init_state(cfg, net, args.backend)
        train_step(cfg, net, state, x, y, cfg.lr)  # warm-up: first-touch pages, kernel compiles
        out[alg] = profile_step(cfg, net, state, x, y, cfg.lr, lambda: synchronize(xp))
        ideal = _flops(net, args, cfg, "refdtp", alg) / (gemm_gflops * 1e9)
        print(format_profile(alg, out[alg], ideal), flush=True)
    return out


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
                       "gemm_gflops": gemm_rate(xp, args.gemm_size)}}
    if args.profile:
        res["profile"] = profile_all(args, cfg, net, xp, x, y, res["machine"]["gemm_gflops"])
    else:
        res.update(run(args, cfg, net, xp, x, y, x_host, y_host))
        report(res)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1, default=str)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
