"""data_loaders.cache: the HDF5 cache round-trips and never hands out bad data."""
import logging

import h5py
import numpy as np
import pytest

import data_loaders as dl
from data_loaders import testing
from data_loaders.cache import FORMAT_VERSION, CacheWriter, H5Images, open_cache, write_cache


@pytest.fixture
def small():
    return dl.load_dataset("synthetic", n_train=37, n_test=9, num_classes=4,
                           image_shape=(3, 6, 5), seed=1)


def assert_equal_datasets(a, b):
    for f in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)),
                                      err_msg=f)
    assert a.class_names == b.class_names and a.normalization == b.normalization


@pytest.mark.parametrize("lazy", [False, True])
def test_round_trip(tmp_path, small, lazy):
    path = write_cache(tmp_path / "s.h5", small, source_md5="abc")
    with open_cache(path, name="synthetic", source_md5="abc", lazy=lazy) as back:
        assert_equal_datasets(back, small)
        assert back.source_md5 == "abc"
        idx = np.array([5, 0, 36, 5])
        np.testing.assert_array_equal(back.train_images[idx], small.train_images[idx])
    with h5py.File(path) as f:
        assert f.attrs["format_version"] == FORMAT_VERSION
        assert f["train/images"].chunks is not None, "images must be stored chunked"


@pytest.mark.parametrize("filtered", [False, True], ids=["raw-chunks", "gzip-fallback"])
def test_h5images_indexing_matches_numpy(tmp_path, rng, filtered):
    x = rng.integers(0, 256, size=(37, 3, 4, 5), dtype=np.uint8)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(4, 3, 4, 5), compression="gzip" if filtered else None)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        lazy = H5Images(f["x"])
        assert (lazy._rows is None) == filtered, "raw chunk reads only for unfiltered chunks"
        keys = [5, -1, slice(3, 9), [36, 0, 0, 17, 35], np.array([[1, 2], [3, 36]]),
                x[:, 0, 0, 0] > 100, np.array([], np.int64)]
        for key in keys:
            np.testing.assert_array_equal(lazy[key], x[key], err_msg=f"key {key!r}")
        with pytest.raises(IndexError, match="out of range"):
            lazy[[37]]
        with pytest.raises(TypeError, match="supports"):
            lazy[0, 1]


def _tamper(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


@pytest.mark.parametrize("damage, message", [
    (lambda f: f["train"].attrs.__setitem__("images_sha256", "0" * 64), "images SHA-256 mismatch"),
    (lambda f: f["test/images"].__setitem__((0, 0, 0, 0), 7), "test/images SHA-256 mismatch"),
    (lambda f: f["train/labels"].__setitem__(0, 3), "train/labels SHA-256 mismatch"),
    (lambda f: f.attrs.__setitem__("format_version", 0), "format version 0"),
    (lambda f: f.attrs.__setitem__("dataset", "cifar10"), "holds dataset 'cifar10'"),
    (lambda f: f.attrs.__setitem__("source_md5", "other"), "built from a source with MD5 other"),
    (lambda f: f["train"].attrs.__setitem__("num_examples", 99), "should hold 99 examples"),
], ids=["digest-attr", "image-byte", "label", "version", "name", "source", "count"])
def test_damaged_cache_is_detected(tmp_path, small, damage, message):
    path = write_cache(tmp_path / "s.h5", small, source_md5="abc")
    _tamper(path, damage)
    with pytest.raises(dl.CacheError, match=message):
        open_cache(path, name="synthetic", source_md5="abc")


def test_truncated_cache_is_detected(tmp_path, small):
    path = write_cache(tmp_path / "s.h5", small)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(dl.CacheError, match="s.h5"):
        open_cache(path, name="synthetic")


def test_failed_write_leaves_no_file_and_keeps_the_old_cache(tmp_path, small):
    path = write_cache(tmp_path / "s.h5", small)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="uint8"):
        with CacheWriter(path, name="synthetic", class_names=("a",), normalization="half",
                         source_md5="", image_shape=(3, 6, 5)) as w:
            w.append("train", np.zeros((2, 3, 6, 5), np.float32), np.zeros(2, np.int64))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"], "temporary file left behind"


@pytest.mark.parametrize("damage", ["truncate", "attribute"])
def test_loader_rebuilds_a_corrupt_cache_from_the_source(tmp_path, damage, caplog):
    expected = testing.write_cifar(tmp_path)
    dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    cache = tmp_path / "cifar10.h5"
    if damage == "truncate":
        cache.write_bytes(cache.read_bytes()[:1000])
    else:
        _tamper(cache, lambda f: f["train"].attrs.__setitem__("images_sha256", "bad"))
    with caplog.at_level(logging.WARNING, logger="data_loaders"):
        ds = dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert "rebuilding" in caplog.text
    np.testing.assert_array_equal(ds.train_images, expected[0])
    open_cache(cache, name="cifar10", source_md5=ds.source_md5)  # valid again


def test_loader_rebuilds_when_the_source_changed(tmp_path):
    testing.write_cifar(tmp_path, n_train=10, seed=0)
    dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    expected = testing.write_cifar(tmp_path, n_train=15, seed=1)
    ds = dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(ds.train_images, expected[0])


def test_corrupt_cache_without_source_is_rejected_with_advice(tmp_path):
    testing.write_cifar(tmp_path)
    dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    for f in (tmp_path / "cifar-10-batches-py").iterdir():
        f.unlink()
    (tmp_path / "cifar-10-batches-py").rmdir()
    ds = dl.load_dataset("cifar10", data_dir=tmp_path, download=False)  # valid cache alone is fine
    assert ds.train_images.shape[0] == 10
    _tamper(tmp_path / "cifar10.h5", lambda f: f["test/images"].__setitem__((0, 0, 0, 0), 1))
    with pytest.raises(dl.CacheError) as err:
        dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    msg = str(err.value)
    assert "SHA-256 mismatch" in msg and "delete it" in msg and "cifar-10-python.tar.gz" in msg, msg
