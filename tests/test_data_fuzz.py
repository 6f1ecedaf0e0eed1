"""Fuzz: damaged official-format files load as a DataError or as the undamaged data.

Tiny CIFAR-10 (pickled batches, as a ``.tar.gz`` and as a folder) and MNIST
(IDX, gzip and raw) files get random byte flips, cuts, insertions, deletions
and field edits. Loading must then raise a :class:`~data_loaders.DataError`
that names the damaged file, or succeed with well-formed arrays that equal
the undamaged ones wherever the damage cannot have changed a value: a gzip
stream (CRC-checked), and the structure (not the values) of a pickle or an
IDX header. No other exception may escape.

The default run draws a few dozen examples per test; the ``slow`` variants
draw many more (``pytest -m slow tests/test_data_fuzz.py``).
"""
import functools
import gzip
import pickle
import pickletools
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import data_loaders as dl
from data_loaders import testing
from data_loaders.mnist import FILES

FAST = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
FOLDER, ARCHIVE = "cifar-10-batches-py", "cifar-10-python.tar.gz"
CIFAR_FILES = ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
N_PER_BATCH = 2  # CIFAR-10 images in each data_batch_* (10 train images) and in test_batch


# --- the undamaged files, built once -------------------------------------------------------------

@functools.cache
def cifar_original():
    """({file name: bytes}, tarball bytes, expected arrays) of a tiny CIFAR-10."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        expected = testing.write_cifar(root, n_train=5 * N_PER_BATCH, n_test=N_PER_BATCH)
        files = {f: (root / FOLDER / f).read_bytes() for f in CIFAR_FILES}
        with tarfile.open(root / ARCHIVE, "w:gz") as t:
            t.add(root / FOLDER, arcname=FOLDER)
        return files, (root / ARCHIVE).read_bytes(), expected


@functools.cache
def mnist_original():
    """({file name: uncompressed IDX bytes}, expected arrays) of a tiny MNIST."""
    with tempfile.TemporaryDirectory() as tmp:
        expected = testing.write_mnist(Path(tmp), n_train=3, n_test=2, gz=False)
        return {f: (Path(tmp) / f[:-3]).read_bytes() for f in FILES}, expected


# --- mutations -----------------------------------------------------------------------------------

def mutations(size: int):
    """Strategy: ("flip", [(pos, xor)]), ("cut", n), ("drop", pos, n) or ("insert", pos, bytes)."""
    pos = st.one_of(st.integers(0, min(size, 600) - 1), st.integers(0, size - 1))
    return st.one_of(
        st.tuples(st.just("flip"), st.lists(st.tuples(pos, st.integers(1, 255)), min_size=1,
                                            max_size=4)),
        st.tuples(st.just("cut"), st.integers(1, size)),
        st.tuples(st.just("drop"), pos, st.integers(1, 16)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=8)))


def mutate(raw: bytes, mutation):
    """The mutated bytes and the changed positions (None: bytes were added or removed)."""
    kind, *args = mutation
    if kind == "flip":
        out = bytearray(raw)
        for p, x in args[0]:
            out[p] ^= x
        return bytes(out), {p for p, _ in args[0]}
    if kind == "cut":
        return raw[:len(raw) - args[0]], None
    if kind == "drop":
        return raw[:args[0]] + raw[args[0] + args[1]:], None
    return raw[:args[0]] + args[1] + raw[args[0]:], None


_VALUE_OPS = {"BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "NEWTRUE", "NEWFALSE",
              "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES",
              "BINSTRING", "SHORT_BINSTRING"}


@functools.cache
def pickle_value_bytes(raw: bytes) -> frozenset:
    """Positions of ``raw`` inside opcodes that carry a value (ints, bools, strings)."""
    ops = list(pickletools.genops(raw))
    ends = [pos for _, _, pos in ops[1:]] + [len(raw)]
    return frozenset(p for (op, _, start), end in zip(ops, ends, strict=True) if op.name in _VALUE_OPS
                     for p in range(start, end))


# --- loading and the oracle ----------------------------------------------------------------------

def load_or_error(load, damaged: Path):
    """The loaded Dataset, or None after a DataError that names the damaged file."""
    try:
        return load()
    except dl.DataError as exc:
        assert damaged.name in str(exc), f"the message does not name {damaged.name}: {exc}"
        return None


def assert_same(ds, expected, what="") -> None:
    names = ("train_images", "train_labels", "test_images", "test_labels")
    for name, want in zip(names, expected, strict=True):
        got = np.asarray(getattr(ds, name))
        assert got.dtype == want.dtype, f"{what} {name}: dtype {got.dtype}"
        np.testing.assert_array_equal(got, want, err_msg=f"{what} {name}")


def assert_well_formed(ds, expected) -> None:
    """Same shapes and dtypes as the undamaged data, labels in range."""
    names = ("train_images", "train_labels", "test_images", "test_labels")
    for name, want in zip(names, expected, strict=True):
        got = np.asarray(getattr(ds, name))
        assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, got.dtype)
    for labels in (ds.train_labels, ds.test_labels):
        assert labels.min() >= 0 and labels.max() < ds.num_classes


# --- CIFAR: tarball ------------------------------------------------------------------------------

def _cifar_tarball_case(data):
    _, archive, expected = cifar_original()
    damaged, _ = mutate(archive, data.draw(mutations(len(archive)), label="mutation"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mine.tar.gz"
        path.write_bytes(damaged)
        ds = load_or_error(lambda: dl.load_dataset("cifar10", data_dir=Path(tmp) / "c",
                                                   download=False, source=path), path)
        if ds is None:
            assert not list(Path(tmp).rglob("*.h5")), "damaged data was cached"
        else:  # the gzip CRC guards every byte of the tar stream
            assert_same(ds, expected, "tarball")


test_cifar_tarball_damage = FAST(given(st.data())(_cifar_tarball_case))
test_cifar_tarball_damage_many = pytest.mark.slow(SLOW(given(st.data())(_cifar_tarball_case)))


# --- CIFAR: extracted folder ---------------------------------------------------------------------

def _write_cifar_folder(root: Path, replace: dict) -> Path:
    files, _, _ = cifar_original()
    folder = root / FOLDER
    folder.mkdir()
    for name, raw in files.items():
        (folder / name).write_bytes(replace.get(name, raw))
    return folder


def _cifar_folder_case(data):
    files, _, expected = cifar_original()
    name = data.draw(st.sampled_from(CIFAR_FILES), label="file")
    damaged, changed = mutate(files[name], data.draw(mutations(len(files[name])), label="mutation"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = _write_cifar_folder(Path(tmp), {name: damaged})
        ds = load_or_error(lambda: dl.load_dataset("cifar10", data_dir=tmp, download=False,
                                                   cache=False), folder / name)
    if ds is None:
        return
    assert_well_formed(ds, expected)
    if changed is not None and not changed & pickle_value_bytes(files[name]):
        assert_same(ds, expected, f"{name} with its pickle structure changed")


test_cifar_folder_damage = FAST(given(st.data())(_cifar_folder_case))
test_cifar_folder_damage_many = pytest.mark.slow(SLOW(given(st.data())(_cifar_folder_case)))


# --- CIFAR: field edits --------------------------------------------------------------------------

ANY_VALUE = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=4), st.binary(max_size=6),
    st.lists(st.integers(-3, 12), max_size=4),
    st.lists(st.one_of(st.integers(-2 ** 70, 2 ** 70), st.floats(), st.binary(max_size=2),
                       st.booleans(), st.none()), max_size=3),
    hnp.arrays(st.sampled_from([np.uint8, np.int8, np.int64, np.float32, np.bool_]),
               hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)),
    st.integers(0, 9).map(lambda k: [k] * N_PER_BATCH),
    st.integers(0, 255).map(lambda v: np.full((N_PER_BATCH, 3072), v, np.uint8)),
    st.integers(1, 3).map(lambda n: np.zeros((n, 3072), np.uint8)))


def _valid_labels(v) -> bool:
    if isinstance(v, np.ndarray):
        return v.dtype.kind in "iu" and v.shape == (N_PER_BATCH,) and bool(np.all((v >= 0) & (v < 10)))
    return (isinstance(v, (list, tuple)) and len(v) == N_PER_BATCH
            and all(type(k) is int and 0 <= k < 10 for k in v))


def _valid_data(v) -> bool:
    return isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.shape == (N_PER_BATCH, 3072)


def _cifar_field_case(data):
    files, _, expected = cifar_original()
    batch = data.draw(st.integers(1, 5), label="batch")
    key = data.draw(st.sampled_from([b"data", b"labels"] * 3 + [b"batch_label", b"filenames",
                                                                 b"extra", "data", "labels"]),
                    label="key")
    delete = data.draw(st.booleans(), label="delete") and isinstance(key, bytes)
    value = data.draw(ANY_VALUE, label="value")
    name = f"data_batch_{batch}"
    d = pickle.loads(files[name], encoding="bytes")
    if delete:
        d.pop(key, None)
    else:
        d[key] = value
    with tempfile.TemporaryDirectory() as tmp:
        folder = _write_cifar_folder(Path(tmp), {name: pickle.dumps(d, protocol=2)})
        ds = load_or_error(lambda: dl.load_dataset("cifar10", data_dir=tmp, download=False,
                                                   cache=False), folder / name)
    rows = slice(N_PER_BATCH * (batch - 1), N_PER_BATCH * batch)
    want = [a.copy() for a in expected]
    if key in (b"data", b"labels") and delete:
        ok = False
    elif key == b"labels":
        ok = _valid_labels(value)
        want[1][rows] = np.asarray(value) if ok else 0
    elif key == b"data":
        ok = _valid_data(value)
        want[0][rows] = value.reshape(-1, 3, 32, 32) if ok else 0
    else:  # unused fields, and str keys shadowed by the original bytes keys
        ok = True
    assert (ds is not None) == ok, f"{key!r} = {value!r}: loaded {ds is not None}, expected {ok}"
    if ds is not None:
        assert_same(ds, want, f"{key!r} edited")


test_cifar_field_edits = FAST(given(st.data())(_cifar_field_case))
test_cifar_field_edits_many = pytest.mark.slow(SLOW(given(st.data())(_cifar_field_case)))


# --- MNIST: IDX files ----------------------------------------------------------------------------

def _write_mnist(root: Path, replace: dict, gz: bool) -> Path:
    files, _ = mnist_original()
    for f, raw in files.items():
        raw = replace.get(f, gzip.compress(raw, mtime=0) if gz else raw)
        (root / (f if gz else f[:-3])).write_bytes(raw)
    return root


def _load_mnist(folder: Path):
    return dl.load_dataset("mnist", data_dir=folder / "c", download=False, source=folder,
                           cache=False)


def _mnist_bytes_case(data):
    files, expected = mnist_original()
    f, gz = data.draw(st.sampled_from(FILES), label="file"), data.draw(st.booleans(), label="gz")
    raw = gzip.compress(files[f], mtime=0) if gz else files[f]
    damaged, changed = mutate(raw, data.draw(mutations(len(raw)), label="mutation"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = _write_mnist(Path(tmp), {f: damaged}, gz)
        ds = load_or_error(lambda: _load_mnist(folder), folder / (f if gz else f[:-3]))
    if ds is None:
        return
    assert_well_formed(ds, expected)
    header = 4 + 4 * files[f][3]
    if gz or (changed is not None and max(changed) < header):
        assert_same(ds, expected, f"{f} (gzip: CRC; raw: header only)")


test_mnist_file_damage = FAST(given(st.data())(_mnist_bytes_case))
test_mnist_file_damage_many = pytest.mark.slow(SLOW(given(st.data())(_mnist_bytes_case)))


def _mnist_field_case(data):
    files, expected = mnist_original()
    i = data.draw(st.integers(0, 3), label="file index")
    f, raw = FILES[i], files[FILES[i]]
    ndim = raw[3]
    dims = list(np.frombuffer(raw[4:4 + 4 * ndim], ">u4"))
    field = data.draw(st.sampled_from(["magic", "type", "dims", "value"]), label="field")
    want, ok = [a.copy() for a in expected], True
    if field == "magic":
        magic = data.draw(st.binary(min_size=2, max_size=2), label="magic")
        new, ok = magic + raw[2:], magic == b"\x00\x00"
    elif field == "type":
        t = data.draw(st.integers(0, 255), label="type")
        new, ok = raw[:2] + bytes([t]) + raw[3:], t == 8
    elif field == "dims":
        new_dims = data.draw(st.lists(st.integers(0, 2 ** 32 - 1) | st.sampled_from([1, 2, 3, 28]),
                                      max_size=4), label="dims")
        new = raw[:3] + bytes([len(new_dims)]) + np.array(new_dims, ">u4").tobytes() \
            + raw[4 + 4 * ndim:]
        ok = new_dims == dims
    else:
        at = data.draw(st.integers(4 + 4 * ndim, len(raw) - 1), label="offset")
        v = data.draw(st.integers(0, 255), label="value")
        new = raw[:at] + bytes([v]) + raw[at + 1:]
        flat = want[i].reshape(-1)
        flat[at - 4 - 4 * ndim] = v
        ok = i % 2 == 0 or v < 10
    gz = data.draw(st.booleans(), label="gz")
    with tempfile.TemporaryDirectory() as tmp:
        folder = _write_mnist(Path(tmp), {f: gzip.compress(new) if gz else new}, gz)
        ds = load_or_error(lambda: _load_mnist(folder), folder / (f if gz else f[:-3]))
    assert (ds is not None) == ok, f"{field} edit of {f}: loaded {ds is not None}, expected {ok}"
    if ds is not None:
        assert_same(ds, want, f"{field} edit")


test_mnist_field_edits = FAST(given(st.data())(_mnist_field_case))
test_mnist_field_edits_many = pytest.mark.slow(SLOW(given(st.data())(_mnist_field_case)))


def test_fuzz_originals_load_unchanged(tmp_path):
    """The oracle's baseline: the undamaged files load as the expected arrays."""
    files, archive, expected = cifar_original()
    (tmp_path / ARCHIVE).write_bytes(archive)
    assert_same(dl.load_dataset("cifar10", data_dir=tmp_path / "c", source=tmp_path / ARCHIVE,
                                cache=False), expected, "tarball")
    folder = _write_cifar_folder(tmp_path, {})
    assert_same(dl.load_dataset("cifar10", data_dir=tmp_path / "c", source=folder, cache=False),
                expected, "folder")
    shutil.rmtree(folder)
    for gz in (True, False):
        idx = tmp_path / f"idx-{gz}"
        idx.mkdir()
        assert_same(_load_mnist(_write_mnist(idx, {}, gz)), mnist_original()[1], f"idx gz={gz}")
