"""``python -m refdtp.bench.gpu_check_warmup``: time the first training steps (kernel compilation).

On CuPy the first use of every kernel compiles it with NVRTC (then it is cached
on disk, ~/.cupy/kernel_cache); the first step of each algorithm is therefore
much slower than the second. Prints, per algorithm, the first and second step
times of a small SimpleVGG (the paper's CIFAR-10 blocks, fewer channels) as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from ..algorithms import init_state, train_step
from ..backend import get_xp, host_rng, synchronize, to_backend
from ..config import build_network
from ..training.presets import get_preset
from .flops import scaled_channels, scaled_iterations

ALGORITHMS = ("ldrl", "bp", "dtp", "tp", "drl")


def first_steps(backend: str, batch: int, width: float, algorithms=ALGORITHMS) -> dict:
    """{alg: {"first_s", "second_s"}} of two training steps from a fresh state."""
    xp = get_xp(backend)
    out = {}
    for alg in algorithms:
        cfg = get_preset("cifar10-ldrl")
        cfg.algorithm = alg
        cfg.channels = scaled_channels(cfg.channels, width)
        cfg.feedback_iterations = scaled_iterations(cfg.feedback_iterations, 0.01)
        net = build_network(cfg, (3, 32, 32), 10)
        rng = host_rng(0, 97)
        x = to_backend(rng.standard_normal((batch, 3, 32, 32), dtype=np.float32), backend)
        y = to_backend(rng.integers(0, 10, batch), backend)
        state, times = init_state(cfg, net, backend), []
        for _ in range(2):
            synchronize(xp)
            t = time.perf_counter()
            state = train_step(cfg, net, state, x, y, cfg.lr)[0]
            synchronize(xp)
            times.append(round(time.perf_counter() - t, 4))
        out[alg] = {"first_s": times[0], "second_s": times[1]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m refdtp.bench.gpu_check_warmup")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="cupy")
    p.add_argument("--tiny", action="store_true", help="batch 2, 1/16 of the channels")
    args = p.parse_args(argv)
    t = time.perf_counter()
    res = first_steps(args.backend, 2 if args.tiny else 16, 1 / 16 if args.tiny else 0.25)
    res["total_s"] = round(time.perf_counter() - t, 2)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
