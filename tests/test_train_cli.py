"""Command line of ``python -m refdtp.train``: overview, --set type checking, clear errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from refdtp import backend
from refdtp.training.cli import main
from refdtp.training.overrides import OverrideError, apply_overrides, parse_value
from refdtp.training.presets import DESCRIPTIONS, PRESETS, get_preset

REPO = Path(__file__).resolve().parents[1]


def test_no_arguments_prints_the_overview_and_exits_0():
    """Through a real subprocess: the module entry point, its output and its exit status."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-m", "refdtp.train"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "nothing was run" in out and "python -m refdtp.train --preset demo" in out, out
    assert set(DESCRIPTIONS) == set(PRESETS), "every preset needs a one-line description"
    for name in PRESETS:
        assert f"\n  {name} " in out, f"preset {name} missing from the overview"
    assert "lr 0.02 (cosine T_max 8" in out and "feedback: iterations [10, 10]" in out, out


@pytest.mark.parametrize("key, text, value", [
    ("feedback_sigma", "[0.4,0.4,0.2,0.2,0.08]", [0.4, 0.4, 0.2, 0.2, 0.08]),
    ("feedback_sigma", "0.4, 0.2", [0.4, 0.2]),
    ("feedback_lr", "[1,2]", [1.0, 2.0]),
    ("feedback_iterations", "20,30", [20, 30]),
    ("channels", "[8]", [8]),
    ("hidden", "[]", []),
    ("lr", "1e-3", 1e-3),
    ("epochs", "7", 7),
    ("augment", "false", False),
    ("diagnostics", "True", True),
    ("algorithm", "bp", "bp"),
    ("notes", "free text", "free text"),
])
def test_set_values_are_typed(key, text, value):
    got = parse_value(key, text)
    assert got == value and type(got) is type(value), f"{key}={text} -> {got!r}"
    if isinstance(value, list):
        assert all(type(a) is type(b) for a, b in zip(got, value, strict=True)), f"{key}={text} -> {got!r}"


@pytest.mark.parametrize("item, message", [
    ("nonsense=1", "unknown config key 'nonsense'; valid keys: activation, "),
    ("epochs=2.5", "epochs: expected an integer"),
    ("lr=fast", "lr: expected a number"),
    ("lr=nan", "expected a finite number"),
    ("augment=maybe", "expected a boolean"),
    ("channels=[8,1.5]", "channels: expected an integer"),
    ("feedback_sigma=[0.4,,0.2]", "empty list element"),
    ("feedback_sigma=[0.4,0.2", "unbalanced brackets"),
    ("algorithm=sgd", "'sgd' is not one of ldrl, bp, dtp, tp, drl"),
    ("schedule=linear", "is not one of constant, cosine, step"),
    ("lr", "expects key=value"),
])
def test_bad_set_items_are_refused(item, message):
    with pytest.raises(OverrideError, match=message.replace("[", r"\[")):
        apply_overrides(get_preset("demo"), [item])


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_print_config_applies_presets_flags_and_overrides(capsys):
    code, out, _ = _run(["--preset", "cifar10-bp", "--epochs", "3", "--batch-size", "64", "--seed", "9",
                         "--steps", "5", "--set", "lr=0.1", "channels=[4,4,8,8,16]", "--print-config"],
                        capsys)
    cfg = json.loads(out)
    assert code == 0 and cfg["algorithm"] == "bp" and cfg["lr"] == 0.1
    assert (cfg["epochs"], cfg["batch_size"], cfg["seed"], cfg["max_steps_per_epoch"]) == (3, 64, 9, 5)
    assert cfg["channels"] == [4, 4, 8, 8, 16]


@pytest.mark.parametrize("argv, code, message", [
    (["--preset", "cifar11"], 2, "invalid choice: 'cifar11' (choose from 'cifar10-bp'"),
    (["--set", "bogus=1"], 2, "unknown config key 'bogus'; valid keys:"),
    (["--set", "epochs=two"], 2, "epochs: expected an integer, got 'two'"),
    (["--epochs", "0"], 2, "epochs must be an integer in [1, 1000000], got 0"),
    (["--epochs", "many"], 2, "argument --epochs: invalid int value"),
    (["--backend", "tpu"], 2, "argument --backend: invalid choice"),
    (["--resume"], 2, "--resume needs --out RUN_DIR"),
])
def test_bad_command_lines_give_clear_errors(argv, code, message, capsys):
    got, _, err = _run(argv, capsys)
    assert got == code and message in err, err
    assert "Traceback" not in err


def test_list_of_the_wrong_length_names_the_blocks(tmp_path, capsys):
    code, _, err = _run(["--preset", "demo", "--out", str(tmp_path / "r"),
                         "--set", "feedback_sigma=[0.4,0.4,0.2]"], capsys)
    assert code == 2, err
    assert "feedback_sigma has 3 entries but simple_vgg has 2 trained feedback blocks ['conv_1', 'fc']" in err


def test_missing_dataset_is_reported_without_traceback(tmp_path, capsys):
    code, _, err = _run(["--preset", "cifar10-ldrl", "--data-dir", str(tmp_path), "--no-download",
                         "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.startswith("error: cifar-10-python.tar.gz not found in"), err


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    code, _, err = _run(["--preset", "demo", "--quiet", "--out", str(tmp_path / "r"), "--resume"], capsys)
    assert code == 2 and "nothing to resume: no checkpoint.h5" in err, err
    code, _, err = _run(["--out", str(tmp_path / "none"), "--resume"], capsys)
    assert code == 2 and "cannot resume" in err and "config.json not found" in err, err


def test_cupy_backend_without_gpu_gives_the_backend_error(tmp_path, capsys):
    if backend.gpu_available():
        pytest.skip("a GPU is present: the cupy backend works here")
    code, _, err = _run(["--preset", "demo", "--backend", "cupy", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "The 'cupy' backend needs CuPy and a visible NVIDIA GPU" in err, err
    assert not (tmp_path / "r").exists(), "nothing may be written when the backend is unusable"


def test_help_lists_every_option(capsys):
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    for option in ("--preset", "--backend", "--epochs", "--batch-size", "--data-dir", "--source", "--out",
                   "--seed", "--resume", "--set", "--quiet", "--steps", "--threads"):
        assert option in out, f"{option} missing from --help"
