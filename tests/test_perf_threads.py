"""The per-run BLAS thread rule (refdtp.threads.choose_blas_threads) and its wiring."""
from __future__ import annotations

import json

import pytest

from refdtp import threads
from refdtp.networks import simple_vgg
from refdtp.threads import SMALL_GEMM_FLOPS, choose_blas_threads, run_threads
from refdtp.training.cli import main


@pytest.fixture
def machine(monkeypatch):
    """Set (cores, 1-minute load) of a fake host; this process has used no CPU time."""
    def set_(cores: int, load: float, cpu_seconds: float = 0.0):
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
        monkeypatch.setattr(threads.time, "process_time", lambda: cpu_seconds)
    return set_


BIG = 10 * SMALL_GEMM_FLOPS


@pytest.mark.parametrize(("cores", "load", "expected"), [
    (2, 0.0, 2), (2, 1.0, 1), (2, 2.5, 1), (2, 0.4, 2), (2, 0.6, 1),
    (16, 0.0, 16), (16, 3.2, 13), (16, 40.0, 1), (1, 0.0, 1)])
def test_large_problem_gets_free_cores(machine, cores, load, expected):
    machine(cores, load)
    n, reason = choose_blas_threads(None, BIG)
    assert n == expected and f"{cores} cores" in reason


def test_never_more_than_affinity(machine):
    machine(4, 0.0)
    assert choose_blas_threads(None, BIG)[0] == 4


def test_own_load_is_discounted(machine):
    machine(2, 1.0, cpu_seconds=600.0)  # the load is this process's own: both cores are free
    assert choose_blas_threads(None, BIG)[0] == 2
    machine(2, 1.0, cpu_seconds=0.0)  # just started: the load is another job's
    assert choose_blas_threads(None, BIG)[0] == 1


def test_small_problem_gets_one(machine):
    machine(16, 0.0)
    n, reason = choose_blas_threads(None, SMALL_GEMM_FLOPS / 2)
    assert n == 1 and "small problem" in reason


def test_override_wins(machine):
    machine(2, 5.0)
    assert choose_blas_threads(3, SMALL_GEMM_FLOPS / 2) == (3, "--threads")


def test_no_affinity_or_load(monkeypatch):
    def fail(*_):
        raise OSError
    monkeypatch.delattr(threads.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(threads.os, "getloadavg", fail)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 3)
    monkeypatch.setattr(threads.time, "process_time", lambda: 0.0)
    assert choose_blas_threads(None, BIG)[0] == 3


def test_run_threads_uses_largest_layer(machine):
    machine(2, 0.0)
    net = simple_vgg(10, channels=(128, 128, 256, 256, 512))  # conv_1: ~9.7 GFLOP at batch 128
    assert run_threads(net, 128, None)[0] == 2
    small = simple_vgg(10, channels=(4, 4, 4, 4, 4))
    assert run_threads(small, 8, None)[0] == 1
    assert run_threads(small, 8, 2) == (2, "--threads")


@pytest.mark.parametrize(("argv", "line"), [
    ([], "BLAS threads 1 (small problem"), (["--threads", "2"], "BLAS threads 2 (--threads)")])
def test_choice_in_start_line_and_report(tmp_path, capsys, argv, line):
    out = tmp_path / "run"
    tiny = ["--preset", "demo", "--quiet", "--set", "channels=[4,8]", "feedback_iterations=[2,2]",
            "--epochs", "1", "--steps", "2"]
    assert main([*tiny, *argv, "--out", str(out)]) == 0
    assert line in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["blas_threads"] == int(line.split()[2])
    assert report["blas_threads_reason"].startswith(line.split("(")[1].rstrip(")"))


def test_feedback_blocks_run_on_no_more_threads_than_the_run_may_use():
    from refdtp.algorithms import feedback_workers
    from refdtp.backend import blas_threads
    from refdtp.threads import current_blas_threads
    with blas_threads(1):  # the run chose 1 thread (a busy machine): blocks train one at a time
        assert current_blas_threads() == 1 and feedback_workers("numpy", 5) == 1
    with blas_threads(2):
        assert feedback_workers("numpy", 5) == min(2, current_blas_threads())
        assert feedback_workers("numpy", 1) == 1
    assert feedback_workers("cupy", 5) == 1 and feedback_workers("numpy", 5, workers=3) == 3
