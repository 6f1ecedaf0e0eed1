"""Seeded, restartable mini-batch iteration with on-device augmentation.

The order of epoch e is ``host_rng(seed, PURPOSE_SHUFFLE, e).permutation(n)``
and the crop/flip draws of step s are from ``host_rng(seed, PURPOSE_AUGMENT, e, s)``.
Nothing depends on earlier steps, so ``iterate_batches(..., epoch=e,
start_step=s)`` yields exactly the batches an uninterrupted run sees from step
s on. Each batch crosses to the device once, as uint8; augmentation and
normalisation run there.
"""
from __future__ import annotations

import numpy as np

from refdtp.backend import host_rng, to_backend

from .transforms import draw_crop_flip, normalize, random_crop_flip

#: ``host_rng`` purpose keys of this package (distinct streams per purpose).
PURPOSE_SHUFFLE = 7101
PURPOSE_AUGMENT = 7102
PURPOSE_SPLIT = 7103


def num_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Batches per epoch over ``n`` examples."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """(n,) int64 order in which epoch ``epoch`` visits the examples."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return host_rng(seed, PURPOSE_SHUFFLE, epoch).permutation(n).astype(np.int64)


def iterate_batches(images, labels, batch_size: int, *, seed: int, epoch: int,
                    start_step: int = 0, indices=None, shuffle: bool = True,
                    drop_last: bool = True, augment: bool = False, pad: int = 4,
                    normalization=None, backend: str = "numpy", dtype=np.float32):
    """The mini-batches of one epoch, from step ``start_step`` on.

    Args:
        images: (N, C, H, W) uint8 host array, or a lazy array supporting
            ``images[indices]`` (:class:`~data_loaders.cache.H5Images`).
        labels: (N,) int host array.
        batch_size: examples per batch.
        seed: base seed of the run.
        epoch: epoch number (selects the shuffle and augmentation streams).
        start_step: first step to yield (to resume); 0 <= start_step <= number of batches.
        indices: optional subset of example indices to iterate over (e.g. the
            train part of :func:`train_val_split`); default all N.
        shuffle: visit the examples in a seeded random order (else in order).
        drop_last: skip the final incomplete batch.
        augment: random crop (``pad``-pixel edge padding) and horizontal flip.
        pad: crop padding.
        normalization: see :func:`~data_loaders.transforms.normalize`.
        backend: "numpy" or "cupy"; where the batches live.
        dtype: float32/float64 for normalised output, or uint8 for raw pixels
            (then ``normalization`` must be None).

    Returns:
        An iterator of ``(x, y)``: x is a (B, C, H, W) array of ``dtype`` and y a
        (B,) int64 array, both on ``backend``. Arguments are checked at the call.
    """
    dtype = np.dtype(dtype)
    _check_args(images, labels, dtype, normalization)
    order = np.arange(len(labels), dtype=np.int64) if indices is None else (
        np.asarray(indices, dtype=np.int64))
    order = order[epoch_order(len(order), seed=seed, epoch=epoch, shuffle=shuffle)]
    steps = num_batches(len(order), batch_size, drop_last)
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step {start_step} outside 0..{steps} ({steps} batches per epoch)")
    return _batches(images, np.asarray(labels), order, batch_size, seed, epoch,
                    range(start_step, steps), augment, pad, normalization, backend, dtype)


def _batches(images, labels, order, batch_size, seed, epoch, steps, augment, pad,
             normalization, backend, dtype):
    """The generator behind :func:`iterate_batches` (arguments already checked)."""
    for step in steps:
        idx = order[step * batch_size:(step + 1) * batch_size]
        x = to_backend(np.asarray(images[idx]), backend)  # the one host -> device copy
        if augment:
            offsets, flips = draw_crop_flip(host_rng(seed, PURPOSE_AUGMENT, epoch, step),
                                            len(idx), pad)
            x = random_crop_flip(x, offsets, flips, pad)
        if dtype != np.uint8:
            x = normalize(x, normalization, dtype)
        yield x, to_backend(labels[idx].astype(np.int64), backend)


def _check_args(images, labels, dtype, normalization):
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if np.dtype(images.dtype) != np.uint8:
        raise TypeError(f"images must be uint8 (pixels 0..255), got {images.dtype}")
    if dtype == np.uint8:
        if normalization is not None:
            raise ValueError("dtype uint8 returns raw pixels: normalization must be None")
    elif dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32, float64 or uint8, got {dtype}")


def train_val_split(n: int, val_fraction: float, seed: int):
    """Seeded split of ``range(n)`` into train and validation indices.

    Args:
        n: number of examples.
        val_fraction: share held out for validation, in [0, 1).
        seed: split seed (stream ``host_rng(seed, PURPOSE_SPLIT)``).

    Returns:
        train, val: sorted int64 index arrays; ``round(n * val_fraction)`` in val.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    perm = host_rng(seed, PURPOSE_SPLIT).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(perm[n_val:]).astype(np.int64), np.sort(perm[:n_val]).astype(np.int64)


def per_class_split(labels, per_class: int, seed: int):
    """Seeded split holding out ``per_class`` examples of every class.

    Matches scalingDTP HEAD's ImageNet32 validation set (50 per class).

    Args:
        labels: (N,) int labels.
        per_class: held-out examples per class (each class needs more than this).
        seed: split seed.

    Returns:
        train, val: sorted int64 index arrays.
    """
    labels = np.asarray(labels)
    perm = host_rng(seed, PURPOSE_SPLIT, 1).permutation(len(labels))
    by_class = perm[np.argsort(labels[perm], kind="stable")]  # grouped by class, shuffled within
    classes, starts, counts = np.unique(labels[by_class], return_index=True, return_counts=True)
    if np.any(counts <= per_class):
        raise ValueError(f"class {classes[np.argmin(counts)]} has only {counts.min()} examples; "
                         f"cannot hold out {per_class}")
    val_mask = np.zeros(len(labels), bool)
    take = (starts[:, None] + np.arange(per_class)).ravel()
    val_mask[by_class[take]] = True
    return np.flatnonzero(~val_mask).astype(np.int64), np.flatnonzero(val_mask).astype(np.int64)
