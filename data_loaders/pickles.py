"""Restricted reading of Python-2 pickles (CIFAR batches) and checks of their fields.

A pickle is untrusted input: :class:`Py2Unpickler` can only build NumPy arrays
(and the bytes objects inside them), so a data file cannot run code or reach
NumPy internals with crafted state, and every failure of parsing it becomes a
:class:`~data_loaders.errors.FormatError` whose message names the file
(``where``) and the field.
"""
from __future__ import annotations

import io
import math
import pickle
from typing import ClassVar

import numpy as np

from .errors import FormatError

#: dtype codes an array in a data file may have (NumPy's pickled ``dtype(code, ...)``).
_DTYPES = frozenset(f"{k}{n}" for k in "ui" for n in (1, 2, 4, 8)) | {"f4", "f8", "b1"}
_MAX_DEPTH = 3  # arrays are looked for this deep in dicts, lists and tuples


def _latin1(text, encoding="latin1"):
    """``_codecs.encode`` as Python 3 pickles bytes (protocol 2), for latin-1 only."""
    if not isinstance(text, str) or not isinstance(encoding, str) \
            or encoding.replace("-", "").replace("_", "") != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(text).__name__}, "
                                     f"{encoding!r}) in a data file")
    return text.encode("latin1")


def _empty_bytes(*args):
    """``bytes()`` as Python 3 pickles ``b""`` (protocol 2); no argument allowed."""
    if args:
        raise pickle.UnpicklingError("refusing bytes(...) with arguments in a data file")
    return b""


class _DtypeStub:
    """Stands for ``numpy.dtype(code, align, copy)``; ``__setstate__`` keeps the byte order."""

    def __init__(self, code=None, *_):
        self.code, self.byteorder = code, "|"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1:
            self.byteorder = state[1]

    def build(self) -> np.dtype:
        if not isinstance(self.code, str) or self.code not in _DTYPES \
                or self.byteorder not in ("<", ">", "|", "="):
            raise ValueError(f"array dtype {self.code!r} (byte order {self.byteorder!r}) is not "
                             "a plain integer, float or bool type")
        dt = np.dtype(self.code)
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" else dt


class _ArrayStub:
    """Stands for ``numpy.core.multiarray._reconstruct(ndarray, ...)``; keeps the state."""

    def __init__(self, *_):
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def build(self) -> np.ndarray:
        """A new array from ``(version, shape, dtype, is_fortran, raw bytes)``."""
        st = self.state
        if not (isinstance(st, tuple) and len(st) == 5 and isinstance(st[1], tuple)
                and isinstance(st[2], _DtypeStub) and isinstance(st[4], bytes)):
            raise ValueError("an array whose pickled state is not (version, shape, dtype, "
                             "fortran, bytes)")
        shape, dtype, raw = st[1], st[2].build(), st[4]
        if not all(type(n) is int and 0 <= n < 2 ** 40 for n in shape):
            raise ValueError(f"an array of shape {shape!r}")
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"an array of shape {shape} {dtype} holds {len(raw)} bytes")
        flat = np.frombuffer(bytearray(raw), dtype)  # a writable copy
        return flat.reshape(shape, order="F" if st[3] else "C")


