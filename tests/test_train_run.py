"""End-to-end runs of ``python -m refdtp.train`` on the bundled digits, with tiny networks.

Covers learning, the run-directory files, bit-identical resume after an
interruption at any step, divergence and out-of-memory stops, diagnostics and
validation accuracy. Runs go through :func:`refdtp.training.cli.main` in
process (the same code as the command line) to stay fast.
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from tree_asserts import assert_same_run

from refdtp import backend
from refdtp.config import Config
from refdtp.training import run as run_module
from refdtp.training.checkpoint import load_checkpoint
from refdtp.training.cli import main

TINY = ["--preset", "demo", "--quiet", "--set", "channels=[4,8]", "feedback_iterations=[2,2]"]
SHORT = [*TINY, "--epochs", "2", "--steps", "8"]  # 2 epochs x 8 steps of 32 images


def _stop_at(global_step):
    def hook(state, stats):
        if state.global_step == global_step:
            raise KeyboardInterrupt
    return hook


def _checkpoint(run_dir):
    return load_checkpoint(run_dir / "checkpoint.h5")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2 x 8-step run."""
    out = tmp_path_factory.mktemp("reference")
    assert main([*SHORT, "--out", str(out)]) == 0
    return out


def test_short_run_learns_and_writes_its_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/2" in printed and "epoch 2/2" in printed and "status: completed" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed" and report["epochs_done"] == 2
    assert report["final"]["test_top1"] > 0.6, f"10-class digits, chance 0.1: {report['final']}"
    cfg = Config.from_dict(json.loads((out / "config.json").read_text()))
    assert cfg.channels == [4, 8] and cfg.epochs == 2 and cfg.algorithm == "ldrl"
    lines = (out / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch,global_step,lr,train_loss,train_acc")
    with h5py.File(out / "metrics.h5", "r") as f:
        assert np.array_equal(f["epoch"][()], [1, 2]) and f["test_top1"][1] == report["final"]["test_top1"]
    assert (out / "report.txt").read_text().startswith("status: completed")


@pytest.mark.parametrize("stop", [3, 8, 11], ids=["mid-epoch-0", "end-of-epoch-0", "mid-epoch-1"])
def test_interrupted_run_resumes_bit_identically(tmp_path, reference, capsys, stop):
    out = tmp_path / "run"
    assert main([*SHORT, "--out", str(out)], on_step=_stop_at(stop)) == 130
    header, _ = _checkpoint(out)
    assert header["global_step"] == stop, "the Ctrl-C checkpoint is not at the interrupted step"
    assert json.loads((out / "report.json").read_text())["status"] == "interrupted"
    assert main(["--out", str(out), "--resume", "--quiet"]) == 0  # config from RUN_DIR/config.json
    assert "resuming from" in capsys.readouterr().out
    assert_same_run(reference, out)


def test_one_epoch_extended_to_two_matches(tmp_path, reference):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--steps", "8", "--out", str(out)]) == 0
    assert main([*TINY, "--steps", "8", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert_same_run(reference, out)


def test_fresh_run_refuses_an_existing_checkpoint(tmp_path, reference, capsys):
    assert main([*SHORT, "--out", str(reference)]) == 2
    assert "already holds a checkpoint; pass --resume" in capsys.readouterr().err


def test_divergence_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    real, seen = run_module.train_step, {}

    def exploding(cfg, net, state, x, labels, lr):  # an infinite lr in epoch 2, step 4 (1-based)
        if state.global_step == 8 + 3:
            seen["bytes"] = (out / "checkpoint.h5").read_bytes()
            lr = float("inf")
        return real(cfg, net, state, x, labels, lr)
    monkeypatch.setattr(run_module, "train_step", exploding)
    out = tmp_path / "run"
    assert main([*SHORT, "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "diverged in epoch 2/" in err and ", step 4 (global step 12)" in err, err
    assert "index" not in err and "epoch 1 step 3" not in err, f"0-based numbering leaked: {err}"
    assert "at the end of epoch 1" in err, f"the kept checkpoint, 1-based: {err}"
    assert any(f"{block}." in err for block in ("conv_0", "conv_1", "fc")), f"no block named: {err}"
    assert (out / "checkpoint.h5").read_bytes() == seen["bytes"], "the last good checkpoint changed"
    header, payload = _checkpoint(out)
    assert (header["epoch"], header["step"]) == (1, 0)
    assert all(np.isfinite(a).all() for p in payload["W"].values() for a in p.values())
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "diverged" and report["exit_code"] == 3
    assert "epoch 2 step 4" in report["message"], report["message"]


def test_out_of_memory_suggests_a_smaller_batch(tmp_path, monkeypatch, capsys):
    def no_memory(*args):
        raise MemoryError("cannot allocate")
    monkeypatch.setattr(run_module, "train_step", no_memory)
    assert main([*SHORT, "--out", str(tmp_path / "run")]) == 4
    err = capsys.readouterr().err
    assert "out of memory at batch size 32" in err and "--batch-size 16" in err, err


@pytest.mark.gpu
def test_cupy_run_resumes_bit_identically(tmp_path):
    if not backend.gpu_available():
        pytest.skip("CuPy backend needs CuPy and an NVIDIA GPU")
    gpu = [*SHORT, "--backend", "cupy"]
    assert main([*gpu, "--out", str(tmp_path / "ref")]) == 0
    assert main([*gpu, "--out", str(tmp_path / "run")], on_step=_stop_at(11)) == 130
    assert main(["--out", str(tmp_path / "run"), "--resume", "--quiet", "--backend", "cupy"]) == 0
    assert_same_run(tmp_path / "ref", tmp_path / "run")


def test_diagnostics_and_validation_are_logged(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--steps", "4", "--out", str(out),
                 "--set", "diagnostics=true", "val_fraction=0.2"]) == 0
    _, payload = _checkpoint(out)
    row = payload["history"][0]
    for block in ("conv_0", "conv_1", "fc", "total"):
        assert 0 <= row[f"dtp_bp_angle/{block}"] <= 180, row
    for block in ("conv_1", "fc"):
        assert np.isfinite(row[f"jmc_error/{block}"]) and row[f"jmc_error/{block}"] > 0, row
    # At the output block the scaled DTP update is the BP gradient (docs/theory.md §4.2).
    assert row["dtp_bp_angle/fc"] < 0.5, row
    assert 0 <= row["val_top1"] <= 1 and "val_top1" in json.loads((out / "report.json").read_text())["final"]
    assert "val top-1" in capsys.readouterr().out
