"""HDF5 checkpoints of a training run: built in memory, sealed, written atomically, verified on load.

A checkpoint file is a 512-byte header (the HDF5 "user block", which HDF5
tools skip) followed by an ordinary HDF5 file::

    refdtp-checkpoint format 2 size <bytes of the HDF5 part> sha256 <hex digest of the HDF5 part>

    /                 attrs: format = "refdtp-checkpoint", format_version, refdtp_version,
                             config (JSON), config_hash, epoch, step, global_step,
                             rng_seed, created, digest
    /W/<block>/<param>              forward weights W_n
    /omega/<block>/<param>          feedback weights omega_n
    /forward_opt/...                forward optimiser state (refdtp.optim): "step" and the
                                    momentum buffers {"<block>.<param>": array}
    /feedback_opt/<block>/...       one feedback optimiser state per trained block
    /progress/...                   running sums of the epoch in progress
    /history                        the metrics rows of the finished epochs (JSON text)

Nested dicts are groups; arrays are datasets; Python scalars are 0-d datasets
whose ``type`` attribute (int, float, bool, str) restores them exactly. The
random state is the seed plus the (epoch, step) counters: every stream of
refdtp and data_loaders is derived from them, none is carried over.

Two checks, both before any value is used: the header's SHA-256 covers every
byte of the HDF5 part (so a damaged file never reaches the HDF5 parser), and
the ``digest`` attribute is the SHA-256 of a canonical serialisation of every
attribute (except itself) and every dataset (path, dtype, shape, bytes), so the
content is verified independently of the HDF5 byte layout.
:func:`save_checkpoint` builds the file in memory and hands it to
:func:`~refdtp.training.storage.atomic_write`, which keeps the old file as
``checkpoint.prev.h5``; a full disk raises
:class:`~refdtp.training.storage.StorageError` and changes nothing.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
import time
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..backend import to_host
from .storage import atomic_write

FORMAT = "refdtp-checkpoint"
FORMAT_VERSION = 2
CHECKPOINT_NAME = "checkpoint.h5"
PREVIOUS_NAME = "checkpoint.prev.h5"
REQUIRED_GROUPS = ("W", "omega", "forward_opt", "feedback_opt", "progress")
HEADER_KEYS = ("config", "config_hash", "epoch", "step", "global_step", "rng_seed")
COUNTERS = ("epoch", "step", "global_step", "rng_seed")
SEAL_SIZE = 512  # bytes of the user block holding the file digest
_SEAL = re.compile(rb"refdtp-checkpoint format (\d+) size (\d+) sha256 ([0-9a-f]{64})\n\0*")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}
_names = itertools.count()
#: What h5py raises on a damaged file (reached only by files re-sealed after an edit).
_DAMAGE = (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError)


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, of another format, or from another run."""


# -- canonical digest of attributes and datasets ---------------------------------

def _scalar_type(value) -> str | None:
    for name in ("bool", "int", "float", "str"):  # bool before int: bool is an int
        if isinstance(value, _SCALARS[name]):
            return name
    return None


def _plain(value):
    """An attribute value as read by h5py -> Python scalar, str, bytes or array."""
    return value.item() if isinstance(value, np.generic) else value


def _feed(sha, where: str, value) -> None:
    """Add one named value to the digest, unambiguously (type, length-prefixed bytes)."""
    value = _plain(value)
    if isinstance(value, (bytes, str)):
        kind, raw = type(value).__name__, value if isinstance(value, bytes) else value.encode()
    elif _scalar_type(value) is not None:
        kind, raw = _scalar_type(value), repr(value).encode()
    else:
        a = np.ascontiguousarray(value)
        if a.dtype.hasobject:
            kind, raw = "objects", repr(a.tolist()).encode()
        else:
            kind, raw = f"array:{a.dtype.str}:{a.shape}", a.tobytes()
    sha.update(f"{len(where)}:{where}|{kind}|{len(raw)}|".encode())
    sha.update(raw)


def _feed_attrs(sha, where: str, attrs, skip=()) -> dict:
    out = {}
    for name in sorted(attrs):
        if name not in skip:
            out[name] = _plain(attrs[name])
            _feed(sha, f"{where}@{name}", out[name])
    return out


def _read_tree(group: h5py.Group, sha, where: str = "") -> dict:
    """The group as nested dicts, every value and attribute fed to ``sha`` on the way."""
    out = {}
    for key in sorted(group):
        item, path = group[key], f"{where}/{key}"
        attrs = _feed_attrs(sha, path, item.attrs)
        if isinstance(item, h5py.Group):
            out[key] = _read_tree(item, sha, path)
            continue
        kind = attrs.get("type")
        if kind is None:
            out[key] = item[()]
        elif kind == "str":
            out[key] = item.asstr()[()]
        else:
            out[key] = _SCALARS[kind](item[()])
        _feed(sha, path, out[key])
    return out


