"""Errors of :mod:`data_loaders`; each message names the file and the problem."""


class DataError(Exception):
    """Base class of the errors of :mod:`data_loaders`."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset's files are missing; the message says where to put them."""


class ChecksumError(DataError, ValueError):
    """A file's digest differs from the expected one."""


class DownloadError(DataError, ConnectionError):
    """No mirror delivered a file; the message says how to place it by hand."""


class UnsafeArchiveError(DataError, ValueError):
    """An archive member is a link/device or would land outside the target."""


class CacheError(DataError, ValueError):
    """An HDF5 cache file is corrupt, truncated, or built from other data."""


class FormatError(DataError, ValueError):
    """A file's content breaks its format (bad field, shape, dtype or label)."""


#: How a user points a loader at their own copy; appended to "not found" hints.
SOURCE_HINT = "pass --source PATH (or source=PATH in Python)"
