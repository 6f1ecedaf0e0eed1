"""The GPU code paths of the max-pool ops, exercised on NumPy.

- ``scatter_windows`` (overlapping un-pool without bincount's two host syncs) is bitwise
  equal to the ``bincount`` path in float32 and float64, for every overlapping geometry.
- MaxPool2d's index tables are built (uploaded, on a GPU) once per geometry, not per forward.
"""
import numpy as np
import pytest

from refdtp.ops import pool as pool_mod
from refdtp.ops.pool import MaxPool2d, scatter_plane, scatter_windows

GEOMS = [(6, 12, 12, 3, 2, 1), (3, 7, 9, 3, 2, 1), (2, 5, 5, 3, 1, 1), (2, 8, 8, 4, 2, 2),
         (2, 6, 6, 5, 3, 2), (1, 1, 1, 3, 2, 1), (2, 4, 4, 3, 2, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", GEOMS, ids=[str(g) for g in GEOMS])
def test_scatter_windows_is_bitwise_equal_to_bincount(geom, dtype, rng):
    C, H, W, k, s, p = geom
    pool = MaxPool2d((C, H, W), k, s, p)
    x = rng.standard_normal((3, C, H, W)).astype(dtype)
    y, idx = pool.forward({}, x)
    # magnitudes over 17 decades: a different summation order would show in the last bits
    v = (rng.standard_normal(y.shape) * np.exp(rng.uniform(-20, 20, y.shape))).astype(dtype)
    ref = scatter_plane(v, idx, (H, W), unique=False)
    out = scatter_windows(v, idx, pool)
    assert out.dtype == ref.dtype and out.flags.c_contiguous
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(pool.vjp({}, idx, v), ref)
    np.testing.assert_array_equal(pool.inverted().jvp({}, idx, v), ref)


@pytest.mark.parametrize("geom", GEOMS, ids=[str(g) for g in GEOMS])
def test_window_offsets_invert_the_plane_indices(geom, rng):
    C, H, W, k, s, p = geom
    pool = MaxPool2d((C, H, W), k, s, p)
    _, idx = pool.forward({}, rng.standard_normal((2, C, H, W)))
    t = pool.window_offsets(idx)
    assert t.min() >= 0 and t.max() < k * k
    np.testing.assert_array_equal(pool._plane_indices(t.astype(np.int16), W), idx)


def test_maxpool_index_tables_are_built_once_per_geometry(rng):
    pool_mod._index_tables.cache_clear()
    pool = MaxPool2d((3, 8, 8), 3, 2, 1)
    x = rng.standard_normal((2, 3, 8, 8))
    first = pool.forward({}, x)[1]
    for _ in range(3):
        np.testing.assert_array_equal(pool.forward({}, x)[1], first)
    info = pool_mod._index_tables.cache_info()
    assert info.misses == 1 and info.hits == 3
