"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the official "python version".

Sources, in order of preference: ``source=`` (a ``.tar.gz``, an extracted
folder, or a folder holding either), then in ``<data_dir>``: the official
archive when it carries the published MD5, else the complete extracted folder
(``cifar-10-batches-py/``), else a download from the official address. The
batches are Python-2 pickles: dicts with bytes keys holding ``b"data"``
(n, 3072) uint8 rows (1024 red, 1024 green, 1024 blue values, each row-major
32x32) and ``b"labels"`` (``b"fine_labels"`` for CIFAR-100).

An archive is read in memory, member by member, and to its end, so the gzip
CRC is checked before anything is returned (and cached).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import pickles
from .cache import load_cached, open_orphan_cache
from .dataset import Dataset
from .download import checksum_error, default_data_dir, fetch, iter_tar_files, md5_file, md5_files
from .errors import SOURCE_HINT, DataError, DatasetNotFoundError

log = logging.getLogger("data_loaders")

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
    num_classes: int = 10

    @property
    def files(self) -> tuple:
        """Every file of the extracted folder: meta, train batches, test batches."""
        return (self.meta,) + self.train + self.test


CIFAR = {
    "cifar10": CifarSpec("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                         "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                         ("test_batch",), "batches.meta", b"labels", b"label_names", "cifar10"),
    "cifar100": CifarSpec("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                          "cifar-100-python", ("train",), ("test",), "meta", b"fine_labels",
                          b"fine_label_names", "cifar100", 100),
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

    Raises:
        DatasetNotFoundError: no source (or ``source`` missing or unrecognisable).
        ChecksumError: an official-name archive has the wrong MD5 and no
            complete extracted folder is next to it.
        DataError: a damaged archive or batch file; the message names it.
    """
    spec = CIFAR[name]
    root = default_data_dir(data_dir)
    cache_path = root / f"{name}.h5"
    if source is not None:
        src, digest = resolve_source(Path(source).expanduser(), spec), None
    else:
        src, digest = official_source(root, spec)
    if src is None:
        if cache and cache_path.exists():
            return open_orphan_cache(cache_path, name=name,
                                     hint=_missing_message(root, spec, mirrors))
        if not download:
            raise DatasetNotFoundError(_missing_message(root, spec, mirrors))
        src = fetch(spec.archive, spec.md5, root, [m + spec.archive for m in mirrors],
                    hint=f" To use a copy that is not the official archive, {SOURCE_HINT}.")
        digest = spec.md5
    if digest is None:
        digest = md5_file(src) if src.is_file() else md5_files(_batch_files(src, spec))
    return load_cached(cache_path, name=name, source_md5=digest,
                       build=lambda: read_cifar(src, name), use_cache=cache)


def read_cifar(src, name: str = "cifar10") -> Dataset:
    """Parse a CIFAR archive (read in memory, to its end) or an extracted folder."""
    src = Path(src)
    if src.is_dir():
        return read_cifar_folder(src, name)
    return read_cifar_archive(src, name)


def read_cifar_folder(folder, name: str = "cifar10") -> Dataset:
    """Parse an extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder."""
    spec = CIFAR[name]
    parts = {}
    for path in _batch_files(Path(folder), spec):  # raises early, listing every missing file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        parts[path.name] = parse_member(path.name, data, spec, str(path))
    return _assemble(parts, spec, name)


def read_cifar_archive(archive, name: str = "cifar10") -> Dataset:
    """Parse the batch files inside a CIFAR tarball without extracting it to disk.

    The whole archive is read, so a damaged gzip stream (CRC, length) is
    reported, in preference to any error its damaged members cause.
    """
    spec = CIFAR[name]
    wanted = {f"{spec.folder}/{f}": f for f in spec.files}
    parts, first_error = {}, None
    for member, data in iter_tar_files(archive, wanted):
        if first_error is None:
            try:
                parts[wanted[member]] = parse_member(wanted[member], data, spec,
                                                     f"{archive} (member {member})")
            except DataError as exc:
                first_error = exc
    if first_error is not None:
        raise first_error
    missing = [f"{spec.folder}/{f}" for f in spec.files if f not in parts]
    if missing:
        raise DatasetNotFoundError(f"{archive}: the archive lacks {', '.join(missing)}; is it "
                                   f"the official {spec.archive}?")
    return _assemble(parts, spec, name)


def parse_member(filename: str, data: bytes, spec: CifarSpec, where: str):
    """Class names (meta file) or ``(images, labels)`` (batch file) of one file's bytes."""
    d = pickles.load_py2_pickle(data, where)
    if filename == spec.meta:
        return pickles.class_names(pickles.get_field(d, spec.names_key, where), spec.num_classes,
                                   where, spec.names_key)
    return parse_batch(d, spec, where)


def parse_batch(d: dict, spec: CifarSpec, where: str):
    """(n, 3, 32, 32) uint8 images and (n,) int64 labels of one unpickled batch dict."""
    rows = pickles.pixel_rows(pickles.get_field(d, b"data", where), 3072, where, b"data")
    labels = pickles.class_labels(pickles.get_field(d, spec.label_key, where), len(rows),
                                  spec.num_classes, where, spec.label_key)
    return rows.reshape(-1, 3, 32, 32), labels


def _assemble(parts: dict, spec: CifarSpec, name: str) -> Dataset:
    train, test = [parts[f] for f in spec.train], [parts[f] for f in spec.test]
    return Dataset(name=name, class_names=parts[spec.meta], normalization=spec.normalization,
                   train_images=np.concatenate([x for x, _ in train]),
                   train_labels=np.concatenate([y for _, y in train]),
                   test_images=np.concatenate([x for x, _ in test]),
                   test_labels=np.concatenate([y for _, y in test]))


def _missing_files(folder: Path, spec: CifarSpec) -> list:
    return [f for f in spec.files if not (folder / f).is_file()]


def _batch_files(folder: Path, spec: CifarSpec) -> list:
    missing = _missing_files(folder, spec)
    if missing:
        raise DatasetNotFoundError(f"{folder}: missing {', '.join(missing)}; the folder must "
                                   f"hold the extracted official {spec.archive}")
    return [folder / f for f in spec.files]


def official_source(root: Path, spec: CifarSpec):
    """``(path, digest)`` of the source to use in the data folder, or ``(None, None)``.

    The official archive is used when it carries the published MD5. Otherwise
    the complete extracted folder next to it is used (with a warning). An
    archive with another MD5 and no complete folder raises :class:`ChecksumError`.
    """
    archive, folder = root / spec.archive, root / spec.folder
    if not archive.is_file():
        if folder.is_dir():
            log.info("using %s", folder)
            return folder, None
        return None, None
    digest = md5_file(archive)
    if digest == spec.md5:
        log.info("using %s%s", archive, f" (not the folder {folder})" if folder.exists() else "")
        return archive, digest
    missing = _missing_files(folder, spec) if folder.is_dir() else None
    if missing == []:
        log.warning("%s: MD5 %s is not the published %s; using %s instead", archive, digest,
                    spec.md5, folder)
        return folder, None
    state = (f"the extracted folder {folder} lacks {', '.join(missing)}" if missing
             else f"there is no extracted folder {folder}")
    raise checksum_error(archive, spec.md5, digest, f" {state[0].upper()}{state[1:]}, so it "
                         f"cannot be used instead. To use a copy that is not the official "
                         f"archive, {SOURCE_HINT}.")


def resolve_source(path: Path, spec: CifarSpec) -> Path:
    """A user-given archive or folder (or a folder holding one of them)."""
    what = (f"{spec.archive} (or another tarball of it), its extracted folder {spec.folder}/, "
            "or a folder holding one of them")
    if not path.exists():
        raise DatasetNotFoundError(f"{path}: does not exist; the source must be {what}")
    if path.is_file():
        return path
    if (path / spec.meta).exists():
        return path
    for cand in (path / spec.archive, path / spec.folder):
        if cand.exists():
            log.info("using %s", cand)
            return cand
    raise DatasetNotFoundError(f"{path}: holds neither {spec.archive} nor {spec.folder}/ nor "
                               f"{spec.meta} and the batch files; the source must be {what}")


def _missing_message(root: Path, spec: CifarSpec, mirrors) -> str:
    url = (mirrors[0] if mirrors else MIRRORS[0]) + spec.archive
    return (f"{spec.archive} not found in {root}. Download {url} (MD5 {spec.md5}) and put it "
            f"there, or its extracted folder {root / spec.folder}/; or load with "
            f"download=True, or {SOURCE_HINT}, or set data_dir / $REFDTP_DATA.")
