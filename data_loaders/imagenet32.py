"""ImageNet 32x32 (Chrabaszcz, Loshchilov & Hutter, 2017, "downsampled ImageNet").

The data needs an ImageNet login, so it is never downloaded here. The official
``Imagenet32_train_npz.zip`` and ``Imagenet32_val_npz.zip`` unzip to
``train_data_batch_1.npz`` .. ``train_data_batch_10.npz`` and ``val_data.npz``,
each holding ``data`` (n, 3072) uint8 rows (channel-major, like CIFAR) and
``labels`` in 1..1000. They are converted once, one batch file at a time, into
the HDF5 cache; the returned :class:`Dataset` reads images from that file on
demand (1.28 M training images are 3.9 GB), so call ``Dataset.close()`` when done.
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from .cache import CacheWriter, open_cache, open_orphan_cache
from .dataset import Dataset
from .download import default_data_dir, md5_files
from .errors import SOURCE_HINT, CacheError, DataError, DatasetNotFoundError, FormatError

log = logging.getLogger("data_loaders")

TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
VAL_FILE = "val_data"
CLASS_MAP = "map_clsloc.txt"  # optional: "n01440764 449 tench" lines give the class names
NUM_CLASSES = 1000
URL = "https://image-net.org/download-images.php"


def load_imagenet32(data_dir=None, download: bool = False, *, source=None,
                    verify: bool = True) -> Dataset:
    """Load ImageNet 32x32 through its HDF5 cache; images stay on disk.

    Args:
        data_dir: data folder; the npz files are looked for in
            ``<data_dir>/imagenet32/`` (and its sub-folders) unless ``source`` is given.
        download: accepted for a uniform API; there is no automatic download.
        source: folder holding the npz files (directly or one level down).
        verify: check the SHA-256 of the whole cache on open (reads 3.9 GB).

    Returns:
        A :class:`Dataset` whose image arrays are lazy
        :class:`~data_loaders.cache.H5Images`: (1281167, 3, 32, 32) train and
        (50000, 3, 32, 32) test (the official validation set).
    """
    del download  # the data needs a login: see _hint()
    root = default_data_dir(data_dir)
    cache_path = root / "imagenet32.h5"
    folder = Path(source).expanduser() if source is not None else root / "imagenet32"
    files = _find_files(folder)
    if files is None and source is not None:
        state = ("holds no ImageNet32 npz batches" if folder.is_dir() else "is not a folder"
                 if folder.exists() else "does not exist")
        raise DatasetNotFoundError(f"{folder}: {state}. " + _hint(folder))
    if files is None:
        if cache_path.exists():
            return open_orphan_cache(cache_path, name="imagenet32", hint=_hint(folder), lazy=True)
        raise DatasetNotFoundError(_hint(folder))
    class_map = _find(folder, CLASS_MAP)
    digest = md5_files(files + ([class_map] if class_map else []))
    if cache_path.exists():
        try:
            return open_cache(cache_path, name="imagenet32", source_md5=digest, lazy=True,
                              verify=verify)
        except CacheError as exc:
            log.warning("%s; rebuilding it from the source", exc)
    convert_imagenet32(files, cache_path, digest, read_class_names(class_map))
    return open_cache(cache_path, name="imagenet32", source_md5=digest, lazy=True, verify=False)


def convert_imagenet32(files, cache_path, source_md5: str, class_names) -> Path:
    """Stream the 10 train batches and the val batch into one cache file.

    Only one batch (about 400 MB) is in memory at a time.
    """
    with CacheWriter(cache_path, name="imagenet32", class_names=class_names,
                     normalization="imagenet", source_md5=source_md5,
                     image_shape=(3, 32, 32)) as writer:
        for path in files[:-1]:
            log.info("converting %s", path)
            writer.append("train", *read_npz_batch(path))
        writer.append("test", *read_npz_batch(files[-1]))
    return Path(cache_path)


def read_npz_batch(path):
    """(n, 3, 32, 32) uint8 images and (n,) int64 labels 0..999 of one npz batch."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data, labels = z["data"], z["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable ImageNet32 npz batch with 'data' and "
                        f"'labels' ({type(exc).__name__}: {exc})") from exc
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be (n, 3072) uint8, got {data.shape} {data.dtype}")
    if labels.dtype.kind not in "iu":
        raise FormatError(f"{path}: 'labels' must be integers, got {labels.shape} {labels.dtype}")
    labels = labels.astype(np.int64).ravel()
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 1 or labels.max() > NUM_CLASSES):
        raise DataError(f"{path}: labels must lie in 1..{NUM_CLASSES}, got "
                        f"{labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels - 1


def read_class_names(class_map) -> list:
    """Names from ``map_clsloc.txt`` ("wnid index name" lines), else "class_000".."""
    names = [f"class_{i:03d}" for i in range(NUM_CLASSES)]
    if class_map is None:
        return names
    for line in Path(class_map).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1].isdigit() and 1 <= int(parts[1]) <= NUM_CLASSES:
            names[int(parts[1]) - 1] = parts[2]
    return names


def _find(folder: Path, name: str):
    """``folder/name[.npz]`` or the same one sub-folder down, or None."""
    for d in [folder] + sorted(p for p in folder.glob("*") if p.is_dir()):
        for cand in (d / f"{name}.npz", d / name):
            if cand.is_file():
                return cand
    return None


def _find_files(folder: Path):
    """The 10 train files then the val file; None if none exists; raises if some miss."""
    if not folder.is_dir():
        return None
    found = {n: _find(folder, n) for n in TRAIN_FILES + (VAL_FILE,)}
    missing = [n for n, p in found.items() if p is None]
    if len(missing) == len(found):
        return None
    if missing:
        raise DatasetNotFoundError(f"{folder}: missing {', '.join(missing)} (.npz). "
                                   + _hint(folder))
    return list(found.values())


def _hint(folder: Path) -> str:
    return (f"ImageNet 32x32 needs an ImageNet login and is not downloaded automatically. "
            f"Get 'Downsampled ImageNet 32x32' (Imagenet32_train_npz.zip and "
            f"Imagenet32_val_npz.zip) from {URL}, unzip both into {folder}/ (files "
            f"train_data_batch_1.npz .. train_data_batch_10.npz and val_data.npz), or "
            f"{SOURCE_HINT}.")
