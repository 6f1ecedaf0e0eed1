"""data_loaders.download: checksums, resumption, atomic files, safe extraction.

Downloads come from a local HTTP server on 127.0.0.1 that supports Range
requests and can cut a transfer short or ignore ranges.
"""
import dataclasses
import hashlib
import http.server
import io
import socket
import tarfile
import threading

import numpy as np
import pytest

import data_loaders as dl
from data_loaders import testing
from data_loaders.download import fetch, safe_extract

PAYLOAD = bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8))
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = srv.cut_after.pop(0) if srv.cut_after else None
        self.wfile.write(body[start:] if cut is None else body[start:start + cut])
        self.close_connection = True


@pytest.fixture
def server():
    """A local file server: ``server.files[path] = bytes``; ``server.url(path)``."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.cut_after, srv.ignore_range = {}, [], [], False
    srv.url = lambda path: f"http://127.0.0.1:{srv.server_address[1]}{path}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def closed_port_url(path="/f.bin"):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def test_fetch_accepts_the_right_checksum(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    path = fetch("f.bin", PAYLOAD_MD5, tmp_path, [server.url("/f.bin")])
    assert path.read_bytes() == PAYLOAD
    assert not list(tmp_path.glob("*.part")), "the partial file must be renamed away"
    fetch("f.bin", PAYLOAD_MD5, tmp_path, [closed_port_url()])  # present: no network needed


def test_fetch_rejects_a_wrong_checksum_naming_file_and_digests(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    with pytest.raises(dl.ChecksumError) as err:
        fetch("f.bin", "0" * 32, tmp_path, [server.url("/f.bin")])
    msg = str(err.value)
    for part in ("f.bin", "0" * 32, PAYLOAD_MD5):
        assert part in msg, f"message lacks {part!r}: {msg}"
    assert not list(tmp_path.iterdir()), "a file that failed its checksum must not be kept"


def test_interrupted_transfer_never_looks_complete_and_resumes(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_after = [12_345]
    with pytest.raises(dl.DownloadError):
        fetch("f.bin", PAYLOAD_MD5, tmp_path, [server.url("/f.bin")], retries=1)
    assert not (tmp_path / "f.bin").exists(), "a half file must not carry the final name"
    assert (tmp_path / "f.bin.part").stat().st_size == 12_345
    path = fetch("f.bin", PAYLOAD_MD5, tmp_path, [server.url("/f.bin")])
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/f.bin", "bytes=12345-"), server.requests


def test_fetch_resumes_within_one_call(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_after = [1000, 20_000]
    assert fetch("f.bin", PAYLOAD_MD5, tmp_path, [server.url("/f.bin")]).read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, "bytes=1000-", "bytes=21000-"]


def test_fetch_restarts_when_the_server_ignores_ranges(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes from another file")
    assert fetch("f.bin", PAYLOAD_MD5, tmp_path, [server.url("/f.bin")]).read_bytes() == PAYLOAD


def test_fetch_completes_a_part_file_that_is_already_whole(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)  # the server answers 416
    assert fetch("f.bin", PAYLOAD_MD5, tmp_path, [server.url("/f.bin")]).read_bytes() == PAYLOAD


def test_fetch_falls_back_to_the_next_mirror(server, tmp_path):
    server.files["/b/f.bin"] = PAYLOAD
    urls = [closed_port_url(), server.url("/a/f.bin"), server.url("/b/f.bin")]
    assert fetch("f.bin", PAYLOAD_MD5, tmp_path, urls).read_bytes() == PAYLOAD


def test_no_network_says_where_to_place_the_file(tmp_path):
    url = closed_port_url()
    with pytest.raises(dl.DownloadError) as err:
        fetch("f.bin", PAYLOAD_MD5, tmp_path, [url])
    msg = str(err.value)
    assert url in msg and str(tmp_path / "f.bin") in msg and PAYLOAD_MD5 in msg, msg
    assert not (tmp_path / "f.bin").exists()


def test_existing_file_with_wrong_checksum_is_rejected(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"not it")
    with pytest.raises(dl.ChecksumError, match="f.bin.*expected"):
        fetch("f.bin", PAYLOAD_MD5, tmp_path, [closed_port_url()])


def test_cifar_downloads_extracts_and_parses(server, tmp_path, monkeypatch):
    import data_loaders.cifar as cifar
    expected = testing.write_cifar(tmp_path / "srv", tar=True)
    blob = (tmp_path / "srv" / "cifar-10-python.tar.gz").read_bytes()
    server.files["/kriz/cifar-10-python.tar.gz"] = blob
    spec = dataclasses.replace(cifar.CIFAR["cifar10"], md5=hashlib.md5(blob).hexdigest())
    monkeypatch.setitem(cifar.CIFAR, "cifar10", spec)
    ds = dl.load_dataset("cifar10", data_dir=tmp_path / "data", mirrors=[server.url("/kriz/")])
    for got, want in zip((ds.train_images, ds.train_labels, ds.test_images, ds.test_labels),
                         expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert (tmp_path / "data" / "cifar-10-python.tar.gz").read_bytes() == blob


def test_mnist_downloads_each_file_and_checks_it(server, tmp_path, monkeypatch):
    import data_loaders.mnist as mnist
    expected = testing.write_mnist(tmp_path / "srv")
    md5s = []
    for f in mnist.FILES:
        server.files[f"/m/{f}"] = (tmp_path / "srv" / f).read_bytes()
        md5s.append(dl.download.md5_file(tmp_path / "srv" / f))
    spec = dataclasses.replace(mnist.MNIST_SPECS["mnist"], md5s=tuple(md5s),
                               mirrors=(closed_port_url("/"), server.url("/m/")))
    monkeypatch.setitem(mnist.MNIST_SPECS, "mnist", spec)
    ds = dl.load_dataset("mnist", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(ds.train_images, expected[0])
    np.testing.assert_array_equal(ds.test_labels, expected[3])


def test_default_data_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv("REFDTP_DATA", str(tmp_path / "env"))
    assert dl.default_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert dl.default_data_dir() == tmp_path / "env"
    monkeypatch.delenv("REFDTP_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dl.default_data_dir() == tmp_path / "xdg" / "refdtp"


def _tar_with(tmp_path, *members):
    """A .tar.gz holding one good file and the given (TarInfo, bytes-or-None) members."""
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("pkg/good.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize("member", [
    (_info("../evil"), b"x"),
    (_info("pkg/../../evil"), b"x"),
    (_info("/tmp/evil_absolute"), b"x"),
    (_info("pkg/link", tarfile.SYMTYPE, "/etc/passwd"), None),
    (_info("pkg/hard", tarfile.LNKTYPE, "pkg/good.txt"), None),
    (_info("pkg/dev", tarfile.CHRTYPE), None),
    (_info("pkg/fifo", tarfile.FIFOTYPE), None),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device", "fifo"])
def test_safe_extract_refuses_unsafe_members(tmp_path, member):
    archive = _tar_with(tmp_path, member)
    dest = tmp_path / "out"
    with pytest.raises(dl.UnsafeArchiveError, match=member[0].name.lstrip("/").split("/")[-1]):
        safe_extract(archive, dest)
    assert not (dest / "pkg" / "good.txt").exists(), "nothing may be written before the check"
    assert not (tmp_path / "evil").exists()


def test_safe_extract_writes_regular_files(tmp_path):
    archive = _tar_with(tmp_path, (_info("pkg/sub/b.bin"), b"\x00\x01"))
    files = safe_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in files) == ["b.bin", "good.txt"]
    assert (tmp_path / "out" / "pkg" / "sub" / "b.bin").read_bytes() == b"\x00\x01"


def test_truncated_archive_is_reported(tmp_path):
    archive = _tar_with(tmp_path, (_info("pkg/big"), bytes(range(256)) * 400))
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(dl.DataError, match="a.tar.gz.*truncated"):
        safe_extract(archive, tmp_path / "out")


def test_loader_without_network_says_where_to_place_the_archive(tmp_path):
    with pytest.raises(dl.DownloadError) as err:
        dl.load_dataset("cifar10", data_dir=tmp_path, mirrors=[closed_port_url("/")])
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-python.tar.gz") in msg, msg
    assert "c58f30108f718f92721af3b95e74349a" in msg, msg
