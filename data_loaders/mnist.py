"""MNIST (LeCun et al.) and Fashion-MNIST (Xiao et al., 2017) from the IDX files.

Each dataset is four gzip-compressed IDX files, downloaded into
``<data_dir>/<name>/`` and checked against their published MD5s. A
user-supplied folder (``source=``) may hold the ``.gz`` files or the
uncompressed IDX files.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import load_cached, open_orphan_cache
from .dataset import Dataset
from .download import default_data_dir, fetch, md5_files
from .errors import DataError, DatasetNotFoundError

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class IdxSpec:
    """Published MD5s (in :data:`FILES` order), mirrors, class names, statistics."""

    md5s: tuple
    mirrors: tuple
    class_names: tuple
    normalization: str


MNIST_SPECS = {
    "mnist": IdxSpec(
        ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
         "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/",
         "https://storage.googleapis.com/cvdf-datasets/mnist/",
         "http://yann.lecun.com/exdb/mnist/"),
        tuple(str(d) for d in range(10)), "mnist"),
    "fmnist": IdxSpec(
        ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
         "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
         "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot"), "fmnist"),
}


def load_mnist(name: str = "mnist", data_dir=None, download: bool = True, *, source=None,
               mirrors=None, cache: bool = True) -> Dataset:
    """Load MNIST or Fashion-MNIST as uint8 (N, 1, 28, 28) images.

    Args:
        name: "mnist" or "fmnist".
        data_dir: data folder; files go to ``<data_dir>/<name>/``.
        download: fetch missing files (from ``mirrors`` in order).
        source: a folder holding the four IDX files (``.gz`` or uncompressed);
            their MD5s are recorded, not compared with the published ones.
        mirrors: base URLs (default: the known mirrors of the dataset).
        cache: read/write ``<data_dir>/<name>.h5``.
    """
    spec = MNIST_SPECS[name]
    root = default_data_dir(data_dir)
    cache_path = root / f"{name}.h5"
    if source is not None:
        paths = [_find_idx(Path(source).expanduser(), f) for f in FILES]
    else:
        folder, mirrors = root / name, mirrors or spec.mirrors
        missing = [f for f in FILES if not (folder / f).exists()]
        hint = (f"missing {', '.join(missing)} in {folder}/. Download them from "
                f"{mirrors[0]} (MD5s {dict(zip(FILES, spec.md5s))}), or load with "
                "download=True, or pass source=FOLDER.")
        if len(missing) == len(FILES) and cache and cache_path.exists():
            return open_orphan_cache(cache_path, name=name, hint=hint)
        if missing and not download:
            raise DatasetNotFoundError(hint)
        paths = [fetch(f, md5, folder, [m + f for m in mirrors])  # checks present files too
                 for f, md5 in zip(FILES, spec.md5s)]
    return load_cached(cache_path, name=name, source_md5=md5_files(paths),
                       build=lambda: read_idx_dataset(paths, name), use_cache=cache)


def _find_idx(folder: Path, filename: str) -> Path:
    for cand in (folder / filename, folder / filename[:-3]):
        if cand.is_file():
            return cand
    raise DatasetNotFoundError(f"{folder}: missing {filename} (or {filename[:-3]})")


def read_idx_dataset(paths, name: str = "mnist") -> Dataset:
    """Build a :class:`Dataset` from the four IDX files (in :data:`FILES` order)."""
    spec = MNIST_SPECS[name]
    arrays = [read_idx(p) for p in paths]
    splits = []
    for i in (0, 2):
        images, labels = arrays[i], arrays[i + 1]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{paths[i]}, {paths[i + 1]}: expected (n, H, W) images and (n,) "
                            f"labels, got {images.shape} and {labels.shape}")
        splits.append((images[:, None], labels.astype(np.int64)))
    return Dataset(name=name, class_names=spec.class_names, normalization=spec.normalization,
                   train_images=splits[0][0], train_labels=splits[0][1],
                   test_images=splits[1][0], test_labels=splits[1][1])


def read_idx(path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed if named ``*.gz``).

    Returns:
        uint8 array of the dimensions given in the header.
    """
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc}); the file is truncated or corrupt") from exc
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path}: not an IDX file of unsigned bytes (header {raw[:4].hex()})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(bytearray(raw), np.uint8, offset=4 + 4 * ndim)  # writable copy
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header announces {dims} = {int(np.prod(dims))} values, "
                        f"the file holds {data.size}")
    return data.reshape(dims)
