"""Downloads with checksums, resumption and atomic writes; safe tar extraction.

A download goes to ``<name>.part`` and is renamed to ``<name>`` with
:func:`os.replace` only after its MD5 matches the published one, so a file
under its final name is always complete. An interrupted transfer leaves the
``.part`` file, which the next attempt resumes with an HTTP ``Range`` request
(or restarts when the server ignores the range).
"""
from __future__ import annotations

import hashlib
import http.client
import io
import logging
import lzma
import os
import posixpath
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from .errors import ChecksumError, DataError, DownloadError, UnsafeArchiveError

log = logging.getLogger("data_loaders")

#: Environment variable naming the data folder (cache and downloads).
DATA_ENV = "REFDTP_DATA"
_CHUNK = 1 << 20


class _Incomplete(Exception):
    """The server closed the connection before the announced length."""


def default_data_dir(data_dir=None) -> Path:
    """The data folder: ``data_dir``, else ``$REFDTP_DATA``, else a per-user cache.

    The per-user cache is ``$XDG_CACHE_HOME/refdtp`` (default ``~/.cache/refdtp``).
    The folder is not created here.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home).expanduser() / "refdtp"


def md5_file(path) -> str:
    """Hex MD5 of a file, read in 1 MiB pieces."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def md5_files(paths) -> str:
    """One hex MD5 naming a list of files: the MD5 of their names and MD5s."""
    digest = hashlib.md5(usedforsecurity=False)
    for path in paths:
        digest.update(f"{Path(path).name}:{md5_file(path)}\n".encode())
    return digest.hexdigest()


def check_md5(path, expected: str, actual: str | None = None, hint: str = "") -> None:
    """Raise :class:`ChecksumError` naming the file and both digests on a mismatch.

    ``actual`` skips recomputing a digest already known; ``hint`` is appended.
    """
    actual = actual or md5_file(path)
    if actual != expected:
        raise checksum_error(path, expected, actual, hint)


def checksum_error(path, expected: str, actual: str, hint: str = "") -> ChecksumError:
    """The :class:`ChecksumError` of a file whose MD5 is ``actual``, not ``expected``."""
    return ChecksumError(
        f"{path}: MD5 mismatch (expected {expected}, actual {actual}). The file is "
        f"corrupt or not the published one; delete it and download it again.{hint}")


def fetch(filename: str, md5: str, dest_dir, urls, *, timeout: float = 60.0,
          retries: int = 3, hint: str = "") -> Path:
    """Download ``filename`` into ``dest_dir`` from the first mirror that works.

    An existing complete file is checked and reused. A ``.part`` file left by an
    interrupted transfer is resumed. Each mirror gets up to ``retries`` attempts
    while attempts make progress.

    Args:
        filename: name of the file under ``dest_dir``.
        md5: its published hex MD5.
        dest_dir: target folder (created if missing).
        urls: full URLs to try in order (mirrors).
        timeout: socket timeout in seconds.
        retries: attempts per mirror (a failed attempt that received no bytes
            moves on to the next mirror at once).
        hint: appended to the error when an existing file has the wrong MD5.

    Returns:
        The path of the verified file.

    Raises:
        ChecksumError: the existing file, or every download, had the wrong MD5.
        DownloadError: no mirror could be reached; says where to put the file.
    """
    dest = Path(dest_dir) / filename
    if dest.exists():
        check_md5(dest, md5, hint=hint)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures, bad_digest = [], None
    for url in urls:
        for _ in range(max(1, retries)):
            before = part.stat().st_size if part.exists() else 0
            try:
                resumed = _download(url, part, timeout)
            except (OSError, http.client.HTTPException, _Incomplete) as exc:
                failures.append(f"{url}: {str(exc) or type(exc).__name__}")
                grew = part.exists() and part.stat().st_size > before
                if grew:
                    continue  # progress was made: resume from the same mirror
                break
            actual = md5_file(part)
            if actual == md5:
                os.replace(part, dest)
                log.info("downloaded %s", dest)
                return dest
            part.unlink()
            bad_digest = (url, actual)
            failures.append(f"{url}: MD5 mismatch (expected {md5}, actual {actual})")
            if not resumed:
                break  # a fresh full copy was wrong: this mirror serves another file
    _raise_fetch_failure(dest, md5, urls, failures, bad_digest)


def _raise_fetch_failure(dest, md5, urls, failures, bad_digest):
    reasons = "\n  ".join(failures) or "no URL given"
    hint = (f"Download it by hand from {urls[0] if urls else 'the official site'} and "
            f"save it as {dest} (MD5 {md5}), or point data_dir / ${DATA_ENV} to a "
            "folder that holds it.")
    if bad_digest is not None:
        raise ChecksumError(f"{dest.name}: downloaded file has the wrong MD5 "
                            f"(expected {md5}, actual {bad_digest[1]}).\n  {reasons}\n{hint}")
    raise DownloadError(f"could not download {dest.name}:\n  {reasons}\n{hint}")


