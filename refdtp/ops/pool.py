"""Max pooling with explicit argmax indices, max un-pooling, average pooling.

Indices follow PyTorch: for each output position, the flat index h*W + w of
the selected input pixel within its (H, W) plane. They are returned to the
caller and passed back explicitly (a "route"), never kept in hidden state,
unlike scalingDTP's one-slot "magic bridge" buffer (docs/conventions.md §3).

Un-pooling is the adjoint of max-pooling for the given indices: it *sums*
the values routed to the same input pixel. For non-overlapping windows every
pixel gets at most one value and this equals PyTorch's MaxUnpool2d; for
overlapping windows (LeNet's 3/2/1 pools) PyTorch writes instead of summing,
so its un-pool is not the adjoint (docs/algorithm.md §5.3). We keep the
exact adjoint and say so.
"""
from __future__ import annotations

import functools

from ..backend import array_module
from .base import Op, check_input
from .conv import conv_output_size, pad2d
from .scratch import device_key


class _Pool2d(Op):
    """Window geometry shared by the pools: k x k windows, stride s, padding p."""

    def __init__(self, kind: str, in_shape: tuple, k: int, stride: int | None, padding: int):
        C, H, W = in_shape
        self.k, self.stride, self.padding = k, stride or k, padding
        self.in_shape = tuple(in_shape)
        self.out_shape = (C, conv_output_size(H, k, self.stride, padding),
                          conv_output_size(W, k, self.stride, padding))
        self.name = f"{kind}(k={k}, s={self.stride}, p={padding})"

    def _offsets(self):
        """(t, i, j, rows, cols): window offset t = i*k + j and the strided slices it reads
        (a loop over the k*k offsets, never over pixels)."""
        k, s = self.k, self.stride
        _, Ho, Wo = self.out_shape
        for i in range(k):
            for j in range(k):
                yield i * k + j, i, j, slice(i, i + s * (Ho - 1) + 1, s), slice(j, j + s * (Wo - 1) + 1, s)


class MaxPool2d(_Pool2d):
    """y[b,c,h,w] = max over the window of x; indices of the maxima.

    Args:
        in_shape: (C, H, W).
        k: window size; stride (default k); padding (implicit -inf), as in PyTorch.

    Forward cache (and route): indices (B, C, Ho, Wo) int64.
    """

    def __init__(self, in_shape: tuple, k: int, stride: int | None = None, padding: int = 0):
        if padding > k // 2:
            raise ValueError(f"MaxPool2d: padding {padding} must be at most k/2 = {k // 2}")
        super().__init__("MaxPool2d", in_shape, k, stride, padding)
        self.overlapping = self.stride < k

    def forward(self, p, x, route=None):
        """x: (B, C, H, W) -> (y (B, C, Ho, Wo), indices (B, C, Ho, Wo)).

        A running maximum over the k*k window offsets (a loop over offsets,
        never over pixels): each offset reads one strided view of x, and a
        strict comparison keeps the first maximum on ties, like PyTorch.
        """
        check_input(x, self.in_shape, self.name)
        xp = array_module(x)
        B, C, H, W = x.shape
        pad = self.padding
        if pad:
            xpad = xp.full((B, C, H + 2 * pad, W + 2 * pad), -xp.inf, dtype=x.dtype)
            xpad[:, :, pad:pad + H, pad:pad + W] = x
        else:
            xpad = x
        y = local = None
        for t, _, _, rows, cols in self._offsets():
            v = xpad[:, :, rows, cols]
            if y is None:
                y = v.copy()
                local = xp.zeros(y.shape, dtype=xp.int16)  # window offset t of the maximum
                continue
            better = v > y
            xp.maximum(y, v, out=y)
            xp.copyto(local, t, where=better)
        return y, self._plane_indices(local, W)

    def _tables(self, xp):
        """Cached (shift (k*k,), row0 (Ho, 1), col0 (Wo,)) int64 index tables on ``xp``'s device."""
        _, Ho, Wo = self.out_shape
        return _index_tables(xp, device_key(xp), self.k, self.stride, self.padding, self.in_shape[2], Ho, Wo)

    def _plane_indices(self, local, W: int):
        """Window offsets t = i*k + j -> PyTorch plane indices (s*h - p + i)*W + (s*w - p + j)."""
        shift, row0, col0 = self._tables(array_module(local))
        out = shift[local]  # one gather, then one add
        out += row0 * W + col0
        return out

    def window_offsets(self, indices):
        """Plane indices (B, C, Ho, Wo) -> window offsets t = i*k + j (the inverse of _plane_indices)."""
        xp = array_module(indices)
        _, row0, col0 = self._tables(xp)
        W = self.in_shape[2]
        rows = indices // W
        return (rows - row0) * self.k + (indices - rows * W - col0)

    def jvp(self, p, indices, dx):
        return gather_plane(dx, indices)

    def vjp(self, p, indices, dy):
        if self.overlapping:
            return unpool_overlapping(dy, indices, self)
        return scatter_plane(dy, indices, self.in_shape[1:], unique=True)

    def inverted(self) -> MaxUnpool2d:
        return MaxUnpool2d(self)