def read_file(f: h5py.File) -> tuple[dict, dict, str]:
    """(root attributes, tree, canonical SHA-256) of an open checkpoint; ``digest`` not covered."""
    sha = hashlib.sha256()
    attrs = _feed_attrs(sha, "", f.attrs, skip=("digest",))
    tree = _read_tree(f, sha)
    return attrs, tree, sha.hexdigest()


# -- save ---------------------------------------------------------------------

def _write_tree(group: h5py.Group, tree: dict) -> None:
    for key, value in tree.items():
        if isinstance(value, dict):
            _write_tree(group.create_group(key), value)
        elif _scalar_type(value) is not None:
            group.create_dataset(key, data=value).attrs["type"] = _scalar_type(value)
        else:
            group.create_dataset(key, data=to_host(value))


def _host_tree(tree: dict) -> dict:
    """Every array on the host; NumPy scalars as Python scalars."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out[k] = _host_tree(v)
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v if _scalar_type(v) is not None else to_host(v)
    return out


def seal(image: bytes) -> bytes:
    """The 512-byte header (format, size, SHA-256 of ``image``) followed by ``image``."""
    text = f"{FORMAT} format {FORMAT_VERSION} size {len(image)} sha256 {hashlib.sha256(image).hexdigest()}\n"
    return text.encode().ljust(SEAL_SIZE, b"\0") + image


def checkpoint_bytes(header: dict, payload: dict) -> bytes:
    """The complete file :func:`save_checkpoint` writes (see there for the arguments)."""
    tree = {**{k: v for k, v in payload.items() if k != "history"},
            "history": json.dumps(payload.get("history", []))}
    tree = {k: (_host_tree(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "refdtp_version": __version__,
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             **{k: header[k] for k in HEADER_KEYS}}
    attrs["config"] = json.dumps(header["config"], sort_keys=True)
    name = f"refdtp-checkpoint-{next(_names)}.h5"  # in memory only (backing_store=False)
    with h5py.File(name, "w", driver="core", backing_store=False, userblock_size=SEAL_SIZE) as f:
        f.attrs.update(attrs)
        _write_tree(f, tree)
        f.attrs["digest"] = read_file(f)[2]
        f.flush()
        image = f.id.get_file_image()
    return seal(image)


def save_checkpoint(path, header: dict, payload: dict) -> Path:
    """Write a checkpoint atomically; the replaced file becomes ``*.prev.h5``.

    Args:
        path: target file (normally ``RUN_DIR/checkpoint.h5``).
        header: the :data:`HEADER_KEYS` (config as a dict).
        payload: {"W", "omega", "forward_opt", "feedback_opt", "progress": nested
            dicts of arrays (NumPy or CuPy) and scalars; "history": list of dicts}.

    Returns:
        The path written.

    Raises:
        StorageError: the disk is full or failing; the old files are unchanged.
    """
    path = Path(path)
    return atomic_write(path, checkpoint_bytes(header, payload), previous=previous_path(path))


def previous_path(path) -> Path:
    """``checkpoint.h5`` -> ``checkpoint.prev.h5`` (any ``X.h5`` -> ``X.prev.h5``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


# -- load ---------------------------------------------------------------------

def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None


def unseal(path: Path, data: bytes) -> bytes:
    """The HDF5 part of a checkpoint file, after checking its header's size and SHA-256."""
    match = _SEAL.fullmatch(data[:SEAL_SIZE])
    if match is None:
        if data.startswith(_HDF5_SIGNATURE):
            raise CheckpointError(f"{path} is an HDF5 file without a refdtp checkpoint header (not a "
                                  f"refdtp checkpoint, or one of format 1 from an older refdtp; "
                                  f"this refdtp ({__version__}) reads format {FORMAT_VERSION})")
        what = "corrupt or truncated" if data[:len(FORMAT)] == FORMAT.encode() else "not a refdtp checkpoint"
        raise CheckpointError(f"{path} is {what}: its first {SEAL_SIZE} bytes are not a refdtp "
                              f"checkpoint header")
    version, size, digest = int(match[1]), int(match[2]), match[3].decode()
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}; this refdtp "
                              f"({__version__}) reads version {FORMAT_VERSION}")
    image = data[SEAL_SIZE:]
    if len(image) != size:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {len(data)} bytes, its "
                              f"header says {size + SEAL_SIZE}")
    if hashlib.sha256(image).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: its bytes do not match the SHA-256 "
                              f"digest in its header (damaged or modified)")
    return image


