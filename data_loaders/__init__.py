"""Datasets, transforms and seeded batching for refdtp.

Entry point: :func:`load_dataset`. Every loader returns a :class:`Dataset` of
uint8 (N, C, H, W) images and int64 labels on the host; file-backed datasets go
through one verified HDF5 cache (:mod:`data_loaders.cache`). Batches are made
by :func:`iterate_batches`, which moves each batch to the backend once and then
augments and normalises it there. Importing this package touches no file and
no network.
"""
from __future__ import annotations

from .batches import (
    PURPOSE_AUGMENT,
    PURPOSE_SHUFFLE,
    PURPOSE_SPLIT,
    epoch_order,
    iterate_batches,
    num_batches,
    per_class_split,
    train_val_split,
)
from .cache import H5Images, open_cache, write_cache
from .dataset import Dataset
from .download import DATA_ENV, default_data_dir
from .errors import (
    CacheError,
    ChecksumError,
    DataError,
    DatasetNotFoundError,
    DownloadError,
    FormatError,
    UnsafeArchiveError,
)
from .transforms import NORMALIZATIONS, denormalize, draw_crop_flip, normalize, random_crop_flip

#: Names accepted by :func:`load_dataset`.
DATASETS = ("cifar10", "cifar100", "imagenet32", "mnist", "fmnist", "digits", "synthetic")
#: Datasets read from files, which accept ``source=PATH`` (the CLI's ``--source PATH``).
SOURCE_DATASETS = ("cifar10", "cifar100", "imagenet32", "mnist", "fmnist")


def load_dataset(name: str, data_dir=None, download: bool = True, *, source=None,
                 **kw) -> Dataset:
    """Load a dataset by name.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: folder for downloads and caches (default ``$REFDTP_DATA``,
            else ``~/.cache/refdtp``); unused by "digits" and "synthetic".
        download: allow downloads (CIFAR, MNIST, Fashion-MNIST only).
        source: the user's own copy, for :data:`SOURCE_DATASETS`: a CIFAR
            ``.tar.gz``, an extracted folder or a folder holding either; a
            folder of the four IDX files (MNIST, Fashion-MNIST); a folder of the
            npz batches (imagenet32). None: look in ``data_dir``.
        **kw: dataset options: ``mirrors``, ``cache`` (CIFAR, MNIST); ``verify``
            (imagenet32); the arguments of
            :func:`data_loaders.embedded.make_synthetic` ("synthetic").

    Returns:
        A :class:`Dataset`. For "imagenet32" the images are lazy HDF5 arrays:
        call ``close()`` (or use ``with``) when done.

    Raises:
        ValueError: unknown name.
        DataError: ``source`` given for a dataset without files; and its
            subclasses DatasetNotFoundError (also a missing or unrecognisable
            ``source``), DownloadError, ChecksumError, CacheError, FormatError
            (a damaged file): see messages.
    """
    if source is not None and not str(source).strip():
        raise DatasetNotFoundError(f"{name}: the source path is empty; name a file or folder")
    if source is not None and name in DATASETS and name not in SOURCE_DATASETS:
        raise DataError(f"{source}: {name} is built in memory and reads no files; --source "
                        f"(source=) applies to {', '.join(SOURCE_DATASETS)}")
    if name in ("cifar10", "cifar100"):
        from .cifar import load_cifar
        return load_cifar(name, data_dir, download, source=source, **kw)
    if name in ("mnist", "fmnist"):
        from .mnist import load_mnist
        return load_mnist(name, data_dir, download, source=source, **kw)
    if name == "imagenet32":
        from .imagenet32 import load_imagenet32
        return load_imagenet32(data_dir, download, source=source, **kw)
    if name == "digits":
        from .embedded import load_digits
        return load_digits(**kw)
    if name == "synthetic":
        from .embedded import make_synthetic
        return make_synthetic(**kw)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


__all__ = [
    "DATASETS", "DATA_ENV", "NORMALIZATIONS", "PURPOSE_AUGMENT", "PURPOSE_SHUFFLE",
    "PURPOSE_SPLIT", "CacheError", "ChecksumError", "DataError", "Dataset",
    "DatasetNotFoundError", "DownloadError", "FormatError", "H5Images", "SOURCE_DATASETS",
    "UnsafeArchiveError",
    "default_data_dir", "denormalize", "draw_crop_flip", "epoch_order", "iterate_batches",
    "load_dataset", "normalize", "num_batches", "open_cache", "per_class_split",
    "random_crop_flip", "train_val_split", "write_cache",
]