def _download(url: str, part: Path, timeout: float) -> bool:
    """Append the rest of ``url`` to ``part`` (or rewrite it); True if resumed."""
    have = part.stat().st_size if part.exists() else 0
    log.info("downloading %s to %s (from byte %d)", url, part, have)
    headers = {"User-Agent": "refdtp-data-loaders"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            return True  # nothing left to fetch: the caller checks the digest
        raise
    with resp:
        resumed = have > 0 and resp.status == 206 and _range_start(resp) == have
        if resp.status == 206 and not resumed:
            part.unlink()
            raise OSError(f"server answered with a range we did not ask for "
                          f"({resp.headers.get('Content-Range')})")
        length = resp.headers.get("Content-Length")
        expected = (have if resumed else 0) + int(length) if length else None
        with open(part, "ab" if resumed else "wb") as f:
            shutil.copyfileobj(resp, f, _CHUNK)
            f.flush()
            os.fsync(f.fileno())
    if expected is not None and part.stat().st_size < expected:
        raise _Incomplete(f"connection closed after {part.stat().st_size} of {expected} bytes")
    return resumed


def _range_start(resp) -> int | None:
    """First byte of a ``Content-Range: bytes a-b/n`` header, or None."""
    value = resp.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def safe_extract(archive, dest) -> list[Path]:
    """Extract a tar archive, refusing links, devices and escaping paths.

    Every member is checked before anything is written. Only regular files and
    folders are allowed, and each must land inside ``dest``. The archive is read
    to its end, so a damaged compressed stream (gzip CRC or length) is reported.

    Args:
        archive: path of a ``.tar``, ``.tar.gz`` (any compression tarfile reads).
        dest: target folder (created if missing).

    Returns:
        Paths of the extracted regular files.

    Raises:
        UnsafeArchiveError: a member is a symlink, hardlink, device or FIFO, or
            has an absolute path or a path that leaves ``dest``.
        DataError: the archive is unreadable (truncated, corrupt or not a tar file).
    """
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
                if not (dest / member.name).resolve().is_relative_to(dest):
                    raise UnsafeArchiveError(f"{archive}: member {member.name!r} escapes the "
                                             "target folder")
            files = [_extract_member(tar, m, dest) for m in members if m.isfile()]
            _read_to_end(tar)
            return files
    except _ARCHIVE_ERRORS as exc:
        raise _archive_error(archive, exc) from exc


def iter_tar_files(archive, names=None):
    """Yield ``(name, bytes)`` of the regular files of a tar archive, in archive order.

    Nothing is written to disk. Every member is checked like in
    :func:`safe_extract` as it is reached, and after the last one the archive is
    read to its end, so a damaged compressed stream raises (after the members
    were yielded, before the generator finishes).

    Args:
        archive: path of a ``.tar`` or compressed tar.
        names: if given, only members whose normalised name is in it are read.

    Raises:
        UnsafeArchiveError, DataError: as :func:`safe_extract`.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                _check_member(member, archive)
                name = posixpath.normpath(member.name)
                if member.isfile() and (names is None or name in names):
                    yield name, _read_member(tar, member)
            _read_to_end(tar)
    except _ARCHIVE_ERRORS as exc:
        raise _archive_error(archive, exc) from exc


# What reading a damaged archive raises: tar headers, gzip (CRC, length: OSError,
# EOFError), deflate data (zlib.error), bz2 (OSError), xz (LZMAError).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def _archive_error(archive, exc: BaseException) -> DataError:
    if isinstance(exc, DataError):
        return exc
    detail = " ".join(str(exc).split())[:200] or type(exc).__name__
    return DataError(f"{archive}: cannot read the archive ({detail}); it is truncated, "
                     "corrupt or not a tar file. Delete it and fetch it again.")


def _read_to_end(tar: tarfile.TarFile) -> None:
    """Read the rest of the (decompressed) stream, so its checksum is verified."""
    while tar.fileobj.read(_CHUNK):
        pass


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tar.extractfile(member) as src:
        shutil.copyfileobj(src, buf, _CHUNK)  # in pieces: a bad size field allocates nothing
    return buf.getvalue()


def _check_member(member: tarfile.TarInfo, archive) -> None:
    name = member.name
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"{archive}: member {name!r} is a link; refusing to extract")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} is not a regular file or folder (device or FIFO)")
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise UnsafeArchiveError(f"{archive}: member {name!r} escapes the target folder")


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> Path:
    target = dest / member.name
    target.parent.mkdir(parents=True, exist_ok=True)
    with tar.extractfile(member) as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out, _CHUNK)
    return target
