"""MNIST (LeCun et al.) and Fashion-MNIST (Xiao et al., 2017) from the IDX files.

Each dataset is four gzip-compressed IDX files, downloaded into
``<data_dir>/<name>/`` and checked against their published MD5s. A
user-supplied folder (``source=``) may hold the ``.gz`` files or the
uncompressed IDX files.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import load_cached, open_orphan_cache
from .dataset import Dataset
from .download import default_data_dir, fetch, md5_files
from .errors import SOURCE_HINT, DatasetNotFoundError, FormatError

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
IMAGE_SIZE = (28, 28)


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

    Raises:
        DatasetNotFoundError: files missing (all are listed), or ``source`` is
            not a folder holding them.
        ChecksumError: a file under an official name has the wrong MD5.
        DataError: a damaged IDX file; the message names it.
    """
    spec = MNIST_SPECS[name]
    root = default_data_dir(data_dir)
    cache_path = root / f"{name}.h5"
    if source is not None:
        paths = find_idx_files(Path(source).expanduser())
    else:
        folder, mirrors = root / name, mirrors or spec.mirrors
        missing = [f for f in FILES if not (folder / f).exists()]
        hint = (f"missing {', '.join(missing)} in {folder}/. Download them from "
                f"{mirrors[0]} (MD5s {dict(zip(FILES, spec.md5s, strict=True))}), or load with "
                f"download=True, or {SOURCE_HINT}.")
        if len(missing) == len(FILES) and cache and cache_path.exists():
            return open_orphan_cache(cache_path, name=name, hint=hint)
        if missing and not download:
            raise DatasetNotFoundError(hint)
        other = f" To use files that are not the published ones, {SOURCE_HINT}."
        paths = [fetch(f, md5, folder, [m + f for m in mirrors], hint=other)  # checks present ones
                 for f, md5 in zip(FILES, spec.md5s, strict=True)]
    return load_cached(cache_path, name=name, source_md5=md5_files(paths),
                       build=lambda: read_idx_dataset(paths, name), use_cache=cache)


def find_idx_files(folder: Path) -> list:
    """The four IDX files (``.gz`` or uncompressed) of a user folder, in :data:`FILES` order."""
    if not folder.exists():
        raise DatasetNotFoundError(f"{folder}: does not exist; the source must be a folder "
                                   f"holding {', '.join(FILES)} (or the uncompressed files)")
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{folder}: is not a folder; the source must be a folder "
                                   f"holding {', '.join(FILES)} (or the uncompressed files)")
    found = {f: next((c for c in (folder / f, folder / f[:-3]) if c.is_file()), None)
             for f in FILES}
    missing = [f"{f} (or {f[:-3]})" for f, p in found.items() if p is None]
    if missing:
        raise DatasetNotFoundError(f"{folder}: missing {', '.join(missing)}")
    return list(found.values())


def read_idx_dataset(paths, name: str = "mnist") -> Dataset:
    """Build a :class:`Dataset` from the four IDX files (in :data:`FILES` order)."""
    spec = MNIST_SPECS[name]
    splits = [_read_split(paths[i], paths[i + 1], len(spec.class_names)) for i in (0, 2)]
    return Dataset(name=name, class_names=spec.class_names, normalization=spec.normalization,
                   train_images=splits[0][0], train_labels=splits[0][1],
                   test_images=splits[1][0], test_labels=splits[1][1])


def _read_split(images_path, labels_path, num_classes: int):
    """(n, 1, 28, 28) uint8 images and (n,) int64 labels of one images/labels file pair."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SIZE:
        raise FormatError(f"{images_path}: expected images of shape (n, 28, 28), the header "
                          f"says {images.shape}")
    if labels.ndim != 1:
        raise FormatError(f"{labels_path}: expected labels of shape (n,), the header says "
                          f"{labels.shape}")
    if len(labels) != len(images):
        raise FormatError(f"{labels_path}: holds {len(labels)} labels, but "
                          f"{Path(images_path).name} holds {len(images)} images")
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise FormatError(f"{labels_path}: labels must lie in 0..{num_classes - 1}, got "
                          f"{labels[bad[0]]} at index {bad[0]}")
    return images[:, None], labels.astype(np.int64)


def read_idx(path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed or not, told by its content).

    Returns:
        uint8 array of the dimensions given in the header.

    Raises:
        FormatError: unreadable gzip stream (truncated, CRC), or a header that is
            not IDX unsigned bytes or that does not match the data length.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise FormatError(f"{path}: not an IDX file (header {raw[:4].hex() or 'empty'})")
    if raw[2] != 0x08:
        raise FormatError(f"{path}: IDX data type 0x{raw[2]:02x}, expected 0x08 (unsigned bytes)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise FormatError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    size = len(raw) - 4 - 4 * ndim
    if size != math.prod(dims):
        raise FormatError(f"{path}: header announces {dims} = {math.prod(dims)} values, "
                          f"the file holds {size}")
    return np.frombuffer(bytearray(raw), np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when they start with the gzip magic."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise FormatError(f"{path}: cannot read ({detail}); the file is truncated or "
                          "corrupt") from exc