class MaxUnpool2d(Op):
    """Places each value at its stored argmax position, zeros elsewhere.

    The adjoint of the paired :class:`MaxPool2d` for the given indices (which
    arrive as the route). Maps (C, Ho, Wo) -> (C, H, W). Cache: indices.
    """
    needs_route = True
    linear = True

    def __init__(self, pool: MaxPool2d):
        self.pool = pool
        self.in_shape, self.out_shape = pool.out_shape, pool.in_shape
        self.name = f"MaxUnpool2d(k={pool.k}, s={pool.stride}, p={pool.padding})"

    def forward(self, p, y, route=None):
        check_input(y, self.in_shape, self.name)
        if tuple(route.shape) != tuple(y.shape):
            raise ValueError(f"{self.name}: indices of shape {tuple(route.shape)} do not match "
                             f"input of shape {tuple(y.shape)}")
        return self.jvp(p, route, y), route

    def jvp(self, p, indices, dy):
        if self.pool.overlapping:
            return unpool_overlapping(dy, indices, self.pool)
        return scatter_plane(dy, indices, self.out_shape[1:], unique=True)

    def vjp(self, p, indices, dx):
        return gather_plane(dx, indices)

    def inverted(self) -> MaxPool2d:
        return self.pool


def _flat_indices(indices, plane_size: int):
    """Plane indices (B, C, Ho, Wo) -> indices into the flattened (B, C, H, W) array."""
    xp = array_module(indices)
    B, C = indices.shape[:2]
    offsets = (xp.arange(B * C, dtype=indices.dtype) * plane_size).reshape(B, C, 1, 1)
    return (indices + offsets).ravel()


def scatter_plane(values, indices, hw: tuple, unique: bool):
    """out[b, c].flat[indices[b, c, h, w]] (+)= values[b, c, h, w].

    Args:
        values, indices: (B, C, Ho, Wo).
        hw: (H, W) of the output planes.
        unique: True when no two indices of a plane coincide (non-overlapping
            windows): a plain assignment; otherwise colliding values are summed.
    Returns:
        (B, C, H, W).
    """
    xp = array_module(values)
    B, C = values.shape[:2]
    H, W = hw
    flat = _flat_indices(indices, H * W)
    if unique:
        out = xp.zeros(B * C * H * W, dtype=values.dtype)
        out[flat] = values.ravel()
    else:
        out = xp.bincount(flat, weights=values.ravel(), minlength=B * C * H * W).astype(values.dtype)
    return out.reshape(B, C, H, W)


def unpool_overlapping(values, indices, pool: MaxPool2d):
    """Sum-un-pool for overlapping windows: ``bincount`` on NumPy (fastest there: 0.18 ms vs
    3.3 ms for LeNet's 128x6x14x14 pool), :func:`scatter_windows` on CuPy (no host syncs).
    The two are bitwise equal (tests/test_ops_pool_gpu_paths.py)."""
    if array_module(values).__name__ == "numpy":
        return scatter_plane(values, indices, pool.in_shape[1:], unique=False)
    return scatter_windows(values, indices, pool)


