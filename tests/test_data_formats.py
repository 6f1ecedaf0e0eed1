"""data_loaders: each dataset read back from tiny files in its official format."""
import pickle

import numpy as np
import pytest

import data_loaders as dl
from data_loaders import testing
from data_loaders.cache import H5Images


def assert_same_data(ds, expected, what=""):
    names = ("train_images", "train_labels", "test_images", "test_labels")
    for name, want in zip(names, expected, strict=True):
        got = np.asarray(getattr(ds, name))
        assert got.dtype == want.dtype, f"{what} {name}: dtype {got.dtype} != {want.dtype}"
        np.testing.assert_array_equal(got, want, err_msg=f"{what} {name}")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("tar", [False, True], ids=["folder", "tarball"])
def test_cifar_reads_official_layout_from_data_dir(tmp_path, name, tar, monkeypatch):
    expected = testing.write_cifar(tmp_path, name, n_train=11, n_test=3, tar=tar)
    if tar:  # a tarball under the official name must carry the official MD5
        import dataclasses

        import data_loaders.cifar as cifar
        md5 = dl.download.md5_file(tmp_path / cifar.CIFAR[name].archive)
        monkeypatch.setitem(cifar.CIFAR, name, dataclasses.replace(cifar.CIFAR[name], md5=md5))
    ds = dl.load_dataset(name, data_dir=tmp_path, download=False)
    assert_same_data(ds, expected, name)
    assert ds.image_shape == (3, 32, 32)
    assert ds.num_classes == (10 if name == "cifar10" else 100)
    assert ds.class_names[:2] == ("c0", "c1")
    assert ds.normalization == name
    assert (tmp_path / f"{name}.h5").exists(), "the HDF5 cache was not written"
    assert_same_data(dl.load_dataset(name, data_dir=tmp_path, download=False), expected, "cached")


@pytest.mark.parametrize("tar", [False, True], ids=["folder", "tarball"])
def test_cifar_accepts_user_supplied_source(tmp_path, tar):
    expected = testing.write_cifar(tmp_path / "mine", tar=tar)
    source = tmp_path / "mine" / ("cifar-10-python.tar.gz" if tar else "cifar-10-batches-py")
    ds = dl.load_dataset("cifar10", data_dir=tmp_path / "cache", download=False, source=source)
    assert_same_data(ds, expected)
    assert ds.source_md5, "the source digest must be recorded"


def test_cifar_without_cache_writes_nothing(tmp_path):
    expected = testing.write_cifar(tmp_path)
    ds = dl.load_dataset("cifar10", data_dir=tmp_path, download=False, cache=False)
    assert_same_data(ds, expected)
    assert not list(tmp_path.glob("*.h5"))


def test_cifar_official_name_with_wrong_md5_is_rejected(tmp_path):
    testing.write_cifar(tmp_path, tar=True)
    with pytest.raises(dl.ChecksumError) as err:
        dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    msg = str(err.value)
    for part in ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "source="):
        assert part in msg, f"message lacks {part!r}: {msg}"


def test_cifar_missing_says_where_to_put_it(tmp_path):
    with pytest.raises(dl.DatasetNotFoundError) as err:
        dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    msg = str(err.value)
    assert str(tmp_path) in msg and "https://www.cs.toronto.edu/~kriz/" in msg, msg


