"""data_loaders.transforms: crop/flip against a naive per-image reference; normalisation."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import data_loaders as dl
from data_loaders.transforms import draw_crop_flip, random_crop_flip

shapes = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9))


def naive_crop_flip(x, offsets, flips, pad):
    """Per-image loop: flip, pad with edge replication, crop (torchvision's order)."""
    out = np.empty_like(x)
    h, w = x.shape[2:]
    for i, img in enumerate(x):
        img = img[:, :, ::-1] if flips[i] else img
        padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
        dy, dx = offsets[i]
        out[i] = padded[:, dy:dy + h, dx:dx + w]
    return out


@settings(deadline=None, max_examples=40)
@given(shape=shapes, pad=st.integers(0, 5), seed=st.integers(0, 2**32 - 1))
def test_crop_flip_equals_the_naive_edge_padded_reference(shape, pad, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    offsets, flips = draw_crop_flip(rng, shape[0], pad)
    got = random_crop_flip(x, offsets, flips, pad)
    want = naive_crop_flip(x, offsets, flips, pad)
    assert got.dtype == x.dtype and got.shape == x.shape
    np.testing.assert_array_equal(got, want, err_msg=f"offsets {offsets}, flips {flips}")


@settings(deadline=None)
@given(shape=shapes, pad=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_flip_without_shift_is_an_involution(shape, pad, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    centre = np.full((shape[0], 2), pad)
    flips = rng.random(shape[0]) < 0.5
    once = random_crop_flip(x, centre, flips, pad)
    np.testing.assert_array_equal(once, np.where(flips[:, None, None, None], x[..., ::-1], x))
    np.testing.assert_array_equal(random_crop_flip(once, centre, flips, pad), x)


def test_crop_shift_replicates_the_edge():
    x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)
    # offset (0, 2*pad) with pad 1: shift down by 1 (top row repeated) and left by 1.
    out = random_crop_flip(x, np.array([[0, 2]]), np.array([False]), pad=1)
    want = np.array([[1, 2, 3, 3], [1, 2, 3, 3], [5, 6, 7, 7], [9, 10, 11, 11]])
    np.testing.assert_array_equal(out[0, 0], want)


def test_draw_crop_flip_ranges_and_determinism():
    a = draw_crop_flip(np.random.default_rng(3), 4000, pad=4)
    b = draw_crop_flip(np.random.default_rng(3), 4000, pad=4)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].min() == 0 and a[0].max() == 8, "offsets must cover 0..2*pad"
    assert 0.45 < a[1].mean() < 0.55, "flips must have probability 1/2"


@settings(deadline=None)
@given(name=st.sampled_from(sorted(dl.NORMALIZATIONS)), n=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_denormalize_inverts_normalize(name, n, seed):
    channels = len(dl.NORMALIZATIONS[name][0])
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, channels, 3, 2), dtype=np.uint8)
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-3)):
        y = dl.normalize(x, name, dtype)
        assert y.dtype == dtype
        np.testing.assert_allclose(dl.denormalize(y, name), x, rtol=0, atol=tol,
                                   err_msg=f"{name} {np.dtype(dtype)}")


def test_normalize_values():
    mean, std = dl.NORMALIZATIONS["cifar10"]
    x = np.zeros((1, 3, 1, 1), np.uint8)
    np.testing.assert_allclose(dl.normalize(x, "cifar10", np.float64).ravel(),
                               -np.array(mean) / np.array(std), rtol=1e-12)
    np.testing.assert_allclose(dl.normalize(np.full((1, 5, 1, 1), 255, np.uint8), None), 1.0)
    assert dl.NORMALIZATIONS["cifar10_3std"][1] == pytest.approx((0.6069, 0.5982, 0.603))
    np.testing.assert_allclose(dl.normalize(x + 51, ((0.1,), (0.5,)), np.float64), 0.2)


def test_normalize_rejects_bad_statistics():
    x = np.zeros((1, 3, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="mean has 2 values; images have 3 channels"):
        dl.normalize(x, ((0.1, 0.2), (1.0, 1.0)))
    with pytest.raises(ValueError, match="unknown normalization 'cifar11'"):
        dl.normalize(x, "cifar11")
    with pytest.raises(ValueError, match="positive"):
        dl.normalize(x, ((0.0,), (0.0,)))
