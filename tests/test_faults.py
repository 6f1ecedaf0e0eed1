"""Failures of the disk and of the process: full disk, I/O errors, SIGKILL, leftover files.

- ENOSPC / EIO injected into the low-level write, fsync or rename of
  :mod:`refdtp.training.storage` at every file a run writes (config, checkpoint,
  metrics, report): exit status 5, one clear message, no traceback, no temporary
  file left, and the checkpoint saved before still loads to the same values.
- A real 300 kB tmpfs (where mounting is permitted): the same, without mocks.
- SIGKILL at random moments of a ``demo`` run, then ``--resume`` and
  ``evaluate``: a valid checkpoint always remains, and the resumed run ends
  bit-identical to an uninterrupted one.
- Temporary files of dead processes are removed at start and resume.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tree_asserts import assert_same_run, assert_same_tree

from refdtp.training import evaluate_cli, storage
from refdtp.training.checkpoint import load_checkpoint
from refdtp.training.cli import main
from refdtp.training.resume import find_checkpoint

TINY = ["--preset", "demo", "--quiet", "--set", "channels=[4,8]", "feedback_iterations=[2,2]"]
SHORT = [*TINY, "--epochs", "2", "--steps", "3"]
FILES_WRITTEN = 12  # config, checkpoint, report x2, 2 x (checkpoint, metrics x2), report x2
MESSAGES = {errno.ENOSPC: "no space left on the device holding", errno.EIO: "an I/O error occurred"}
REPO = Path(__file__).resolve().parents[1]


class FullDisk:
    """From the ``first``-th file written on, ``op`` ("write", "fsync" or "rename") fails with ``err``.

    ``skip`` calls of ``op`` are let through first (``skip=1`` with "rename" on a
    checkpoint: the old file has become checkpoint.prev.h5 when the new one's rename fails).

    The first failing write writes half its bytes before failing, as a real full disk
    does. ``before`` holds the bytes of checkpoint.h5 before the ``first``-th file was written.
    """

    def __init__(self, monkeypatch, run_dir: Path, first: int, op: str, err: int, skip: int = 0):
        self.run_dir, self.first, self.op, self.err, self.skip = run_dir, first, op, err, skip
        self.files, self.failures, self.before = 0, 0, None
        real = {"write": storage._write, "fsync": storage._fsync, "rename": storage._rename}
        write_file = storage._write_file

        def counted(path, data):
            self.files += 1
            if self.files == self.first:
                ckpt = run_dir / "checkpoint.h5"
                self.before = ckpt.read_bytes() if ckpt.exists() else None
            return write_file(path, data)

        def hook(name):
            def call(*args):
                if self.files >= self.first and name == self.op:
                    if self.skip:  # let this many calls through first
                        self.skip -= 1
                        return real[name](*args)
                    if self.failures == 0:
                        if name == "write" and len(args[1]) > 1:
                            self.failures += 1
                            return real["write"](args[0], args[1][: len(args[1]) // 2])
                    self.failures += 1
                    raise OSError(self.err, os.strerror(self.err))
                return real[name](*args)
            return call

        monkeypatch.setattr(storage, "_write_file", counted)
        for name in real:
            monkeypatch.setattr(storage, f"_{name}", hook(name))


def _leftovers(run_dir: Path) -> list:
    return sorted(p.name for p in run_dir.glob(".*.tmp-*")) if run_dir.exists() else []


def _assert_failed_cleanly(code, err, disk: FullDisk):
    run_dir = disk.run_dir
    assert disk.failures, f"no fault was injected at file {disk.first} ({disk.files} files written)"
    assert code == 5, f"exit status {code}, expected 5; stderr:\n{err}"
    assert "Traceback" not in err and MESSAGES[disk.err] in err and str(run_dir) in err, err
    assert _leftovers(run_dir) == [], f"temporary files left: {_leftovers(run_dir)}"
    if disk.before is None:
        assert "no checkpoint of this run was written" in err, err
        return
    assert "is intact" in err and "--resume --out" in err, err
    saved = run_dir / "saved.h5"
    saved.write_bytes(disk.before)
    h0, p0 = load_checkpoint(saved)
    h1, p1 = load_checkpoint(find_checkpoint(run_dir))  # checkpoint.h5, or .prev.h5 if a rename failed
    assert_same_tree(p0, p1, "checkpoint")
    assert (h1["epoch"], h1["step"], h1["global_step"]) == (h0["epoch"], h0["step"], h0["global_step"])


def _cases(ops_errnos):
    return [pytest.param(n, op, e, id=f"file{n}-{op}-{errno.errorcode[e]}")
            for n in range(1, FILES_WRITTEN + 1) for op, e in ops_errnos]


QUICK = [("write", errno.ENOSPC), ("fsync", errno.EIO), ("rename", errno.ENOSPC)]
REST = [("write", errno.EIO), ("fsync", errno.ENOSPC), ("rename", errno.EIO)]


@pytest.mark.parametrize("first, op, err", _cases(QUICK))
def test_disk_failure_at_any_write_exits_5_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys,
                                                                     first, op, err):
    disk = FullDisk(monkeypatch, tmp_path / "run", first, op, err)
    code = main([*SHORT, "--out", str(tmp_path / "run")])
    _assert_failed_cleanly(code, capsys.readouterr().err, disk)


def test_report_after_a_failed_checkpoint_names_the_epoch_that_was_kept(tmp_path, monkeypatch, capsys):
    from refdtp.training import run as run_module
    real, calls = run_module._save, []  # the epochs of the states saved

    def second_save_fails(ctx, live):
        calls.append(live.state.epoch)
        if live.state.epoch == 2:  # the end of epoch 2: the disk is full, but the report still fits
            raise storage.StorageError(errno.ENOSPC, tmp_path / "run" / "checkpoint.h5")
        return real(ctx, live)

    monkeypatch.setattr(run_module, "_save", second_save_fails)
    assert main([*SHORT, "--out", str(tmp_path / "run")]) == 5
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    header, _ = load_checkpoint(find_checkpoint(tmp_path / "run"))
    assert report["status"] == "storage_error" and header["epoch"] == 1, (report, header["epoch"])
    assert (report["epochs_done"], report["global_step"]) == (header["epoch"], header["global_step"])
    assert len(report["final"]) and "is intact" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("first, op, err", _cases(REST))
def test_disk_failure_at_any_write_other_errors(tmp_path, monkeypatch, capsys, first, op, err):
    disk = FullDisk(monkeypatch, tmp_path / "run", first, op, err)
    code = main([*SHORT, "--out", str(tmp_path / "run")])
    _assert_failed_cleanly(code, capsys.readouterr().err, disk)


@pytest.mark.parametrize("first", [5, 8])  # the checkpoints that replace one
def test_failed_rename_after_the_rotation_restores_the_checkpoint(tmp_path, monkeypatch, capsys, first):
    disk = FullDisk(monkeypatch, tmp_path / "run", first, "rename", errno.EIO, skip=1)
    code = main([*SHORT, "--out", str(tmp_path / "run")])
    _assert_failed_cleanly(code, capsys.readouterr().err, disk)


def test_ctrl_c_whose_checkpoint_does_not_fit_exits_5(tmp_path, monkeypatch, capsys):
    def stop(state, stats):
        if state.global_step == 2:
            raise KeyboardInterrupt
    disk = FullDisk(monkeypatch, tmp_path / "run", 5, "write", errno.ENOSPC)  # the interrupt checkpoint
    code = main([*SHORT, "--out", str(tmp_path / "run")], on_step=stop)
    err = capsys.readouterr().err
    _assert_failed_cleanly(code, err, disk)
    assert "the last checkpoint (before epoch 1)" in err, err


def test_files_written_by_a_run_are_counted_right(tmp_path, monkeypatch):
    disk = FullDisk(monkeypatch, tmp_path / "run", 10**9, "write", errno.ENOSPC)
    assert main([*SHORT, "--out", str(tmp_path / "run")]) == 0
    assert disk.files == FILES_WRITTEN, "update FILES_WRITTEN so that every write is covered"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main([*SHORT, "--out", str(out)]) == 0
    return out


def test_resume_on_a_full_disk_fails_cleanly_then_finishes_identically(tmp_path, monkeypatch, capsys,
                                                                       reference):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        disk = FullDisk(m, run_dir, 8, "write", errno.ENOSPC)  # the checkpoint of epoch 2
        _assert_failed_cleanly(main([*SHORT, "--out", str(run_dir)]), capsys.readouterr().err, disk)
    with monkeypatch.context() as m:  # still full: the resume cannot even rewrite config.json
        disk = FullDisk(m, run_dir, 1, "write", errno.ENOSPC)
        _assert_failed_cleanly(main(["--resume", "--quiet", "--out", str(run_dir)]),
                               capsys.readouterr().err, disk)
    assert main(["--resume", "--quiet", "--out", str(run_dir)]) == 0, capsys.readouterr().err
    assert_same_run(reference, run_dir)


# -- a real full disk ---------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path):
    """A 300 kB tmpfs mounted at tmp_path/disk (skipped where mounting is not permitted)."""
    where = tmp_path / "disk"
    where.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(where)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True, timeout=30)


def _cli(*args, module="refdtp.train", timeout=120):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)


def _fill(path: Path) -> None:
    """Write ``path`` until the disk is full."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 1024)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def test_real_full_disk_gives_exit_5_and_an_intact_checkpoint(tiny_disk):
    run_dir = tiny_disk / "run"
    done = _cli("--preset", "demo", "--epochs", "4", "--steps", "5", "--quiet", "--threads", "1",
                "--out", str(run_dir))
    assert done.returncode == 5, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "no space left on the device holding" in done.stderr and "is intact" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout and _leftovers(run_dir) == []
    header, _ = load_checkpoint(find_checkpoint(run_dir))
    _fill(tiny_disk / "filler")  # not even config.json fits now
    resumed = _cli("--resume", "--quiet", "--threads", "1", "--out", str(run_dir))
    assert resumed.returncode == 5 and "Traceback" not in resumed.stderr, resumed.stderr
    assert "(writing config.json" in resumed.stderr and "is intact" in resumed.stderr, resumed.stderr
    assert _leftovers(run_dir) == [], f"temporary files left: {_leftovers(run_dir)}"
    (tiny_disk / "filler").unlink()
    resumed = _cli("--resume", "--quiet", "--threads", "1", "--out", str(run_dir))
    assert resumed.returncode in (0, 5) and "Traceback" not in resumed.stderr, resumed.stderr
    assert _leftovers(run_dir) == [], f"temporary files left: {_leftovers(run_dir)}"
    assert load_checkpoint(find_checkpoint(run_dir))[0]["epoch"] >= header["epoch"]
    evaluated = _cli(str(run_dir), module="refdtp.evaluate")
    assert evaluated.returncode == 0, evaluated.stderr


# -- SIGKILL ---------------------------------------------------------------------------

KILLED = ["--preset", "demo", "--epochs", "3", "--steps", "6", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert main([*KILLED, "--out", str(out)]) == 0
    return out


def _checkpoint_id(run_dir: Path):
    try:
        return os.stat(run_dir / "checkpoint.h5").st_ino  # a new inode at every save (rename)
    except FileNotFoundError:
        return None


def _kill_after(run_dir: Path, saves: int, fraction: float) -> int:
    """Start a demo run; SIGKILL it ``fraction`` of an epoch after its ``saves``-th checkpoint.

    Returns:
        Its exit status (-9, or 0 if it finished first).
    """
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    log = open(run_dir.with_name("stderr.txt"), "w+")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "refdtp.train", *KILLED, "--out", str(run_dir)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline, seen, times = time.monotonic() + 120, None, []
    while len(times) <= saves and proc.poll() is None and time.monotonic() < deadline:
        now = _checkpoint_id(run_dir)
        if now is not None and now != seen:
            seen = now
            times.append(time.monotonic())
        time.sleep(0.001)
    epoch = times[-1] - times[-2] if len(times) > 1 else 0.3
    time.sleep(fraction * epoch)
    proc.send_signal(signal.SIGKILL)
    code = proc.wait(timeout=60)
    log.seek(0)
    assert code in (0, -signal.SIGKILL), f"the run failed before it was killed:\n{log.read()}"
    log.close()
    return code


def _kill_resume_evaluate(tmp_path, capsys, uninterrupted, seed):
    """Kill a run at a moment drawn from ``seed`` (in one of its 3 epochs), resume, evaluate."""
    rng = np.random.default_rng(seed)
    run_dir = tmp_path / "run"
    _kill_after(run_dir, int(rng.integers(0, 3)), rng.uniform(0.0, 1.0))
    header, _ = load_checkpoint(find_checkpoint(run_dir))  # a valid checkpoint always remains
    assert header["global_step"] <= 18
    assert main(["--resume", "--quiet", "--threads", "1", "--out", str(run_dir)]) == 0, capsys.readouterr()
    assert_same_run(uninterrupted, run_dir)
    assert json.loads((run_dir / "report.json").read_text())["preset"] == "demo", "the preset was lost"
    assert _leftovers(run_dir) == []
    capsys.readouterr()
    assert evaluate_cli.main([str(run_dir)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("seed", range(3))
def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(tmp_path, capsys, uninterrupted, seed):
    _kill_resume_evaluate(tmp_path, capsys, uninterrupted, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 15))
def test_sigkill_at_more_random_moments(tmp_path, capsys, uninterrupted, seed):
    _kill_resume_evaluate(tmp_path, capsys, uninterrupted, seed)


# -- leftovers of dead processes -------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_temporary_files_of_dead_processes_are_removed_on_resume(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main([*SHORT, "--epochs", "1", "--out", str(run_dir)]) == 0
    dead, alive = _dead_pid(), os.getppid()
    for name in (f".checkpoint.h5.tmp-{dead}", f".config.json.tmp-{dead}", f".metrics.csv.tmp-{alive}"):
        (run_dir / name).write_bytes(b"partial")
    assert main(["--resume", "--quiet", "--epochs", "2", "--out", str(run_dir)]) == 0
    assert _leftovers(run_dir) == [f".metrics.csv.tmp-{alive}"], "removed too much or too little"
    assert f".checkpoint.h5.tmp-{dead}" in capsys.readouterr().out
