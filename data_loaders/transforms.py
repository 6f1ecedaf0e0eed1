"""Normalisation and crop/flip augmentation of image batches, on NumPy or CuPy.

Every function takes (N, C, H, W) arrays on either backend and works through
``xp = array_module(x)``. Random choices (crop offsets, flip bits) are drawn on
the host by :func:`draw_crop_flip` from an explicit generator and passed in, so
both backends produce identical batches from identical draws.
"""
from __future__ import annotations

import numpy as np

from refdtp.backend import array_module, backend_name, to_backend

#: Per-channel (mean, std) of pixel values scaled to [0, 1]. A 1-tuple applies
#: to every channel.
NORMALIZATIONS = {
    # pl_bolts / scalingDTP HEAD statistics.
    "cifar10": (tuple(v / 255 for v in (125.3, 123.0, 113.9)),
                tuple(v / 255 for v in (63.0, 62.1, 66.7))),
    # Legacy scalingDTP runs: 3x the usual std (issue #18; pairs with lr_f = 0.08).
    "cifar10_3std": ((0.4914, 0.4822, 0.4465), (3 * 0.2023, 3 * 0.1994, 3 * 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "mnist": ((0.1307,), (0.3081,)),
    "fmnist": ((0.2860,), (0.3530,)),
    # sklearn 8x8 digits, train split of data_loaders.embedded (values 0..16 -> 0..255).
    "digits": ((0.3055,), (0.3758,)),
    # Maps [0, 1] to [-1, 1]; used for the synthetic data.
    "half": ((0.5,), (0.5,)),
}


def normalization_stats(normalization, channels: int):
    """(mean, std) float64 arrays of length ``channels``; None means mean 0, std 1.

    Raises:
        ValueError: an unknown name, statistics for another number of channels, or std <= 0.
    """
    if normalization is None:
        mean, std = (0.0,), (1.0,)
    elif isinstance(normalization, str):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; choose one of "
                             f"{sorted(NORMALIZATIONS)} or pass (mean, std)")
        mean, std = NORMALIZATIONS[normalization]
    else:
        mean, std = normalization
    mean = np.atleast_1d(np.asarray(mean, np.float64))
    std = np.atleast_1d(np.asarray(std, np.float64))
    for what, v in (("mean", mean), ("std", std)):
        if v.ndim != 1 or len(v) not in (1, channels):
            raise ValueError(f"normalization {what} has {len(v)} values; images have "
                             f"{channels} channels")
    if np.any(std <= 0):
        raise ValueError(f"normalization std must be positive, got {std}")
    return np.broadcast_to(mean, (channels,)), np.broadcast_to(std, (channels,))


def normalize(x, normalization=None, dtype=np.float32):
    """``(x / 255 - mean) / std`` per channel.

    Args:
        x: (N, C, H, W) pixels in 0..255 (uint8 or float), NumPy or CuPy.
        normalization: a key of :data:`NORMALIZATIONS`, a (mean, std) pair in
            [0, 1] units, or None (just scale to [0, 1]).
        dtype: output float dtype.

    Returns:
        (N, C, H, W) array of ``dtype`` on the backend of ``x``.
    """
    mean, std = normalization_stats(normalization, x.shape[1])
    scale, shift = _per_channel(x, 1.0 / (255.0 * std), -mean / std, dtype)
    y = x.astype(dtype)
    y *= scale
    y += shift
    return y


def denormalize(y, normalization=None):
    """Inverse of :func:`normalize`: pixels in 0..255 (float, dtype of ``y``)."""
    mean, std = normalization_stats(normalization, y.shape[1])
    scale, shift = _per_channel(y, 255.0 * std, 255.0 * mean, y.dtype)
    return y * scale + shift


_PER_CHANNEL_CACHE: dict = {}


def _per_channel(x, scale, shift, dtype):
    """Two (1, C, 1, 1) arrays of ``dtype`` on the backend of ``x``.

    Cached by value, dtype and backend: on a GPU they are uploaded once, not
    once per batch (a host -> device copy and a sync each).
    """
    name = backend_name(x)
    key = (name, np.dtype(dtype).str, np.asarray(scale).tobytes(), np.asarray(shift).tobytes())
    if key not in _PER_CHANNEL_CACHE:
        _PER_CHANNEL_CACHE[key] = tuple(to_backend(v.reshape(1, -1, 1, 1), name, dtype)
                                        for v in (scale, shift))
    return _PER_CHANNEL_CACHE[key]


def draw_crop_flip(rng: np.random.Generator, n: int, pad: int = 4):
    """Host-side random choices for :func:`random_crop_flip`.

    Args:
        rng: seeded generator (e.g. ``host_rng(seed, PURPOSE, epoch, step)``).
        n: batch size.
        pad: padding of the crop; offsets lie in ``0..2*pad``.

    Returns:
        offsets: (n, 2) int64 (row, column) position of the crop in the padded image.
        flips: (n,) bool, True where the image is flipped left-right.
    """
    offsets = rng.integers(0, 2 * pad + 1, size=(n, 2), dtype=np.int64)
    flips = rng.random(n) < 0.5
    return offsets, flips


def random_crop_flip(x, offsets, flips, pad: int = 4):
    """Flip, pad by edge replication, and crop back to (H, W); the whole batch at once.

    Image i is flipped left-right if ``flips[i]``, padded by ``pad`` pixels on each
    side repeating its border pixels, and cropped at ``offsets[i]``. The padding is
    never built: output pixel (r, c) reads input row clip(r + dy - pad, 0, H-1) and
    column clip(c + dx - pad, 0, W-1) (mirrored when flipped), which is the same.

    Args:
        x: (N, C, H, W) array, any dtype, NumPy or CuPy.
        offsets: (N, 2) ints in 0..2*pad (host or same backend as ``x``).
        flips: (N,) bools.
        pad: padding width.

    Returns:
        (N, C, H, W) array of the dtype and backend of ``x``.
    """
    xp = array_module(x)
    n, c, h, w = x.shape
    offsets = to_backend(offsets, backend_name(x), np.int64)
    flips = to_backend(flips, backend_name(x), bool)
    if offsets.shape != (n, 2) or flips.shape != (n,):
        raise ValueError(f"expected offsets ({n}, 2) and flips ({n},), got "
                         f"{offsets.shape} and {flips.shape}")
    rows = xp.clip(offsets[:, :1] - pad + xp.arange(h), 0, h - 1)  # (N, H)
    cols = xp.clip(offsets[:, 1:] - pad + xp.arange(w), 0, w - 1)  # (N, W)
    cols = xp.where(flips[:, None], w - 1 - cols, cols)
    src = (rows * w)[:, :, None] + cols[:, None, :]  # (N, H, W) pixel index within a channel
    src += (xp.arange(n) * (c * h * w))[:, None, None]  # ... within the flat batch, channel 0
    flat = xp.ascontiguousarray(x).reshape(-1)
    out = xp.empty_like(x)
    for ch in range(c):  # one gather per channel reuses the (N, H, W) index
        out[:, ch] = xp.take(flat, src + ch * h * w)
    return out
