"""One HDF5 cache format for every dataset, verified on open, written atomically.

Layout of ``<data_dir>/<name>.h5`` (format version :data:`FORMAT_VERSION`)::

    /                attrs: format, format_version, dataset, class_names (JSON list),
                            normalization, source_md5
    /train/images    (N, C, H, W) uint8, chunked (a few images per chunk)
    /train/labels    (N,) int64
    /train           attrs: num_examples, images_sha256, labels_sha256
    /test/...        the same for the test split

A cache is written to a temporary file and renamed into place with
:func:`os.replace` once complete. :func:`open_cache` checks the attributes, the
shapes, the source digest and (by default) the SHA-256 of every byte, and raises
:class:`CacheError` on any difference; :func:`load_cached` then rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np

from .dataset import Dataset
from .errors import CacheError

log = logging.getLogger("data_loaders")

FORMAT = "refdtp-dataset-cache"
FORMAT_VERSION = 1
SPLITS = ("train", "test")
_CHUNK_BYTES = 48 * 1024  # small chunks keep random single-image reads cheap
_VERIFY_BYTES = 16 << 20


class H5Images:
    """A read-only (N, C, H, W) uint8 image array stored in an open HDF5 file.

    ``x[i]``, ``x[a:b]`` and ``x[indices]`` (any order, repeats allowed) return
    NumPy arrays; only the chunks holding the requested images are read, each
    once, as raw bytes (the cache's chunks are whole, unfiltered images).
    """

    def __init__(self, dataset: h5py.Dataset):
        self._ds = dataset
        self.shape = tuple(dataset.shape)
        self.dtype = np.dtype(dataset.dtype)
        chunks = dataset.chunks
        raw_ok = (chunks is not None and chunks[1:] == self.shape[1:]
                  and dataset.id.get_create_plist().get_nfilters() == 0)
        self._rows = chunks[0] if raw_ok else None  # images per chunk, if raw reads work

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (slice, int, np.integer)):
            return self._ds[key]
        if isinstance(key, tuple):
            raise TypeError("H5Images supports x[i], x[a:b] and x[indices]; index the result "
                            "for more axes")
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = np.where(idx < 0, idx + len(self), idx).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"image index out of range for {len(self)} images")
        uniq, inverse = np.unique(idx.ravel(), return_inverse=True)
        return self._read_sorted(uniq)[inverse].reshape(idx.shape + self.shape[1:])

    def _read_sorted(self, uniq):
        """(len(uniq), C, H, W) images at sorted distinct indices ``uniq``."""
        buf = np.empty((len(uniq),) + self.shape[1:], self.dtype)
        if self._rows is None:  # not our layout: read runs of consecutive images
            starts = np.flatnonzero(np.diff(uniq, prepend=-2) != 1)
            for a, b in zip(starts, np.append(starts[1:], len(uniq)), strict=False):  # no runs: no pairs
                self._ds.read_direct(buf, np.s_[uniq[a]:uniq[b - 1] + 1], np.s_[a:b])
            return buf
        first = (uniq // self._rows) * self._rows  # first image of each index's chunk
        starts = np.flatnonzero(np.diff(first, prepend=-1))
        for a, b in zip(starts, np.append(starts[1:], len(uniq)), strict=False):  # no runs: no pairs
            _, raw = self._ds.id.read_direct_chunk((int(first[a]),) + (0,) * (len(self.shape) - 1))
            block = np.frombuffer(raw, self.dtype).reshape((-1,) + self.shape[1:])
            buf[a:b] = block[uniq[a:b] - first[a]]
        return buf

    def __array__(self, dtype=None, copy=None):
        out = self._ds[...]
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        """Close the HDF5 file (shared by the splits of one cache)."""
        if self._ds.id.valid:
            self._ds.file.close()


class CacheWriter:
    """Streams splits into a new cache; the file appears only when complete.

    Use as a context manager. On an exception the temporary file is removed
    and any existing cache is left untouched.

    Args:
        path: final cache path.
        name, class_names, normalization: as in :class:`Dataset`.
        source_md5: digest of the source files the data comes from.
        image_shape: (C, H, W) of one image.
    """

    def __init__(self, path, *, name, class_names, normalization, source_md5, image_shape):
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        self._attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "dataset": name,
                       "class_names": json.dumps(list(class_names)),
                       "normalization": normalization, "source_md5": source_md5}
        self.image_shape = tuple(int(s) for s in image_shape)
        self._file = None
        self._hash = {}

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.tmp, "w")
        rows = max(1, _CHUNK_BYTES // int(np.prod(self.image_shape)))
        for split in SPLITS:
            g = self._file.create_group(split)
            g.create_dataset("images", (0,) + self.image_shape, np.uint8,
                             maxshape=(None,) + self.image_shape, chunks=(rows,) + self.image_shape)
            g.create_dataset("labels", (0,), np.int64, maxshape=(None,), chunks=(1 << 14,))
            self._hash[split] = (hashlib.sha256(), hashlib.sha256())
        return self

    def append(self, split: str, images: np.ndarray, labels: np.ndarray) -> None:
        """Append (n, C, H, W) uint8 images and their (n,) int64 labels to a split."""
        images = np.ascontiguousarray(images)
        labels = np.ascontiguousarray(labels)
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
            raise ValueError(f"{self.path}: expected (n, {self.image_shape}) uint8 images, got "
                             f"{images.shape} {images.dtype}")
        if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
            raise ValueError(f"{self.path}: expected ({len(images)},) int64 labels, got "
                             f"{labels.shape} {labels.dtype}")
        g = self._file[split]
        n = g["images"].shape[0]
        for key, data in (("images", images), ("labels", labels)):
            g[key].resize(n + len(data), axis=0)
            g[key][n:] = data
        self._hash[split][0].update(images.data)
        self._hash[split][1].update(labels.data)

    def __exit__(self, exc_type, exc, tb):
        complete = False
        try:
            if exc_type is None:
                self._finish()
                complete = True
        finally:
            self._file.close()
            if not complete:
                self.tmp.unlink(missing_ok=True)
        if complete:
            with open(self.tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.path)

    def _finish(self):
        self._file.attrs.update(self._attrs)
        for split in SPLITS:
            g = self._file[split]
            g.attrs["num_examples"] = g["labels"].shape[0]
            g.attrs["images_sha256"] = self._hash[split][0].hexdigest()
            g.attrs["labels_sha256"] = self._hash[split][1].hexdigest()


def write_cache(path, dataset: Dataset, source_md5: str = "") -> Path:
    """Write an in-memory :class:`Dataset` as a cache file (atomically)."""
    with CacheWriter(path, name=dataset.name, class_names=dataset.class_names,
                     normalization=dataset.normalization,
                     source_md5=source_md5 or dataset.source_md5,
                     image_shape=dataset.image_shape) as w:
        for split in SPLITS:
            w.append(split, getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels"))
    return Path(path)


def open_cache(path, *, name: str, source_md5: str | None = None, verify: bool = True,
               lazy: bool = False) -> Dataset:
    """Open and check a cache file.

    Args:
        path: the ``.h5`` file.
        name: dataset name it must hold.
        source_md5: if given, the digest of the source it must have been built from.
        verify: recompute the SHA-256 of all images and labels (reads the whole file).
        lazy: keep the images in the file (:class:`H5Images`) instead of reading
            them into memory; the file stays open until ``Dataset.close()``.

    Raises:
        CacheError: missing, unreadable, truncated, corrupt, wrong format version,
            another dataset, or built from another source.
    """
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path}: cannot open the cache ({exc}); it is missing, "
                         "truncated or not an HDF5 file") from exc
    try:
        _check_attrs(f, path, name, source_md5)
        splits = {s: _read_split(f, path, s, verify, lazy) for s in SPLITS}
        ds = Dataset(name=name, class_names=json.loads(f.attrs["class_names"]),
                     normalization=str(f.attrs["normalization"]),
                     source_md5=str(f.attrs["source_md5"]),
                     train_images=splits["train"][0], train_labels=splits["train"][1],
                     test_images=splits["test"][0], test_labels=splits["test"][1])
    except Exception as exc:
        f.close()
        if isinstance(exc, CacheError):
            raise
        raise CacheError(f"{path}: corrupt cache ({type(exc).__name__}: {exc})") from exc
    if not lazy:
        f.close()
    return ds


def _check_attrs(f, path, name, source_md5):
    attrs = f.attrs
    if attrs.get("format") != FORMAT:
        raise CacheError(f"{path}: not a {FORMAT} file")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"{path}: format version {attrs.get('format_version')}, "
                         f"this code reads version {FORMAT_VERSION}")
    if attrs.get("dataset") != name:
        raise CacheError(f"{path}: holds dataset {attrs.get('dataset')!r}, not {name!r}")
    if source_md5 is not None and attrs.get("source_md5") != source_md5:
        raise CacheError(f"{path}: built from a source with MD5 {attrs.get('source_md5')}, "
                         f"but the source now has MD5 {source_md5}")


def _read_split(f, path, split, verify, lazy):
    g = f[split]
    images, labels_ds = g["images"], g["labels"]
    n = int(g.attrs["num_examples"])
    if images.shape[0] != n or labels_ds.shape != (n,):
        raise CacheError(f"{path}: {split} split should hold {n} examples, has "
                         f"{images.shape[0]} images and {labels_ds.shape} labels")
    labels = labels_ds[...]
    _check_digest(path, f"{split}/labels", labels.data, g.attrs["labels_sha256"])
    out = H5Images(images) if lazy else images[...]
    if verify:
        digest = hashlib.sha256()
        if lazy:
            step = max(1, _VERIFY_BYTES // max(1, int(np.prod(images.shape[1:]))))
            for a in range(0, n, step):
                digest.update(np.ascontiguousarray(images[a:a + step]).data)
        else:
            digest.update(np.ascontiguousarray(out).data)
        _check_digest(path, f"{split}/images", None, g.attrs["images_sha256"], digest)
    return out, labels


def _check_digest(path, what, data, expected, digest=None):
    actual = (digest or hashlib.sha256(data)).hexdigest()
    if actual != expected:
        raise CacheError(f"{path}: {what} SHA-256 mismatch (expected {expected}, "
                         f"actual {actual}); the cache is corrupt")


def load_cached(path, *, name: str, source_md5: str, build, use_cache: bool = True) -> Dataset:
    """Return the cache at ``path`` if valid for ``source_md5``, else build and cache.

    Args:
        path: cache file.
        name: dataset name.
        source_md5: digest of the source files now present.
        build: callable returning the in-memory :class:`Dataset` from the source.
        use_cache: False reads the source every time and writes nothing.
    """
    path = Path(path)
    if use_cache and path.exists():
        try:
            return open_cache(path, name=name, source_md5=source_md5)
        except CacheError as exc:
            log.warning("%s; rebuilding it from the source", exc)
    ds = build()
    ds.source_md5 = source_md5
    if use_cache:
        try:
            write_cache(path, ds)
        except OSError as exc:  # e.g. a read-only shared data folder: work without a cache
            log.warning("cannot write the cache %s (%s); continuing without it", path, exc)
    return ds


def open_orphan_cache(path, *, name: str, hint: str, lazy: bool = False) -> Dataset:
    """Open a cache whose source files are absent, so it cannot be rebuilt.

    Raises:
        CacheError: the cache is invalid; the message adds ``hint`` (where to
            put the source files).
    """
    try:
        return open_cache(path, name=name, lazy=lazy)
    except CacheError as exc:
        raise CacheError(f"{exc}. It cannot be rebuilt without the source: delete it. "
                         f"{hint}") from exc
