"""``python -m refdtp.evaluate`` and ``python -m refdtp.plot`` on finished tiny runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from refdtp.training import evaluate_cli as evaluate
from refdtp.training import plot
from refdtp.training.cli import main as train_main

TINY = ["--preset", "demo", "--quiet", "--epochs", "2", "--steps", "6",
        "--set", "channels=[4,8]", "feedback_iterations=[2,2]"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An L-DRL run with diagnostics and a BP run, both finished."""
    root = tmp_path_factory.mktemp("runs")
    assert train_main([*TINY, "--out", str(root / "ldrl"), "--set", "diagnostics=true"]) == 0
    assert train_main([*TINY, "--out", str(root / "bp"), "--set", "algorithm=bp"]) == 0
    return root / "ldrl", root / "bp"


def _png(path):
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, f"{path}: not a real PNG ({len(data)} bytes)"


def test_evaluate_reproduces_the_logged_test_accuracy(runs, capsys):
    ldrl, _ = runs
    assert evaluate.main([str(ldrl), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    logged = json.loads((ldrl / "report.json").read_text())["final"]
    assert (result["epoch"], result["step"]) == (2, 0)
    assert result["test"]["n"] == 360 and "top5" not in result["test"], "digits has 10 classes: no top-5"
    assert result["test"]["top1"] == logged["test_top1"], (result, logged)
    assert np.isclose(result["test"]["loss"], logged["test_loss"], rtol=1e-12)


def test_evaluate_prints_top1_and_reads_a_checkpoint_file(runs, capsys):
    ldrl, _ = runs
    assert evaluate.main([str(ldrl / "checkpoint.prev.h5")]) == 0
    out = capsys.readouterr().out
    assert "checkpoint at the end of epoch 1 (global step 6)" in out, out
    assert "test: top-1" in out and "/360)" in out, out


def test_evaluate_refuses_missing_or_corrupt_checkpoints(runs, tmp_path, capsys):
    assert evaluate.main([str(tmp_path)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    bad = tmp_path / "bad.h5"
    bad.write_bytes((runs[0] / "checkpoint.h5").read_bytes()[:3000])
    assert evaluate.main([str(runs[0]), "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "corrupt or truncated" in err, err


def test_evaluate_refuses_a_source_for_a_bundled_dataset(runs, tmp_path, capsys):
    assert evaluate.main([str(runs[0]), "--source", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: source") and "is not used by dataset 'digits'" in err, err
    assert err.count("\n") == 1, err


def test_plot_one_run_writes_learning_and_alignment_png(runs, capsys):
    ldrl, _ = runs
    assert plot.main([str(ldrl)]) == 0
    _png(ldrl / "learning_curves.png")
    _png(ldrl / "alignment.png")
    assert "wrote" in capsys.readouterr().out


def test_plot_overlays_runs_with_labels(runs, tmp_path, capsys):
    ldrl, bp = runs
    target = tmp_path / "figs" / "cmp.png"
    assert plot.main([str(ldrl), str(bp), "--out", str(target)]) == 0
    _png(target)
    _png(tmp_path / "figs" / "cmp_alignment.png")
    labels = [plot.load_run(d)["label"] for d in runs]
    assert labels == ["ldrl (ldrl)", "bp (bp)"], labels
    capsys.readouterr()


def test_plot_without_diagnostics_skips_alignment(runs, tmp_path, capsys):
    _, bp = runs
    assert plot.main([str(bp), "--out", str(tmp_path)]) == 0
    _png(tmp_path / "learning_curves.png")
    assert not (tmp_path / "alignment.png").exists()
    assert "no alignment diagnostics" in capsys.readouterr().out


def test_plot_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert plot.main([str(tmp_path)]) == 2
    assert "config.json not found" in capsys.readouterr().err


MNIST = ["--preset", "mnist-ldrl", "--quiet", "--epochs", "1", "--steps", "1", "--batch-size", "4",
         "--no-download", "--set", "feedback_iterations=[1,1,1]"]


def test_source_and_data_dir_are_kept_so_evaluate_and_resume_read_the_runs_data(tmp_path, monkeypatch,
                                                                                  capsys):
    """--source (a user's dataset folder) and --data-dir go into the run's config, as absolute paths;
    evaluate and --resume then read that data without the options, never the default data folder."""
    from data_loaders.testing import write_mnist
    default = tmp_path / "default-data"
    monkeypatch.setenv("REFDTP_DATA", str(default))
    monkeypatch.setenv("XDG_CACHE_HOME", str(default))
    write_mnist(tmp_path / "src", n_train=12, n_test=5)
    monkeypatch.chdir(tmp_path)
    assert train_main([*MNIST, "--source", "src", "--data-dir", "data", "--out", "run"]) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (cfg["source"], cfg["data_dir"]) == (str(tmp_path / "src"), str(tmp_path / "data")), cfg
    assert (tmp_path / "data" / "mnist.h5").is_file(), "the cache goes to --data-dir"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert evaluate.main([str(tmp_path / "run"), "--json", "--no-download"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["test"]["n"] == 5
    assert train_main(["--out", str(tmp_path / "run"), "--resume", "--epochs", "2", "--quiet"]) == 0
    # a run from --data-dir alone (its cache); evaluate must not look in the default folder
    assert train_main([*MNIST, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run2")]) == 0
    capsys.readouterr()
    assert evaluate.main([str(tmp_path / "run2"), "--no-download"]) == 0, capsys.readouterr().err
    assert not default.exists(), "something looked in (and wrote to) the default data folder"
