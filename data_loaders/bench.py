"""Throughput of the input pipeline: gather + transfer + augment + normalise.

    python -m data_loaders.bench [--batch 128] [--n-batches 400] [--backend numpy]
                                 [--data-dir DIR] [--dtype float32]

Uses real CIFAR-10 when the data folder holds it (never downloads), otherwise
synthetic uint8 images of the same shape (50000, 3, 32, 32); the output says
which. Prints figures only; it is not a test.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from refdtp.backend import get_xp, host_rng, synchronize

from .batches import iterate_batches
from .errors import DataError


def cifar10_or_synthetic(data_dir):
    """(images, labels, description): real CIFAR-10 train split if found locally."""
    from .cifar import load_cifar
    try:
        ds = load_cifar("cifar10", data_dir, download=False)
        return ds.train_images, ds.train_labels, f"real CIFAR-10 ({len(ds.train_labels)} images)"
    except DataError:
        rng = host_rng(0, 7199)
        images = rng.integers(0, 256, size=(50000, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=50000).astype(np.int64)
        return images, labels, "synthetic uint8 data of CIFAR-10 shape (no CIFAR-10 found)"


def time_pipeline(images, labels, *, batch, n_batches, backend, dtype, augment, normalization):
    """Images per second over ``n_batches`` batches (after 5 warm-up batches)."""
    xp = get_xp(backend)
    kw = dict(seed=0, shuffle=True, drop_last=True, augment=augment,
              normalization=normalization, backend=backend, dtype=dtype)
    for _ in zip(range(5), iterate_batches(images, labels, batch, epoch=0, **kw), strict=False):  # 5 batches
        pass
    synchronize(xp)
    done, epoch, t0 = 0, 1, time.perf_counter()
    while done < n_batches:
        for _ in iterate_batches(images, labels, batch, epoch=epoch, **kw):
            done += 1
            if done == n_batches:
                break
        epoch += 1
    synchronize(xp)
    return n_batches * batch / (time.perf_counter() - t0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--n-batches", type=int, default=400)
    p.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = p.parse_args(argv)
    images, labels, what = cifar10_or_synthetic(args.data_dir)
    print(f"data: {what}; batch {args.batch}; {args.n_batches} batches; "
          f"backend {args.backend}; dtype {args.dtype}")
    stages = (("gather + transfer only (uint8)", False, None, np.uint8),
              ("+ normalise", False, "cifar10", args.dtype),
              ("+ crop/flip + normalise (training pipeline)", True, "cifar10", args.dtype))
    for label, augment, norm, dtype in stages:
        rate = time_pipeline(images, labels, batch=args.batch, n_batches=args.n_batches,
                             backend=args.backend, dtype=dtype, augment=augment,
                             normalization=norm)
        print(f"  {label:45s} {rate:12,.0f} images/s  "
              f"({1e3 * args.batch / rate:.3f} ms/batch)")


if __name__ == "__main__":
    main()
