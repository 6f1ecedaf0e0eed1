"""Atomic file writes of a run directory, and the error a full or failing disk raises.

Every file of a run directory (checkpoints, metrics, report, config) is built
in memory and handed to :func:`atomic_write`, which writes it to
``.NAME.tmp-PID`` beside the target, fsyncs it, renames it into place and
fsyncs the directory. A reader therefore sees the old file or the new one,
never half a file, and a failed write leaves the old file as it was and
removes its temporary file.

No space left (ENOSPC), an exceeded quota (EDQUOT), an I/O error (EIO) or a
file system remounted read-only (EROFS) on any of these steps raises
:class:`StorageError`, which the training loop turns into the status
``storage_error`` and exit status 5. The low-level calls are the module
attributes ``_write``, ``_fsync`` and ``_rename``, so that tests can inject
these errors at every write.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

#: errno values that mean "the device cannot take this write".
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device holding",
                  errno.EIO: "an I/O error occurred on the device holding",
                  errno.EROFS: "read-only file system on the device holding"}
if hasattr(errno, "EDQUOT"):
    STORAGE_ERRNOS[errno.EDQUOT] = "the disk quota is exceeded on the device holding"
TEMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)$")

_write, _fsync, _rename = os.write, os.fsync, os.replace  # test hooks (fault injection)


class StorageError(OSError):
    """A write to a run directory failed for lack of space or an I/O error.

    Attributes:
        path: the file that could not be written.
        directory: the directory holding it (named in the message).
        note: what is still intact and how to go on, appended to the message
            (set by the training loop, which knows the last checkpoint).
    """

    def __init__(self, err: int, path, detail: str = ""):
        self.path, self.directory = Path(path), Path(path).parent
        self.note = ""  # what the caller knows is still intact (set by the training loop)
        what = STORAGE_ERRNOS.get(err, os.strerror(err))
        text = f"{what} {self.directory} (writing {self.path.name}{': ' + detail if detail else ''})"
        super().__init__(err, text)

    def __str__(self) -> str:
        return self.strerror + (f"; {self.note}" if self.note else "")


def temp_path(path) -> Path:
    """``DIR/NAME`` -> ``DIR/.NAME.tmp-PID`` (PID of this process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path, data: bytes, previous=None) -> Path:
    """Write ``data`` to ``path`` atomically and durably.

    Args:
        path: the target file.
        data: its complete new content.
        previous: if given and ``path`` exists, the old file is renamed to this
            path just before the new one takes its place.

    Returns:
        ``path``.

    Raises:
        StorageError: no space, quota exceeded or I/O error; ``path`` (and
            ``previous``) are unchanged and no temporary file is left.
        OSError: any other failure (permissions, missing directory), likewise.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        _write_file(tmp, data)
        _replace(tmp, path, previous if previous is not None and path.exists() else None)
        fsync_directory(path.parent)
    except OSError as exc:
        if exc.errno in STORAGE_ERRNOS and not isinstance(exc, StorageError):
            raise StorageError(exc.errno, path, exc.strerror or "") from exc
        raise
    finally:
        _remove_quietly(tmp)
    return path


def _replace(tmp: Path, path: Path, previous) -> None:
    """Rename ``tmp`` to ``path``, first ``path`` to ``previous`` (undone if the second rename fails)."""
    if previous is not None:
        _rename(path, previous)
    try:
        _rename(tmp, path)
    except OSError:
        if previous is not None:
            try:
                _rename(previous, path)
            except OSError:
                pass  # path is missing; previous holds its content (readers fall back to it)
        raise


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[_write(fd, view):]
        _fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory) -> None:
    """Make a rename in ``directory`` durable (ignored where directories cannot be fsynced)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        _fsync(fd)
    except OSError as exc:
        if exc.errno in STORAGE_ERRNOS:
            raise
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def remove_orphans(directory) -> list:
    """Delete the ``.NAME.tmp-PID`` files of processes that are no longer alive.

    Temporary files of running processes (another run writing here) are kept.

    Returns:
        The paths removed.
    """
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = TEMP_PATTERN.match(entry.name)
        if match and entry.is_file() and not _alive(int(match.group(1))):
            _remove_quietly(entry)
            removed.append(entry)
    return removed
