"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the official "python version".

Sources, in order of preference: ``source=`` (a ``.tar.gz`` or an extracted
folder), ``<data_dir>/cifar-10-python.tar.gz`` (checked against the published
MD5), ``<data_dir>/cifar-10-batches-py/``, else a download from the official
address. The batches are Python-2 pickles: dicts with bytes keys holding
``b"data"`` (n, 3072) uint8 rows (1024 red, 1024 green, 1024 blue values, each
row-major 32x32) and ``b"labels"`` (``b"fine_labels"`` for CIFAR-100).
"""
from __future__ import annotations

import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import load_cached, open_orphan_cache
from .dataset import Dataset
from .download import check_md5, default_data_dir, fetch, md5_file, md5_files, safe_extract
from .errors import DataError, DatasetNotFoundError

try:  # NumPy >= 2 moved the pickle helper; the old name warns there.
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct

MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)


@dataclass(frozen=True)
class CifarSpec:
    """Official file layout of one CIFAR variant."""

    archive: str
    md5: str
    folder: str
    train: tuple
    test: tuple
    meta: str
    label_key: bytes
    names_key: bytes
    normalization: str


CIFAR = {
    "cifar10": CifarSpec("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                         "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                         ("test_batch",), "batches.meta", b"labels", b"label_names", "cifar10"),
    "cifar100": CifarSpec("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                          "cifar-100-python", ("train",), ("test",), "meta", b"fine_labels",
                          b"fine_label_names", "cifar100"),
}


def load_cifar(name: str = "cifar10", data_dir=None, download: bool = True, *, source=None,
               mirrors=MIRRORS, cache: bool = True) -> Dataset:
    """Load CIFAR-10 or CIFAR-100 (fine labels) as uint8 (N, 3, 32, 32) images.

    Args:
        name: "cifar10" or "cifar100".
        data_dir: data folder (default: see :func:`default_data_dir`).
        download: fetch the official archive when no source and no cache is found.
        source: a user-supplied ``.tar.gz``, an extracted folder, or a folder
            holding either. Its MD5 is recorded but not compared with the
            published one.
        mirrors: base URLs tried in order for the download.
        cache: read/write ``<data_dir>/<name>.h5``.

    Returns:
        A :class:`Dataset`: 50000/10000 images for the full datasets.
    """
    spec = CIFAR[name]
    root = default_data_dir(data_dir)
    cache_path = root / f"{name}.h5"
    src = _resolve_source(Path(source).expanduser(), spec) if source is not None else (
        _find_source(root, spec))
    if src is None:
        if cache and cache_path.exists():
            return open_orphan_cache(cache_path, name=name,
                                     hint=_missing_message(root, spec, mirrors))
        if not download:
            raise DatasetNotFoundError(_missing_message(root, spec, mirrors))
        src = fetch(spec.archive, spec.md5, root, [m + spec.archive for m in mirrors])
    if src.is_file():
        digest = md5_file(src)
        if source is None:
            check_md5(src, spec.md5, digest, " To use a copy that is not the official "
                      "archive, pass it as source=PATH.")
    else:
        digest = md5_files(_batch_files(src, spec))
    return load_cached(cache_path, name=name, source_md5=digest,
                       build=lambda: read_cifar(src, name), use_cache=cache)


def read_cifar(src, name: str = "cifar10") -> Dataset:
    """Parse a CIFAR archive (extracted safely to a temporary folder) or folder."""
    spec = CIFAR[name]
    src = Path(src)
    if src.is_dir():
        return read_cifar_folder(src, name)
    with tempfile.TemporaryDirectory(prefix="refdtp-cifar-") as tmp:
        safe_extract(src, tmp)
        folder = Path(tmp) / spec.folder
        if not folder.is_dir():
            raise DataError(f"{src}: the archive has no {spec.folder}/ folder; is it the "
                            f"official {spec.archive}?")
        return read_cifar_folder(folder, name)


def read_cifar_folder(folder, name: str = "cifar10") -> Dataset:
    """Parse an extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder."""
    spec = CIFAR[name]
    folder = Path(folder)
    _batch_files(folder, spec)  # raises early, listing every missing file
    meta = load_py2_pickle(folder / spec.meta)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, spec.names_key,
                                                                         folder / spec.meta)]
    train = [_read_batch(folder / f, spec) for f in spec.train]
    test = [_read_batch(folder / f, spec) for f in spec.test]
    return Dataset(name=name, class_names=names, normalization=spec.normalization,
                   train_images=np.concatenate([x for x, _ in train]),
                   train_labels=np.concatenate([y for _, y in train]),
                   test_images=np.concatenate([x for x, _ in test]),
                   test_labels=np.concatenate([y for _, y in test]))


class _Py2Unpickler(pickle.Unpickler):
    """Unpickler that only builds NumPy arrays: a pickle cannot run other code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
                ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
                ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):  # how Python 3 pickles bytes (protocol 2)
            import _codecs
            return _codecs.encode
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return self._ALLOWED[(module, name)]


def load_py2_pickle(path):
    """Load a Python-2 pickle (keys as bytes) that may only contain NumPy arrays."""
    try:
        with open(path, "rb") as f:
            obj = _Py2Unpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a valid CIFAR pickle ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _get(d: dict, key: bytes, path):
    """``d[key]``, accepting str keys too (pickles re-saved under Python 3)."""
    for k in (key, key.decode()):
        if k in d:
            return d[k]
    raise DataError(f"{path}: missing key {key!r}; keys are {sorted(map(repr, d))}")


def _read_batch(path: Path, spec: CifarSpec):
    """(n, 3, 32, 32) uint8 images and (n,) int64 labels of one batch file."""
    d = load_py2_pickle(path)
    data, labels = _get(d, b"data", path), _get(d, spec.label_key, path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' must be an (n, 3072) uint8 array, got "
                        f"{getattr(data, 'shape', type(data))} {getattr(data, 'dtype', '')}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but labels of shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _batch_files(folder: Path, spec: CifarSpec) -> list:
    files = [folder / f for f in (spec.meta,) + spec.train + spec.test]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DatasetNotFoundError(f"{folder}: missing {', '.join(missing)}; the folder must "
                                   f"hold the extracted official {spec.archive}")
    return files


def _find_source(root: Path, spec: CifarSpec):
    """The official archive or extracted folder inside ``root``, or None."""
    for cand in (root / spec.archive, root / spec.folder):
        if cand.exists():
            return cand
    return None


def _resolve_source(path: Path, spec: CifarSpec) -> Path:
    """A user-given archive or folder (or a folder holding one of them)."""
    if path.is_file():
        return path
    if path.is_dir():
        if (path / spec.meta).exists():
            return path
        found = _find_source(path, spec)
        if found is not None:
            return found
    raise DatasetNotFoundError(f"{path}: neither {spec.archive} nor a folder holding "
                               f"{spec.meta} and the batch files")


def _missing_message(root: Path, spec: CifarSpec, mirrors) -> str:
    url = (mirrors[0] if mirrors else MIRRORS[0]) + spec.archive
    return (f"{spec.archive} not found in {root}. Download {url} (MD5 {spec.md5}) and put it "
            f"there, or its extracted folder {root / spec.folder}/; or load with "
            "download=True, or pass source=PATH, or set data_dir / $REFDTP_DATA.")