def test_cifar_missing_batch_file_is_named(tmp_path):
    testing.write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(dl.DatasetNotFoundError, match="data_batch_3"):
        dl.load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_cifar_bad_data_shape_is_reported(tmp_path):
    testing.write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(dl.DataError, match=r"data_batch_1.*\(n, 3072\) uint8"):
        dl.load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    testing.write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    with pytest.raises(dl.DataError, match="refusing to load os.system"):
        dl.load_dataset("cifar10", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("name", ["mnist", "fmnist"])
def test_mnist_idx_files_from_a_user_folder(tmp_path, name, gz):
    expected = testing.write_mnist(tmp_path / "idx", gz=gz)
    ds = dl.load_dataset(name, data_dir=tmp_path, download=False, source=tmp_path / "idx")
    assert_same_data(ds, expected, name)
    assert ds.image_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.normalization == name


def test_mnist_missing_files_are_listed(tmp_path):
    with pytest.raises(dl.DatasetNotFoundError) as err:
        dl.load_dataset("mnist", data_dir=tmp_path, download=False)
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "ossci-datasets" in msg, msg


@pytest.mark.parametrize("damage", ["magic", "truncated"])
def test_idx_damage_is_reported_with_the_file_name(tmp_path, damage):
    from data_loaders.mnist import read_idx
    path = tmp_path / "x-idx3-ubyte"
    testing.write_idx(path, np.zeros((3, 4, 4), np.uint8))
    raw = path.read_bytes()
    path.write_bytes(b"\x00\x00\x0d\x03" + raw[4:] if damage == "magic" else raw[:-5])
    with pytest.raises(dl.DataError, match="x-idx3-ubyte"):
        read_idx(path)


def test_imagenet32_npz_batches_convert_to_a_lazy_cache(tmp_path):
    expected = testing.write_imagenet32(tmp_path / "imagenet32" / "Imagenet32_train_npz")
    with dl.load_dataset("imagenet32", data_dir=tmp_path) as ds:
        assert isinstance(ds.train_images, H5Images), "train images must stay in the HDF5 file"
        assert ds.train_images.shape == (30, 3, 32, 32) and ds.num_classes == 1000
        assert ds.normalization == "imagenet"
        assert_same_data(ds, expected, "imagenet32")
        idx = np.array([7, 2, 2, 29, 0, 8])
        np.testing.assert_array_equal(ds.train_images[idx], expected[0][idx])
    with dl.load_dataset("imagenet32", data_dir=tmp_path) as ds:  # from the cache
        assert_same_data(ds, expected, "imagenet32 cached")


def test_imagenet32_class_names_from_map_clsloc(tmp_path):
    testing.write_imagenet32(tmp_path)
    (tmp_path / "map_clsloc.txt").write_text("n02119789 1 kit_fox\nn02100735 2 English_setter\n")
    with dl.load_dataset("imagenet32", data_dir=tmp_path / "c", source=tmp_path) as ds:
        assert ds.class_names[:3] == ("kit_fox", "English_setter", "class_002")


def test_imagenet32_absent_points_to_the_download_page(tmp_path):
    with pytest.raises(dl.DatasetNotFoundError) as err:
        dl.load_dataset("imagenet32", data_dir=tmp_path)
    msg = str(err.value)
    assert "https://image-net.org/download-images.php" in msg, msg
    assert "Downsampled ImageNet 32x32" in msg and str(tmp_path / "imagenet32") in msg, msg


def test_imagenet32_missing_batch_is_named(tmp_path):
    testing.write_imagenet32(tmp_path)
    (tmp_path / "train_data_batch_7.npz").unlink()
    with pytest.raises(dl.DatasetNotFoundError, match="train_data_batch_7"):
        dl.load_dataset("imagenet32", data_dir=tmp_path, source=tmp_path)


def test_imagenet32_label_out_of_range_is_reported(tmp_path):
    testing.write_imagenet32(tmp_path)
    np.savez(tmp_path / "val_data.npz", data=np.zeros((2, 3072), np.uint8), labels=[0, 5])
    with pytest.raises(dl.DataError, match=r"val_data.npz.*1\.\.1000"):
        dl.load_dataset("imagenet32", data_dir=tmp_path, source=tmp_path)


def test_digits_is_embedded_with_a_fixed_split():
    a, b = dl.load_dataset("digits"), dl.load_dataset("digits")
    assert a.train_images.shape == (1437, 1, 8, 8) and a.test_images.shape == (360, 1, 8, 8)
    assert a.train_images.dtype == np.uint8 and a.train_images.max() == 255
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    assert set(np.unique(a.train_labels)) == set(range(10))
    mean, std = dl.NORMALIZATIONS["digits"]
    x = a.train_images / 255.0
    assert abs(x.mean() - mean[0]) < 1e-3 and abs(x.std() - std[0]) < 1e-3, (x.mean(), x.std())


def test_synthetic_is_deterministic_shaped_and_learnable():
    kw = dict(n_train=300, n_test=100, num_classes=3, image_shape=(2, 5, 7))
    a, b = dl.load_dataset("synthetic", seed=4, **kw), dl.load_dataset("synthetic", seed=4, **kw)
    assert_same_data(a, (b.train_images, b.train_labels, b.test_images, b.test_labels))
    c = dl.load_dataset("synthetic", seed=5, **kw)
    assert not np.array_equal(a.train_images, c.train_images), "seed must change the data"
    assert a.image_shape == (2, 5, 7) and a.num_classes == 3
    flat = a.train_images.reshape(300, -1).astype(float)
    centroids = np.stack([flat[a.train_labels == k].mean(0) for k in range(3)])
    test = a.test_images.reshape(100, -1).astype(float)
    pred = np.argmin(((test[:, None] - centroids) ** 2).sum(-1), axis=1)
    assert (pred == a.test_labels).mean() > 0.9, "nearest-centroid should separate the classes"


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError, match="cifar10.*imagenet32.*synthetic"):
        dl.load_dataset("svhn")


def test_dataset_rejects_mismatched_splits():
    x = np.zeros((3, 1, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        dl.Dataset("t", x, np.zeros(2, np.int64), x, np.zeros(3, np.int64), ("a",), "half")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        dl.Dataset("t", x, np.ones(3, np.int64), x, np.zeros(3, np.int64), ("a",), "half")
