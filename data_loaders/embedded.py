"""Datasets that need no file and no network.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images,
  values 0..16 rescaled to 0..255) with a fixed seeded 1437/360 split.
- ``synthetic``: learnable class-conditional images of any (C, H, W) and class
  count, a deterministic function of the seed, for tests and smoke runs.
"""
from __future__ import annotations

import numpy as np

from refdtp.backend import host_rng

from .dataset import Dataset

#: ``host_rng`` purpose keys (see also data_loaders.batches).
PURPOSE_DIGITS_SPLIT = 7104
PURPOSE_SYNTHETIC = 7105
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 360


def load_digits() -> Dataset:
    """The 8x8 digits as (1437, 1, 8, 8) train and (360, 1, 8, 8) test uint8 images."""
    from sklearn.datasets import load_digits as _sk_load_digits  # slow import: only here

    bunch = _sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    perm = host_rng(DIGITS_SPLIT_SEED, PURPOSE_DIGITS_SPLIT).permutation(len(labels))
    test, train = np.sort(perm[:DIGITS_TEST_SIZE]), np.sort(perm[DIGITS_TEST_SIZE:])
    return Dataset(name="digits", class_names=[str(d) for d in range(10)], normalization="digits",
                   train_images=images[train], train_labels=labels[train],
                   test_images=images[test], test_labels=labels[test])


def make_synthetic(n_train: int = 1000, n_test: int = 200, num_classes: int = 10,
                   image_shape=(3, 32, 32), seed: int = 0, noise: float = 0.3,
                   grid: int = 4) -> Dataset:
    """Class-conditional images: a smooth random prototype per class plus noise.

    Each class k has a prototype P_k in [0, 1]^(C, H, W): a ``grid`` x ``grid``
    random pattern per channel, enlarged to (H, W). An example of class k is
    clip(P_k + noise * z, 0, 1) * 255 with z standard normal. Labels cycle over
    the classes in a random order, so every class has n // K or n // K + 1 examples.

    Args:
        n_train, n_test: split sizes.
        num_classes: K >= 1.
        image_shape: (C, H, W).
        seed: everything is a function of the seed (and the other arguments).
        noise: pixel noise std in [0, 1] units; larger is harder.
        grid: resolution of the prototype patterns.

    Returns:
        A :class:`Dataset` named "synthetic" with normalization "half".
    """
    c, h, w = (int(s) for s in image_shape)
    if min(c, h, w, num_classes) < 1 or min(n_train, n_test) < 0:
        raise ValueError(f"bad synthetic sizes: image_shape {image_shape}, "
                         f"num_classes {num_classes}, n_train {n_train}, n_test {n_test}")
    coarse = host_rng(seed, PURPOSE_SYNTHETIC, 0).random((num_classes, c, grid, grid))
    rows, cols = (np.arange(h) * grid) // h, (np.arange(w) * grid) // w
    protos = coarse[:, :, rows][:, :, :, cols]  # (K, C, H, W) nearest-neighbour enlargement
    splits = [_synthetic_split(protos, n, noise, host_rng(seed, PURPOSE_SYNTHETIC, 1 + i))
              for i, n in enumerate((n_train, n_test))]
    return Dataset(name="synthetic", class_names=[f"class_{k}" for k in range(num_classes)],
                   normalization="half", train_images=splits[0][0], train_labels=splits[0][1],
                   test_images=splits[1][0], test_labels=splits[1][1])


def _synthetic_split(protos, n, noise, rng):
    k = len(protos)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % k)
    x = protos[labels] + noise * rng.standard_normal((n,) + protos.shape[1:])
    return np.rint(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8), labels
