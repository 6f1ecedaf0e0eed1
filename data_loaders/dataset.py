"""The :class:`Dataset` container every loader returns."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import FormatError


@dataclass
class Dataset:
    """Train and test splits of an image classification dataset, on the host.

    Attributes:
        name: dataset name ("cifar10", "mnist", ...).
        train_images: (N, C, H, W) uint8 array, or a lazy HDF5-backed array
            (:class:`data_loaders.cache.H5Images`) supporting ``x[indices]``.
        train_labels: (N,) int64 in ``[0, num_classes)``.
        test_images: (M, C, H, W) uint8, like ``train_images``.
        test_labels: (M,) int64.
        class_names: one name per class; its length is ``num_classes``.
        normalization: key of :data:`data_loaders.transforms.NORMALIZATIONS`
            holding this dataset's default input statistics.
        source_md5: digest of the files the data was read from ("" if generated).
    """

    name: str
    train_images: object
    train_labels: np.ndarray
    test_images: object
    test_labels: np.ndarray
    class_names: tuple
    normalization: str
    source_md5: str = ""

    def __post_init__(self):
        self.class_names = tuple(str(c) for c in self.class_names)
        shape = None
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            _check_split(self.name, split, images, labels, len(self.class_names))
            if shape is not None and tuple(images.shape[1:]) != shape:
                raise FormatError(f"{self.name}: train images are {shape} but test images "
                                  f"are {tuple(images.shape[1:])}")
            shape = tuple(images.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of classes K (labels are 0..K-1)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple:
        """(C, H, W) of one image."""
        return tuple(self.train_images.shape[1:])

    def close(self) -> None:
        """Close the HDF5 file behind lazy image arrays (no-op for in-memory data)."""
        for images in (self.train_images, self.test_images):
            if hasattr(images, "close"):
                images.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_split(name, split, images, labels, num_classes):
    """Raise :class:`FormatError` (a ValueError) naming the problem when a split is malformed."""
    where = f"{name} {split}"
    if np.dtype(images.dtype) != np.uint8 or len(images.shape) != 4:
        raise FormatError(f"{where} images must be (N, C, H, W) uint8, got "
                          f"{tuple(images.shape)} {images.dtype}")
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.ndim != 1:
        raise FormatError(f"{where} labels must be a (N,) int64 array, got "
                          f"{getattr(labels, 'shape', '?')} {getattr(labels, 'dtype', type(labels))}")
    if len(labels) != images.shape[0]:
        raise FormatError(f"{where}: {images.shape[0]} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise FormatError(f"{where} labels must lie in [0, {num_classes}), got "
                          f"[{labels.min()}, {labels.max()}]")
