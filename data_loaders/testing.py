"""Tiny files in the official dataset formats, for tests and offline trials.

Each writer draws random images from a seeded generator, writes them in the
format the real dataset ships in, and returns the arrays a correct loader must
give back: ``(train_images, train_labels, test_images, test_labels)`` as uint8
(N, C, H, W) and int64 (N,).
"""
from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from .cifar import CIFAR


def _random_split(rng, n, shape, num_classes):
    images = rng.integers(0, 256, size=(n,) + shape, dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).astype(np.int64)
    return images, labels


def _dump_py2(path: Path, obj: dict) -> None:
    """A dict with bytes keys, pickled with protocol 2 as Python 2 wrote it."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(root, name: str = "cifar10", n_train: int = 10, n_test: int = 4, seed: int = 0,
                tar: bool = False):
    """Write ``root/cifar-10-batches-py/`` (or ``cifar-100-python/``), optionally as a tarball.

    With ``tar=True`` only ``root/<official archive name>`` is left (no folder).
    CIFAR-10 train images are spread over the five ``data_batch_*`` files.
    """
    spec = CIFAR[name]
    rng = np.random.default_rng(seed)
    k = 10 if name == "cifar10" else 100
    arrays = [*_random_split(rng, n_train, (3, 32, 32), k), *_random_split(rng, n_test,
                                                                         (3, 32, 32), k)]
    folder = Path(root) / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    _dump_py2(folder / spec.meta, {spec.names_key: [f"c{i}".encode() for i in range(k)]})
    for files, (x, y) in ((spec.train, arrays[:2]), (spec.test, arrays[2:])):
        for i, part in enumerate(np.array_split(np.arange(len(y)), len(files))):
            _dump_py2(folder / files[i], {
                b"batch_label": f"batch {i}".encode(), spec.label_key: y[part].tolist(),
                b"data": x[part].reshape(len(part), 3072),
                b"filenames": [f"img_{j}.png".encode() for j in part]})
    if tar:
        with tarfile.open(Path(root) / spec.archive, "w:gz") as t:
            t.add(folder, arcname=spec.folder)
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    return tuple(arrays)


def write_idx(path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes; gzip-compressed when ``path`` ends in ``.gz``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def write_mnist(folder, n_train: int = 12, n_test: int = 5, seed: int = 0, gz: bool = True):
    """The four MNIST-layout IDX files (28x28) in ``folder``."""
    from .mnist import FILES
    rng = np.random.default_rng(seed)
    arrays = [*_random_split(rng, n_train, (1, 28, 28), 10),
              *_random_split(rng, n_test, (1, 28, 28), 10)]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for fname, arr in zip(FILES, arrays, strict=True):
        data = arr[:, 0] if arr.ndim == 4 else arr
        write_idx(folder / (fname if gz else fname[:-3]), data)
    return tuple(arrays)


def write_imagenet32(folder, n_per_batch: int = 3, n_val: int = 4, seed: int = 0):
    """``train_data_batch_1..10.npz`` and ``val_data.npz`` (labels 1..1000) in ``folder``."""
    from .imagenet32 import TRAIN_FILES, VAL_FILE
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train = [_random_split(rng, n_per_batch, (3, 32, 32), 1000) for _ in TRAIN_FILES]
    val = _random_split(rng, n_val, (3, 32, 32), 1000)
    for fname, (x, y) in zip(TRAIN_FILES + (VAL_FILE,), train + [val], strict=True):
        np.savez(folder / f"{fname}.npz", data=x.reshape(len(x), 3072), labels=(y + 1).tolist(),
                 mean=np.zeros(3072))
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
            val[0], val[1])
