"""``python -m refdtp.evaluate`` and ``python -m refdtp.plot`` on finished tiny runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from refdtp import evaluate, plot
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
    assert "1 epochs + 0 steps" in out and "test: top-1" in out and "/360)" in out, out


def test_evaluate_refuses_missing_or_corrupt_checkpoints(runs, tmp_path, capsys):
    assert evaluate.main([str(tmp_path)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    bad = tmp_path / "bad.h5"
    bad.write_bytes((runs[0] / "checkpoint.h5").read_bytes()[:3000])
    assert evaluate.main([str(runs[0]), "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "corrupt or truncated" in err, err


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
