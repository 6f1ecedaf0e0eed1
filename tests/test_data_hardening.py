"""data_loaders: damaged or unusual files give a DataError naming the file and the problem.

Covers bad CIFAR pickles (labels, data, keys, truncation) through the data
folder and through ``source=``, damaged IDX files, corrupted tarballs (the gzip
CRC), an official-name tarball with the wrong MD5 next to a valid folder, and
the ``source=`` argument of every file-backed dataset.
"""
import dataclasses
import gc
import gzip
import logging
import pickle
import shutil
import struct
import tarfile
import tracemalloc

import numpy as np
import pytest

import data_loaders as dl
from data_loaders import testing
from data_loaders.cifar import CIFAR
from data_loaders.mnist import FILES

N_TRAIN, N_TEST = 10, 4  # CIFAR-10: two images in each data_batch_*


def edit_pickle(path, fn):
    """Rewrite a protocol-2 batch pickle after ``fn(d)`` edits its dict in place."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    out = fn(d)
    with open(path, "wb") as f:
        pickle.dump(d if out is None else out, f, protocol=2)


def pack(root, name="cifar10", compresslevel=9):
    """Pack ``root/<folder>`` into ``root/<archive>`` (the folder stays)."""
    spec = CIFAR[name]
    with tarfile.open(root / spec.archive, "w:gz", compresslevel=compresslevel) as t:
        t.add(root / spec.folder, arcname=spec.folder)
    return root / spec.archive


def _set(key, value):
    def edit(d):
        d[key] = value
    return edit


def _drop(key):
    def edit(d):
        del d[key]
    return edit


BAD_BATCHES = {  # edit of data_batch_2 -> words the message must contain
    "labels-none": (_set(b"labels", None), ["labels"]),
    "labels-bytes": (_set(b"labels", [b"x", b"y"]), ["labels"]),
    "labels-out-of-range": (_set(b"labels", [3, 10]), ["labels", "0..9", "10"]),
    "labels-negative": (_set(b"labels", [-1, 2]), ["labels", "0..9"]),
    "labels-float": (_set(b"labels", [0.5, 1.0]), ["labels"]),
    "labels-nested": (_set(b"labels", [[1], [2]]), ["labels"]),
    "labels-too-few": (_set(b"labels", [1]), ["labels", "2 images"]),
    "labels-str": (_set(b"labels", "ab"), ["labels"]),
    "labels-float-array": (_set(b"labels", np.array([1.0, 2.0])), ["labels"]),
    "labels-huge-int": (_set(b"labels", [2 ** 70, 1]), ["labels"]),
    "data-none": (_set(b"data", None), ["data", "(n, 3072) uint8"]),
    "data-float": (_set(b"data", np.zeros((2, 3072))), ["data", "float64"]),
    "data-short-rows": (_set(b"data", np.zeros((2, 3071), np.uint8)), ["data", "3071"]),
    "data-flat": (_set(b"data", np.zeros(6144, np.uint8)), ["data", "(6144,)"]),
    "data-list": (_set(b"data", [[0] * 3072] * 2), ["data", "list"]),
    "data-bytes": (_set(b"data", bytes(6144)), ["data", "bytes"]),
    "data-three-rows": (_set(b"data", np.zeros((3, 3072), np.uint8)), ["labels", "3 images"]),
    "missing-data": (_drop(b"data"), ["missing key", "data"]),
    "missing-labels": (_drop(b"labels"), ["missing key", "labels"]),
    "not-a-dict": (lambda d: [d], ["dict", "list"]),
    "an-int": (lambda d: 7, ["dict", "int"]),
}


def _expect_message(err, words, where):
    msg = str(err.value)
    assert "\n" not in msg.strip(), f"one-line message expected: {msg!r}"
    for word in [where, *words]:
        assert word in msg, f"message lacks {word!r}: {msg}"


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_bad_cifar_batch_in_the_data_folder_names_file_and_field(tmp_path, case):
    edit, words = BAD_BATCHES[case]
    testing.write_cifar(tmp_path, n_train=N_TRAIN, n_test=N_TEST)
    edit_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_2", edit)
    with pytest.raises(dl.DataError) as err:
        dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    _expect_message(err, words, str(tmp_path / "cifar-10-batches-py" / "data_batch_2"))
    assert not list(tmp_path.glob("*.h5")), "nothing may be cached from bad data"


@pytest.mark.parametrize("case", ["labels-none", "labels-out-of-range", "data-float",
                                  "missing-labels", "not-a-dict"])
def test_bad_cifar_batch_in_a_user_tarball_names_archive_and_member(tmp_path, case):
    edit, words = BAD_BATCHES[case]
    testing.write_cifar(tmp_path, n_train=N_TRAIN, n_test=N_TEST)
    edit_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_2", edit)
    archive = pack(tmp_path)
    with pytest.raises(dl.DataError) as err:
        dl.load_dataset("cifar10", data_dir=tmp_path / "c", download=False, source=archive)
    _expect_message(err, words + ["cifar-10-batches-py/data_batch_2"], str(archive))
    assert "refdtp-cifar-" not in str(err.value), "a deleted temporary path is named"


def test_cifar100_labels_are_checked_against_100_classes(tmp_path):
    testing.write_cifar(tmp_path, "cifar100", n_train=3, n_test=2)
    edit_pickle(tmp_path / "cifar-100-python" / "train", _set(b"fine_labels", [0, 99, 100]))
    with pytest.raises(dl.DataError) as err:
        dl.load_dataset("cifar100", data_dir=tmp_path, download=False)
    _expect_message(err, ["fine_labels", "0..99", "100"], str(tmp_path / "cifar-100-python"))


@pytest.mark.parametrize("case", ["names-missing", "names-none", "names-too-few", "names-not-utf8"])
def test_bad_cifar_meta_is_named(tmp_path, case):
    testing.write_cifar(tmp_path, n_train=N_TRAIN, n_test=N_TEST)
    edit = {"names-missing": _drop(b"label_names"), "names-none": _set(b"label_names", None),
            "names-too-few": _set(b"label_names", [b"a", b"b"]),
            "names-not-utf8": _set(b"label_names", [b"\xff\xfe"] * 10)}[case]
    edit_pickle(tmp_path / "cifar-10-batches-py" / "batches.meta", edit)
    with pytest.raises(dl.DataError) as err:
        dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    _expect_message(err, ["label_names"], str(tmp_path / "cifar-10-batches-py" / "batches.meta"))


@pytest.mark.parametrize("cut", ["empty", "half", "last-byte", "garbage"])
def test_truncated_cifar_pickle_is_named(tmp_path, cut):
    testing.write_cifar(tmp_path, n_train=N_TRAIN, n_test=N_TEST)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    raw = path.read_bytes()
    path.write_bytes({"empty": b"", "half": raw[:len(raw) // 2], "last-byte": raw[:-1],
                      "garbage": b"\x80\x02garbage"}[cut])
    with pytest.raises(dl.DataError) as err:
        dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    _expect_message(err, ["pickle"], str(path))


def test_dataset_label_check_raises_a_data_error():
    x = np.zeros((2, 1, 2, 2), np.uint8)
    with pytest.raises(dl.DataError, match=r"labels must lie in \[0, 1\)"):
        dl.Dataset("t", x, np.array([0, 3]), x, np.zeros(2, np.int64), ("a",), "half")


# --- a corrupted tarball (gzip CRC) ------------------------------------------------------------

def _stored_tarball_with_flipped_pixels(root, n: int = 64):
    """An uncompressed-deflate tarball with ``n`` pixel bytes changed inside the gzip stream.

    Python 3 pickles bytes as a latin-1 string in UTF-8; flipping the low bit of
    ASCII characters keeps that string valid, so only the gzip CRC can tell.
    """
    expected = testing.write_cifar(root, n_train=N_TRAIN, n_test=N_TEST)
    archive = pack(root, compresslevel=0)
    shutil.rmtree(root / "cifar-10-batches-py")
    raw = bytearray(archive.read_bytes())
    pixels = expected[0][4].tobytes()[:64].decode("latin1").encode("utf-8")
    at = raw.find(pixels)
    assert at > 0, "the pixels must lie verbatim in the stored gzip stream"
    ascii_at = [i for i in range(at, len(raw)) if raw[i] < 0x80][:n]
    for i in ascii_at:
        raw[i] ^= 0x01
    archive.write_bytes(bytes(raw))
    return archive


@pytest.mark.parametrize("route", ["source", "data_dir"])
def test_corrupted_tarball_is_refused_before_caching(tmp_path, route, monkeypatch):
    archive = _stored_tarball_with_flipped_pixels(tmp_path)
    kw = {"source": archive, "data_dir": tmp_path / "c"}
    if route == "data_dir":  # an official-name tarball whose MD5 happens to be right
        spec = dataclasses.replace(CIFAR["cifar10"], md5=dl.download.md5_file(archive))
        monkeypatch.setitem(CIFAR, "cifar10", spec)
        kw = {"data_dir": tmp_path}
    with pytest.raises(dl.DataError) as err:
        dl.load_dataset("cifar10", download=False, **kw)
    assert str(archive) in str(err.value) and "CRC" in str(err.value), str(err.value)
    assert not list(tmp_path.rglob("*.h5")), "the damaged data was cached"


@pytest.mark.parametrize("cut", [8, 1, 700])
def test_tarball_cut_short_is_refused(tmp_path, cut):
    testing.write_cifar(tmp_path, n_train=N_TRAIN, n_test=N_TEST, tar=True)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-cut])
    with pytest.raises(dl.DataError, match="cifar-10-python.tar.gz"):
        dl.load_dataset("cifar10", data_dir=tmp_path / "c", download=False, source=archive)


def test_safe_extract_checks_the_gzip_crc(tmp_path):
    archive = _stored_tarball_with_flipped_pixels(tmp_path)
    with pytest.raises(dl.DataError, match="CRC"):
        dl.download.safe_extract(archive, tmp_path / "out")


# --- official-name tarball with the wrong MD5 next to the extracted folder ----------------------

def test_valid_folder_serves_when_the_official_tarball_has_the_wrong_md5(tmp_path, caplog):
    expected = testing.write_cifar(tmp_path, n_train=N_TRAIN, n_test=N_TEST)
    pack(tmp_path)  # official name, but not the published MD5
    with caplog.at_level(logging.INFO, logger="data_loaders"):
        ds = dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(ds.train_images, expected[0])
    np.testing.assert_array_equal(ds.test_labels, expected[3])
    log = caplog.text
    assert "cifar-10-python.tar.gz" in log and "MD5" in log, log
    assert f"using {tmp_path / 'cifar-10-batches-py'}" in log, log


def test_wrong_md5_tarball_and_incomplete_folder_say_both(tmp_path):
    testing.write_cifar(tmp_path, n_train=N_TRAIN, n_test=N_TEST)
    pack(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(dl.ChecksumError) as err:
        dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    msg = str(err.value)
    for part in ("cifar-10-python.tar.gz", "data_batch_5", "--source PATH (or source=PATH in Python)"):
        assert part in msg, f"message lacks {part!r}: {msg}"


def test_official_tarball_with_the_right_md5_is_preferred_and_named(tmp_path, caplog, monkeypatch):
    testing.write_cifar(tmp_path, n_train=N_TRAIN, n_test=N_TEST, seed=1)
    archive = pack(tmp_path)
    spec = dataclasses.replace(CIFAR["cifar10"], md5=dl.download.md5_file(archive))
    monkeypatch.setitem(CIFAR, "cifar10", spec)
    with caplog.at_level(logging.INFO, logger="data_loaders"):
        dl.load_dataset("cifar10", data_dir=tmp_path, download=False, cache=False)
    assert f"using {archive}" in caplog.text, caplog.text


# --- source=PATH for every file-backed dataset ---------------------------------------------------

@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fmnist", "imagenet32"])
def test_missing_source_path_is_a_clear_data_error(tmp_path, name):
    testing.write_imagenet32(tmp_path / "imagenet32")  # must not be used instead
    missing = tmp_path / "nowhere"
    with pytest.raises(dl.DataError) as err:
        dl.load_dataset(name, data_dir=tmp_path, download=False, source=missing)
    assert str(missing) in str(err.value) and "does not exist" in str(err.value), str(err.value)


@pytest.mark.parametrize("name", ["cifar10", "mnist", "imagenet32"])
def test_unrecognisable_source_is_a_clear_data_error(tmp_path, name):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    for source in (junk, junk / "notes.txt"):
        with pytest.raises(dl.DataError) as err:
            dl.load_dataset(name, data_dir=tmp_path, download=False, source=source)
        assert str(source) in str(err.value), str(err.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_source_accepts_archive_folder_and_parent(tmp_path, name):
    expected = testing.write_cifar(tmp_path, name, n_train=3, n_test=2)
    spec = CIFAR[name]
    archive = pack(tmp_path, name)
    for source in (archive, tmp_path / spec.folder, tmp_path):
        ds = dl.load_dataset(name, data_dir=tmp_path / "c", source=source, cache=False)
        np.testing.assert_array_equal(ds.train_images, expected[0], err_msg=str(source))


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_source_for_a_dataset_without_files(name):
    assert dl.load_dataset(name, source=None).num_classes >= 1
    with pytest.raises(dl.DataError, match=f"{name}.*--source"):
        dl.load_dataset(name, source="/some/where")


def test_hints_name_the_cli_flag(tmp_path):
    with pytest.raises(dl.DatasetNotFoundError) as err:
        dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert "--source PATH (or source=PATH in Python)" in str(err.value)
    testing.write_cifar(tmp_path, n_train=2, n_test=1, tar=True)
    with pytest.raises(dl.ChecksumError) as err:
        dl.load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert "--source PATH (or source=PATH in Python)" in str(err.value)


# --- MNIST / IDX ---------------------------------------------------------------------------------

def _idx(dims, payload: bytes, magic=b"\x00\x00\x08"):
    return magic + bytes([len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + payload


BAD_IDX = {  # file index in FILES, new content (n_train=12, n_test=5) -> words in the message
    "magic": (0, lambda raw: b"\x01" + raw[1:], ["IDX"]),
    "type-int32": (0, lambda raw: raw[:2] + b"\x0c" + raw[3:], ["unsigned bytes"]),
    "images-2d": (0, lambda raw: _idx([12, 784], raw[16:]), ["(n, 28, 28)"]),
    "images-27x28": (2, lambda raw: _idx([5, 27, 28], raw[16:16 + 5 * 27 * 28]), ["(n, 28, 28)"]),
    "truncated": (0, lambda raw: raw[:-5], ["9403", "9408"]),
    "header-cut": (1, lambda raw: raw[:6], ["header"]),
    "empty": (3, lambda raw: b"", ["IDX"]),
    "labels-2d": (1, lambda raw: _idx([12, 1], raw[8:]), ["(n,)"]),
    "labels-out-of-range": (3, lambda raw: raw[:8] + b"\x0a" + raw[9:], ["0..9", "10"]),
    "labels-count": (1, lambda raw: _idx([11], raw[8:19]), ["12 images", "11 labels"]),
}


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("case", sorted(BAD_IDX))
def test_bad_idx_file_is_named(tmp_path, case, gz):
    i, edit, words = BAD_IDX[case]
    testing.write_mnist(tmp_path / "idx", gz=gz)
    path = tmp_path / "idx" / (FILES[i] if gz else FILES[i][:-3])
    raw = path.read_bytes()
    path.write_bytes(gzip.compress(edit(gzip.decompress(raw))) if gz else edit(raw))
    with pytest.raises(dl.DataError) as err:
        dl.load_dataset("mnist", data_dir=tmp_path, download=False, source=tmp_path / "idx")
    _expect_message(err, words, str(path))


@pytest.mark.parametrize("cut", [1, 8, 100])
def test_gzip_idx_cut_short_is_named(tmp_path, cut):
    testing.write_mnist(tmp_path / "idx")
    path = tmp_path / "idx" / FILES[0]
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(dl.DataError, match=FILES[0]):
        dl.load_dataset("mnist", data_dir=tmp_path, download=False, source=tmp_path / "idx")


def test_mnist_source_lists_every_missing_file(tmp_path):
    testing.write_mnist(tmp_path / "idx")
    for f in FILES[1:3]:
        (tmp_path / "idx" / f).unlink()
    with pytest.raises(dl.DatasetNotFoundError) as err:
        dl.load_dataset("mnist", data_dir=tmp_path, download=False, source=tmp_path / "idx")
    assert FILES[1] in str(err.value) and FILES[2] in str(err.value), str(err.value)


@pytest.mark.parametrize("case", ["labels-none", "labels-bytes", "labels-out-of-range"])
def test_cli_data_folder_route_reports_bad_labels_without_traceback(tmp_path, capsys, case):
    from refdtp.training.cli import main
    testing.write_cifar(tmp_path, n_train=N_TRAIN, n_test=N_TEST)
    edit_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_2", BAD_BATCHES[case][0])
    code = main(["--preset", "cifar10-ldrl", "--data-dir", str(tmp_path), "--no-download",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: "), err
    assert "data_batch_2" in err and "labels" in err and "Traceback" not in err, err


# --- crafted pickles: NumPy internals and the unpickler's memory ---------------------------------

def test_crafted_dtype_state_never_reaches_numpy(tmp_path, monkeypatch):
    expected = testing.write_cifar(tmp_path, n_train=N_TRAIN, n_test=N_TEST)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    raw = path.read_bytes()
    flags = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"  # dtype state: ..., -1, -1, flags=0)
    assert raw.count(flags) == 1
    path.write_bytes(raw.replace(flags, flags[:-2] + b"\x63t"))  # flags 99: "holds objects"
    unraisable = []
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)
    ds = dl.load_dataset("cifar10", data_dir=tmp_path, download=False, cache=False)
    np.testing.assert_array_equal(ds.train_images, expected[0])  # dtype flags are not used
    del ds
    gc.collect()
    assert not unraisable, [u.exc_value for u in unraisable]


def test_damaged_memo_index_allocates_nothing(tmp_path):
    testing.write_cifar(tmp_path, n_train=N_TRAIN, n_test=N_TEST)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"\x80\x02}r" + struct.pack("<I", 1 << 24) + b".")  # LONG_BINPUT 2**24
    tracemalloc.start()
    try:
        with pytest.raises(dl.DataError, match="test_batch.*missing key"):
            dl.load_dataset("cifar10", data_dir=tmp_path, download=False, cache=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, f"reading a 14-byte pickle took {peak >> 20} MiB"


def test_empty_source_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    testing.write_cifar(tmp_path, n_train=2, n_test=1)  # "" must not mean the current folder
    with pytest.raises(dl.DatasetNotFoundError, match="empty"):
        dl.load_dataset("cifar10", data_dir=tmp_path / "c", source="")


def test_link_in_a_cifar_tarball_is_refused(tmp_path):
    testing.write_cifar(tmp_path, n_train=2, n_test=1)
    archive = tmp_path / "mine.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        link = tarfile.TarInfo("cifar-10-batches-py/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(link)
    with pytest.raises(dl.UnsafeArchiveError, match="mine.tar.gz.*evil.*link"):
        dl.load_dataset("cifar10", data_dir=tmp_path / "c", source=archive)