def load_checkpoint(path) -> tuple[dict, dict]:
    """Read and verify a checkpoint.

    Returns:
        (header, payload): header has the :data:`HEADER_KEYS` (config as a dict)
        plus format, format_version, refdtp_version, created; payload has host
        arrays and "history" as a list of dicts.

    Raises:
        CheckpointError: missing or unreadable file, not a checkpoint, truncated,
            foreign format, unsupported version, missing groups, a file or content
            digest mismatch, or header values of the wrong kind.
    """
    path = Path(path)
    image = unseal(path, _read_bytes(path))
    try:
        with h5py.File(io.BytesIO(image), "r") as f:
            attrs, tree, digest = read_file(f)
            stored = _plain(f.attrs["digest"]) if "digest" in f.attrs else None
    except _DAMAGE as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: "
                              f"{exc})") from None
    _check_header(path, attrs, tree, stored)
    if digest != stored:
        raise CheckpointError(f"checkpoint {path} is corrupt: its attributes or data do not match "
                              f"the stored SHA-256 digest")
    return _decode(path, attrs, tree)


def _check_header(path: Path, attrs: dict, tree: dict, digest) -> None:
    if attrs.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a refdtp checkpoint (format attribute "
                              f"{attrs.get('format')!r}, expected {FORMAT!r})")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {attrs.get('format_version')!r}; "
                              f"this refdtp ({__version__}) reads version {FORMAT_VERSION}")
    missing = [k for k in HEADER_KEYS if k not in attrs] + ([] if digest else ["digest"])
    missing += [f"/{g}" for g in (*REQUIRED_GROUPS, "history") if g not in tree]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")


def _decode(path: Path, attrs: dict, tree: dict) -> tuple[dict, dict]:
    """Verified attributes and tree -> (header, payload), checking every value's kind."""
    header = dict(attrs)
    try:
        header["config"] = json.loads(attrs["config"])
        tree["history"] = json.loads(tree["history"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} holds unreadable JSON ({exc})") from None
    bad = [k for k in COUNTERS if type(header[k]) is not int or header[k] < 0]
    bad += [k for k, kind in (("config", dict), ("config_hash", str)) if not isinstance(header[k], kind)]
    bad += [] if isinstance(tree["history"], list) else ["/history"]
    bad += [f"/{g}" for g in REQUIRED_GROUPS if not isinstance(tree[g], dict)]
    if bad:
        raise CheckpointError(f"checkpoint {path} is corrupt: invalid {', '.join(bad)}")
    return header, tree


def config_differences(saved: dict, current: dict, ignore=("epochs", "diagnostics", "notes")) -> list:
    """Keys whose values differ between two config dicts, as "key: saved -> current"."""
    keys = sorted((set(saved) | set(current)) - set(ignore))
    return [f"{k}: {saved.get(k, '<absent>')!r} -> {current.get(k, '<absent>')!r}"
            for k in keys if saved.get(k, "<absent>") != current.get(k, "<absent>")]


def check_like(name: str, loaded: dict, template: dict, path) -> None:
    """Raise CheckpointError unless ``loaded`` has the keys, shapes and dtypes of ``template``."""
    if not isinstance(loaded, dict) or set(loaded) != set(template):
        got = sorted(loaded) if isinstance(loaded, dict) else type(loaded).__name__
        raise CheckpointError(f"checkpoint {path}: {name} has entries {got} but the "
                              f"network needs {sorted(template)}")
    for key, want in template.items():
        got = loaded[key]
        if isinstance(want, dict):
            check_like(f"{name}/{key}", got, want, path)
        elif tuple(np.shape(got)) != tuple(want.shape) or np.dtype(got.dtype) != np.dtype(want.dtype):
            raise CheckpointError(f"checkpoint {path}: {name}/{key} is {np.shape(got)} "
                                  f"{got.dtype} but the network needs {tuple(want.shape)} {want.dtype}")


def check_optimizer_state(name: str, loaded: dict, template: dict, params: dict, path) -> None:
    """Raise CheckpointError unless an optimiser state fits its parameters.

    The top-level entries must be those of a fresh state (``template``); every
    array buffer (momentum, Adam moments) must be keyed by a parameter name and
    have that parameter's shape and dtype. Buffers may be absent (PyTorch
    creates SGD momentum at the first step).
    """
    if not isinstance(loaded, dict) or set(loaded) != set(template):
        got = sorted(loaded) if isinstance(loaded, dict) else type(loaded).__name__
        raise CheckpointError(f"checkpoint {path}: {name} has entries {got}, expected "
                              f"{sorted(template)}")
    for key, value in loaded.items():
        if not isinstance(value, dict):
            continue
        unknown = sorted(set(value) - set(params))
        if unknown:
            raise CheckpointError(f"checkpoint {path}: {name}/{key} has buffers {unknown} for "
                                  f"parameters the network does not have")
        check_like(f"{name}/{key}", value, {k: params[k] for k in value}, path)
