"""data_loaders.batches: seeded, restartable epochs; splits."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import data_loaders as dl
from data_loaders.batches import PURPOSE_AUGMENT
from data_loaders.cache import open_cache, write_cache
from refdtp.backend import host_rng


@pytest.fixture(scope="module")
def data():
    ds = dl.load_dataset("synthetic", n_train=50, n_test=1, num_classes=5,
                         image_shape=(3, 8, 8), seed=0)
    return ds.train_images, np.arange(50, dtype=np.int64)  # label = example index


def run(images, labels, bs=8, **kw):
    kw = {"seed": 1, "epoch": 0, **kw}
    return [(np.asarray(x), np.asarray(y)) for x, y in dl.iterate_batches(images, labels, bs, **kw)]


def assert_same_batches(a, b, what):
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} batches"
    for i, ((xa, ya), (xb, yb)) in enumerate(zip(a, b, strict=True)):
        np.testing.assert_array_equal(ya, yb, err_msg=f"{what}: labels of batch {i}")
        np.testing.assert_array_equal(xa, xb, err_msg=f"{what}: images of batch {i}")


AUG = dict(augment=True, normalization="half")


def test_same_seed_same_batches_and_epochs_differ(data):
    assert_same_batches(run(*data, **AUG), run(*data, **AUG), "same seed")
    e0, e1 = run(*data, **AUG), run(*data, epoch=1, **AUG)
    assert not np.array_equal(e0[0][1], e1[0][1]), "epoch 1 must be shuffled differently"
    assert not np.array_equal(run(*data, seed=2)[0][1], e0[0][1]), "seed must matter"


@settings(deadline=None)
@given(n=st.integers(1, 50), bs=st.integers(1, 20), drop_last=st.booleans(),
       shuffle=st.booleans())
def test_every_example_once_and_batch_counts(data, n, bs, drop_last, shuffle):
    images, labels = data[0][:n], data[1][:n]
    batches = run(images, labels, bs, drop_last=drop_last, shuffle=shuffle, dtype=np.uint8)
    assert len(batches) == dl.num_batches(n, bs, drop_last) == (n // bs if drop_last
                                                                 else -(-n // bs))
    seen = np.concatenate([y for _, y in batches]) if batches else np.zeros(0, np.int64)
    assert all(len(y) == bs for _, y in batches[:n // bs])
    assert len(np.unique(seen)) == len(seen), "an example appeared twice in one epoch"
    if not drop_last:
        np.testing.assert_array_equal(np.sort(seen), labels)
    if not shuffle:
        np.testing.assert_array_equal(seen, labels[:len(seen)])
    for x, y in batches:  # with uint8 output the pixels are the stored ones
        np.testing.assert_array_equal(x, images[y])


@settings(deadline=None)
@given(start=st.integers(0, 6), epoch=st.integers(0, 3))
def test_resume_at_a_step_gives_the_tail_of_the_same_epoch(data, start, epoch):
    full = run(*data, epoch=epoch, **AUG)
    assert_same_batches(run(*data, epoch=epoch, start_step=start, **AUG), full[start:],
                        f"resume at step {start}")


def test_bad_start_step_is_reported_at_the_call(data):
    with pytest.raises(ValueError, match="start_step 7 outside 0..6"):
        dl.iterate_batches(*data, 8, seed=0, epoch=0, start_step=7)  # no next() needed


def test_augmented_batch_matches_the_documented_streams(data):
    images, labels = data
    (x, y), = run(images, labels, bs=8, seed=3, epoch=2, start_step=5, augment=True,
                  dtype=np.float64, normalization="cifar10")
    offsets, flips = dl.draw_crop_flip(host_rng(3, PURPOSE_AUGMENT, 2, 5), 8, 4)
    want = dl.normalize(dl.random_crop_flip(images[y], offsets, flips), "cifar10", np.float64)
    np.testing.assert_array_equal(x, want)
    assert x.dtype == np.float64 and y.dtype == np.int64


def test_default_output_is_float32_in_unit_range(data):
    x, _ = run(*data)[0]
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


def test_indices_restrict_the_epoch(data):
    train, val = dl.train_val_split(50, 0.2, seed=7)
    seen = np.concatenate([y for _, y in run(*data, indices=val, drop_last=False)])
    np.testing.assert_array_equal(np.sort(seen), val)


def test_lazy_hdf5_images_give_the_same_batches(tmp_path):
    ds = dl.load_dataset("synthetic", n_train=40, n_test=3, image_shape=(3, 8, 8), seed=2)
    path = write_cache(tmp_path / "s.h5", ds)
    with open_cache(path, name="synthetic", lazy=True) as lazy:
        assert_same_batches(run(lazy.train_images, lazy.train_labels, **AUG),
                            run(ds.train_images, ds.train_labels, **AUG), "lazy vs memory")


def test_bad_arguments_are_named(data):
    images, labels = data
    with pytest.raises(ValueError, match="50 images but 49 labels"):
        run(images, labels[:49])
    with pytest.raises(TypeError, match="uint8"):
        run(images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="normalization must be None"):
        run(images, labels, dtype=np.uint8, normalization="half")
    with pytest.raises(ValueError, match="batch_size must be positive"):
        run(images, labels, bs=0)


def test_train_val_split_is_seeded_disjoint_and_complete():
    tr, va = dl.train_val_split(1000, 0.1, seed=3)
    assert len(va) == 100 and len(tr) == 900 and not set(tr) & set(va)
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(1000))
    np.testing.assert_array_equal(dl.train_val_split(1000, 0.1, seed=3)[1], va)
    assert not np.array_equal(dl.train_val_split(1000, 0.1, seed=4)[1], va)


def test_per_class_split_holds_out_k_per_class():
    labels = np.repeat(np.arange(4), [5, 6, 7, 8])
    tr, va = dl.per_class_split(labels, 2, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[va]), [2, 2, 2, 2])
    assert len(tr) + len(va) == len(labels) and not set(tr) & set(va)
    with pytest.raises(ValueError, match="class 0 has only 5 examples"):
        dl.per_class_split(labels, 5, seed=0)
