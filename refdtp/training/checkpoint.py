"""HDF5 checkpoints of a training run: written atomically, verified on load.

Layout of ``checkpoint.h5`` (format version :data:`FORMAT_VERSION`)::

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

``digest`` is the SHA-256 of every stored value (path, dtype, shape, bytes),
so garbage inside a data block is caught too, not only a broken HDF5 header.
:func:`save_checkpoint` writes a temporary file, fsyncs it, keeps the old file
as ``checkpoint.prev.h5`` and renames the new one into place.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..backend import to_host

FORMAT = "refdtp-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.h5"
PREVIOUS_NAME = "checkpoint.prev.h5"
REQUIRED_GROUPS = ("W", "omega", "forward_opt", "feedback_opt", "progress")
HEADER_KEYS = ("config", "config_hash", "epoch", "step", "global_step", "rng_seed")
_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, of another format, or from another run."""


# -- nested dicts <-> HDF5 ----------------------------------------------------

def _scalar_type(value) -> str | None:
    for name in ("bool", "int", "float", "str"):  # bool before int: bool is an int
        if isinstance(value, _SCALARS[name]):
            return name
    return None


def _write_tree(group: h5py.Group, tree: dict) -> None:
    for key, value in tree.items():
        if isinstance(value, dict):
            _write_tree(group.create_group(key), value)
        elif _scalar_type(value) is not None:
            group.create_dataset(key, data=value).attrs["type"] = _scalar_type(value)
        else:
            group.create_dataset(key, data=to_host(value))


def _read_tree(group: h5py.Group) -> dict:
    out = {}
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            out[key] = _read_tree(item)
        elif "type" in item.attrs:
            kind = item.attrs["type"]
            out[key] = item.asstr()[()] if kind == "str" else _SCALARS[kind](item[()])
        else:
            out[key] = item[()]
    return out


def tree_digest(tree: dict) -> str:
    """SHA-256 of a nested dict of arrays and scalars (keys in sorted order)."""
    sha = hashlib.sha256()

    def visit(node, path):
        for key in sorted(node):
            value, where = node[key], f"{path}/{key}"
            if isinstance(value, dict):
                visit(value, where)
            elif _scalar_type(value) is not None:
                kind = _scalar_type(value)
                sha.update(f"{where}:{kind}:{_SCALARS[kind](value)!r}\n".encode())
            else:
                a = np.ascontiguousarray(to_host(value))
                sha.update(f"{where}:{a.dtype.str}:{a.shape}\n".encode())
                sha.update(a.tobytes())
    visit(tree, "")
    return sha.hexdigest()


# -- save ---------------------------------------------------------------------

def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory
        if not directory:
            raise
    finally:
        os.close(fd)


def save_checkpoint(path, header: dict, payload: dict) -> Path:
    """Write a checkpoint atomically; the replaced file becomes ``*.prev.h5``.

    Args:
        path: target file (normally ``RUN_DIR/checkpoint.h5``).
        header: the :data:`HEADER_KEYS` (config as a dict).
        payload: {"W", "omega", "forward_opt", "feedback_opt", "progress": nested
            dicts of arrays (NumPy or CuPy) and scalars; "history": list of dicts}.

    Returns:
        The path written.
    """
    path = Path(path)
    tree = {**{k: v for k, v in payload.items() if k != "history"},
            "history": json.dumps(payload.get("history", []))}
    tree = {k: (_host_tree(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "refdtp_version": __version__,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "digest": tree_digest(tree),
                     **{k: header[k] for k in HEADER_KEYS}}
            attrs["config"] = json.dumps(header["config"], sort_keys=True)
            f.attrs.update(attrs)
            _write_tree(f, tree)
        _fsync(tmp)
        if path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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


def previous_path(path) -> Path:
    """``checkpoint.h5`` -> ``checkpoint.prev.h5`` (any ``X.h5`` -> ``X.prev.h5``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


# -- load ---------------------------------------------------------------------

def load_checkpoint(path) -> tuple[dict, dict]:
    """Read and verify a checkpoint.

    Returns:
        (header, payload): header has the :data:`HEADER_KEYS` (config as a dict)
        plus format_version, refdtp_version, created; payload has host arrays and
        "history" as a list of dicts.

    Raises:
        CheckpointError: missing file, not HDF5, truncated, foreign format,
            unsupported version, missing groups, or content digest mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            _check_header(path, attrs, f)
            tree = _read_tree(f)
    except CheckpointError:
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/ValueError on damaged files
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: "
                              f"{exc})") from exc
    if tree_digest(tree) != attrs["digest"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match the "
                              f"stored SHA-256 digest")
    header = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
    header["config"] = json.loads(header["config"])
    tree["history"] = json.loads(tree["history"])
    return header, tree


def _check_header(path: Path, attrs: dict, f: h5py.File) -> None:
    if attrs.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a refdtp checkpoint (format attribute "
                              f"{attrs.get('format')!r}, expected {FORMAT!r})")
    version = int(attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}; this refdtp "
                              f"({__version__}) reads version {FORMAT_VERSION}")
    missing = [k for k in (*HEADER_KEYS, "digest") if k not in attrs]
    missing += [f"/{g}" for g in (*REQUIRED_GROUPS, "history") if g not in f]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")


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
