"""data_loaders on CuPy: identical batches from identical host draws (needs a GPU)."""
import numpy as np
import pytest

import data_loaders as dl
from refdtp import backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not backend.gpu_available(), reason="needs CuPy and an NVIDIA GPU"),
]


@pytest.fixture(scope="module")
def data():
    ds = dl.load_dataset("synthetic", n_train=300, n_test=1, image_shape=(3, 32, 32), seed=0)
    return ds.train_images, ds.train_labels


def test_crop_flip_parity(data, rng):
    x = data[0][:64]
    offsets, flips = dl.draw_crop_flip(rng, 64, pad=4)
    host = dl.random_crop_flip(x, offsets, flips)
    dev = dl.random_crop_flip(backend.to_backend(x, "cupy"), offsets, flips)
    assert backend.backend_name(dev) == "cupy" and dev.dtype == np.uint8
    np.testing.assert_array_equal(backend.to_host(dev), host)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_normalize_parity(data, dtype, tol):
    x = data[0][:16]
    dev = dl.normalize(backend.to_backend(x, "cupy"), "cifar10", dtype)
    assert dev.dtype == dtype
    np.testing.assert_allclose(backend.to_host(dev), dl.normalize(x, "cifar10", dtype),
                               rtol=tol, atol=tol)


def test_iterate_batches_parity(data):
    kw = dict(seed=5, epoch=3, start_step=1, augment=True, normalization="cifar10")
    host = list(dl.iterate_batches(*data, 64, backend="numpy", **kw))
    dev = list(dl.iterate_batches(*data, 64, backend="cupy", **kw))
    assert len(host) == len(dev) == 3
    for (xh, yh), (xd, yd) in zip(host, dev, strict=True):
        assert backend.backend_name(xd) == "cupy" and backend.backend_name(yd) == "cupy"
        np.testing.assert_array_equal(backend.to_host(yd), yh)
        np.testing.assert_allclose(backend.to_host(xd), xh, rtol=1e-6, atol=1e-6)