def scatter_windows(values, indices, pool: MaxPool2d):
    """The un-pool sum of :func:`scatter_plane` for overlapping windows, without a scatter.

    One masked strided add per window offset t (k*k of them, never a loop over
    pixels): no atomics and no ``bincount`` (which on CuPy synchronises with
    the host twice per call). Offsets are visited in decreasing t, which is the
    raster order of the windows that share a pixel, i.e. the order in which
    ``bincount`` adds them, and the sum runs in float64 like ``bincount``'s; the
    result is therefore bitwise equal to the ``bincount`` path, and deterministic.

    Args:
        values, indices: (B, C, Ho, Wo); indices are ``pool``'s plane indices.
        pool: the MaxPool2d whose windows the indices point into.
    Returns:
        (B, C, H, W), values' dtype.
    """
    xp = array_module(values)
    B, C = values.shape[:2]
    _, H, W = pool.in_shape
    pad = pool.padding
    t_of = pool.window_offsets(indices)
    out = xp.zeros((B, C, H + 2 * pad, W + 2 * pad), dtype=xp.float64)
    zero = values.dtype.type(0)
    for t, _, _, rows, cols in reversed(list(pool._offsets())):
        out[:, :, rows, cols] += xp.where(t_of == t, values, zero)
    return xp.ascontiguousarray(out[:, :, pad:pad + H, pad:pad + W]).astype(values.dtype, copy=False)


@functools.lru_cache(maxsize=256)
def _index_tables(xp, device: int, k: int, s: int, pad: int, W: int, Ho: int, Wo: int):
    """MaxPool2d's index tables, built (and uploaded) once per geometry and device."""
    shift = xp.asarray([i * W + j for i in range(k) for j in range(k)], dtype=xp.int64)
    row0 = (xp.arange(Ho, dtype=xp.int64) * s - pad).reshape(Ho, 1)
    col0 = xp.arange(Wo, dtype=xp.int64) * s - pad
    return shift, row0, col0


def gather_plane(x, indices):
    """x[b, c].flat[indices[b, c, h, w]] for each output position; (B, C, Ho, Wo)."""
    return x.ravel()[_flat_indices(indices, x.shape[2] * x.shape[3])].reshape(indices.shape)


class AvgPool2d(_Pool2d):
    """y = mean of each window (zero padding counted, as PyTorch's default). Linear."""
    linear = True

    def __init__(self, in_shape: tuple, k: int, stride: int | None = None, padding: int = 0):
        super().__init__("AvgPool2d", in_shape, k, stride, padding)

    def forward(self, p, x, route=None):
        check_input(x, self.in_shape, self.name)
        return self.jvp(p, None, x), None

    def jvp(self, p, cache, dx):
        xp = array_module(dx)
        xpad = pad2d(dx, self.padding)
        B, C = dx.shape[:2]
        y = xp.zeros((B, C) + self.out_shape[1:], dtype=dx.dtype)
        for *_, rows, cols in self._offsets():
            y += xpad[:, :, rows, cols]
        return y / (self.k * self.k)

    def vjp(self, p, cache, dy):
        xp = array_module(dy)
        B, C, H, W = (dy.shape[0],) + self.in_shape
        pad = self.padding
        out = xp.zeros((B, C, H + 2 * pad, W + 2 * pad), dtype=dy.dtype)
        share = dy / (self.k * self.k)
        for *_, rows, cols in self._offsets():
            out[:, :, rows, cols] += share
        return xp.ascontiguousarray(out[:, :, pad:pad + H, pad:pad + W])

    def inverted(self) -> AvgUnpool2d:
        return AvgUnpool2d(self)


class AvgUnpool2d(Op):
    """The adjoint of :class:`AvgPool2d` (spreads each value over its window / k^2)."""
    linear = True

    def __init__(self, pool: AvgPool2d):
        self.pool = pool
        self.in_shape, self.out_shape = pool.out_shape, pool.in_shape
        self.name = f"AvgUnpool2d(k={pool.k}, s={pool.stride}, p={pool.padding})"

    def forward(self, p, y, route=None):
        check_input(y, self.in_shape, self.name)
        return self.pool.vjp(p, None, y), None

    def jvp(self, p, cache, dy):
        return self.pool.vjp(p, None, dy)

    def vjp(self, p, cache, dx):
        return self.pool.jvp(p, None, dx)

    def inverted(self) -> AvgPool2d:
        return self.pool