class Py2Unpickler(pickle._Unpickler):
    """Unpickler that only builds NumPy arrays and bytes: a pickle cannot run other code.

    NumPy's own reconstructors never see the pickled state: arrays and dtypes
    are first built as stubs, then checked and made with :func:`numpy.frombuffer`
    (see :func:`load_py2_pickle`). It is the pure-Python unpickler: its memo is
    a dict, so a damaged memo index cannot make it allocate gigabytes (the C
    unpickler sizes its memo table by the largest index).
    """

    _ALLOWED: ClassVar[dict] = {
        ("numpy.core.multiarray", "_reconstruct"): _ArrayStub,
        ("numpy._core.multiarray", "_reconstruct"): _ArrayStub,
        ("numpy", "ndarray"): _ArrayStub, ("numpy", "dtype"): _DtypeStub,
        ("_codecs", "encode"): _latin1, ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return self._ALLOWED[(module, name)]


def load_py2_pickle(data: bytes, where: str) -> dict:
    """Unpickle a Python-2 dict (keys as bytes) that may only contain NumPy arrays.

    Args:
        data: the whole pickle.
        where: the file (or ``archive (member name)``) named in error messages.

    Returns:
        The dict, its arrays (at most :data:`_MAX_DEPTH` levels down) built as
        NumPy arrays.

    Raises:
        FormatError: the bytes are no such pickle (truncated, corrupt, refused
            class, malformed array) or do not hold a dict.
    """
    try:
        obj = _materialize(Py2Unpickler(io.BytesIO(data), encoding="bytes").load(), 0)
    except Exception as exc:  # any failure to parse untrusted bytes means bad data
        raise FormatError(f"{where}: not a valid CIFAR pickle ({type(exc).__name__}: "
                          f"{_one_line(exc)})") from exc
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _materialize(obj, depth: int):
    """``obj`` with its array stubs replaced by checked NumPy arrays."""
    if isinstance(obj, (_ArrayStub, _DtypeStub)):
        return obj.build()
    if depth >= _MAX_DEPTH:
        return obj
    if isinstance(obj, dict):
        return {k: _materialize(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, depth + 1) for v in obj)
    return obj


def get_field(d: dict, key: bytes, where: str):
    """``d[key]``, accepting a str key too (pickles re-saved under Python 3)."""
    for k in (key, key.decode()):
        if k in d:
            return d[k]
    keys = ", ".join(sorted(repr(k)[:40] for k in d)[:20])
    raise FormatError(f"{where}: missing key {key!r}; the keys are {keys or 'none'}")


def pixel_rows(value, width: int, where: str, field: bytes) -> np.ndarray:
    """Check a ``(n, width)`` uint8 array field and return it."""
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim != 2 \
            or value.shape[1] != width:
        got = (f"{value.shape} {value.dtype}" if isinstance(value, np.ndarray)
               else type(value).__name__)
        raise FormatError(f"{where}: {field!r} must be an (n, {width}) uint8 array, got {got}")
    return value


def class_labels(value, n: int, num_classes: int, where: str, field: bytes) -> np.ndarray:
    """Check a field of ``n`` integer labels in ``0..num_classes-1``.

    Returns:
        (n,) int64 labels.
    """
    labels = _int_array(value, where, field)
    if labels.shape != (n,):
        raise FormatError(f"{where}: {field!r} holds {labels.size} labels for {n} images")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise FormatError(f"{where}: {field!r} values must lie in 0..{num_classes - 1}, got "
                          f"{labels[bad[0]]} at index {bad[0]}")
    return labels.astype(np.int64)


def _int_array(value, where: str, field: bytes) -> np.ndarray:
    """A list/tuple of Python ints or a 1-D integer array, as an integer array."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu" or value.ndim != 1:
            raise FormatError(f"{where}: {field!r} must hold integer labels, got an array "
                              f"{value.shape} {value.dtype}")
        return value
    if not isinstance(value, (list, tuple)):
        raise FormatError(f"{where}: {field!r} must be a list of integer labels, got "
                          f"{type(value).__name__}")
    kinds = {type(v).__name__ for v in value if type(v) is not int}
    if kinds:
        raise FormatError(f"{where}: {field!r} must be a list of integer labels, found "
                          f"{', '.join(sorted(kinds))}")
    too_big = [v for v in value if not -2 ** 63 <= v < 2 ** 63]
    if too_big:
        raise FormatError(f"{where}: {field!r} values must lie in a small range, got {too_big[0]}")
    return np.array(value, dtype=np.int64).reshape(len(value))


def class_names(value, num_classes: int, where: str, field: bytes) -> list:
    """Check a list of ``num_classes`` names (bytes or str) and return them as str."""
    if not isinstance(value, (list, tuple)) or len(value) != num_classes:
        got = f"{len(value)} entries" if isinstance(value, (list, tuple)) else type(value).__name__
        raise FormatError(f"{where}: {field!r} must list {num_classes} class names, got {got}")
    names = []
    for v in value:
        if not isinstance(v, (bytes, str)):
            raise FormatError(f"{where}: {field!r} must hold bytes or str names, found "
                              f"{type(v).__name__}")
        try:
            names.append(v.decode() if isinstance(v, bytes) else v)
        except UnicodeDecodeError as exc:
            raise FormatError(f"{where}: {field!r} holds a name that is not UTF-8 ({v[:20]!r})"
                              ) from exc
    return names


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
