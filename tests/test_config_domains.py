"""Every Config field has a declared domain; out-of-range input exits 2 with one line, writing nothing."""
from __future__ import annotations

import dataclasses
import json

import pytest

from refdtp.config import DOMAINS, Config
from refdtp.domains import PER_BLOCK
from refdtp.training import evaluate_cli
from refdtp.training.cli import main
from refdtp.training.epochs import failing_step, position, schedule_warning
from refdtp.training.presets import PRESETS, get_preset
from refdtp.training.run import schedule_of

FAST = ["--preset", "demo", "--quiet", "--epochs", "1", "--steps", "1"]


def test_every_config_field_declares_a_domain():
    """Fields added later (by anyone) must declare type and range in refdtp.config.DOMAINS."""
    fields = [f.name for f in dataclasses.fields(Config)]
    missing = [name for name in fields if name not in DOMAINS]
    assert not missing, f"Config fields without a declared domain in refdtp.config.DOMAINS: {missing}"
    stale = sorted(set(DOMAINS) - set(fields))
    assert not stale, f"DOMAINS entries for fields Config no longer has: {stale}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_defaults_and_presets_lie_in_their_domains(name):
    Config().validate()
    cfg = get_preset(name)
    for key, domain in DOMAINS.items():
        domain.check(key, getattr(cfg, key))  # raises if a preset leaves its declared domain


def test_per_block_lists_are_declared_as_such():
    per_block = sorted(k for k, d in DOMAINS.items() if d.length == PER_BLOCK)
    assert per_block == ["feedback_iterations", "feedback_lr", "feedback_sigma"], per_block


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# (command line, key named in the message, value shown, allowed range shown)
BAD = [
    (["--set", "lr=-1"], "lr", "-1.0", ">= 0"),
    (["--set", "momentum=-1"], "momentum", "-1.0", "in [0, 1)"),
    (["--set", "weight_decay=-1"], "weight_decay", "-1.0", ">= 0"),
    (["--set", "t_max=0"], "t_max", "got 0", "in [1, 1000000]"),
    (["--set", "val_fraction=1.5"], "val_fraction", "1.5", "in [0, 1)"),
    (["--set", "val_fraction=-0.1"], "val_fraction", "-0.1", "in [0, 1)"),
    (["--set", "channels=[0,0]"], "channels", "[0, 0]", "in [1, 4096]"),
    (["--set", "channels=[]"], "channels", "[]", "at least one entry"),
    (["--set", "eta_min=-1"], "eta_min", "-1.0", ">= 0"),
    (["--set", "feedback_momentum=2"], "feedback_momentum", "2.0", "in [0, 1)"),
    (["--set", "feedback_sigma=[0,0.1]"], "feedback_sigma", "[0.0, 0.1]", "> 0"),
    (["--set", "gamma=0"], "gamma", "0.0", "in (0, 1]"),
    (["--set", "diagnostics_beta=0"], "diagnostics_beta", "0.0", "> 0"),
    (["--seed", "-1"], "seed", "-1", "in [0, 4294967295]"),
    (["--steps", "-3"], "max_steps_per_epoch", "-3", "in [0, "),
    (["--batch-size", "0"], "batch_size", "got 0", "in [1, "),
    (["--epochs", "0"], "epochs", "got 0", "in [1, 1000000]"),
]


@pytest.mark.parametrize("argv, key, value, allowed", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_out_of_range_values_exit_2_with_one_line_and_write_nothing(argv, key, value, allowed, tmp_path,
                                                                    capsys):
    out = tmp_path / "run"
    code, _, err = _run([*FAST, "--out", str(out), *argv], capsys)
    assert code == 2, f"exit {code}: {err}"
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    assert key in err and value in err and allowed in err, err
    assert not out.exists(), f"{out} was written before validation failed"


def test_options_are_checked_even_when_only_printing_the_config(capsys):
    code, out, err = _run(["--threads", "0", "--print-config"], capsys)
    assert (code, out, err) == (2, "", "error: --threads must be an integer >= 1, got 0\n"), err


def test_out_naming_a_file_or_a_path_under_a_file_exits_2(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a run")
    for out, message in ((afile, "is a file, not a run directory"),
                         (afile / "sub", "is a file, not a folder"), ("", "--out must not be empty")):
        code, _, err = _run([*FAST, "--out", str(out)], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert afile.read_text() == "not a run"


def test_source_for_a_bundled_dataset_and_a_missing_source_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _run([*FAST, "--out", str(out), "--source", str(tmp_path)], capsys)
    assert code == 2 and "is not used by dataset 'digits'" in err, err
    code, _, err = _run(["--preset", "mnist-ldrl", "--out", str(out), "--source", str(tmp_path / "no")],
                        capsys)
    assert code == 2 and "--source" in err and "no such file or folder" in err, err
    assert not out.exists()


def test_evaluate_refuses_a_batch_size_below_1(tmp_path, capsys):
    assert evaluate_cli.main([str(tmp_path), "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --batch-size must be an integer >= 1, got 0\n", err


def test_wrong_types_in_a_config_json_are_refused_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    cfg = get_preset("demo").to_dict()
    for key, value, message in (("lr", "fast", "lr must be a number (non-negative, >= 0), got 'fast'"),
                                ("epochs", True, "epochs must be an integer in [1, 1000000], got True"),
                                ("feedback_lr", 0.1, "feedback_lr must be a list of numbers")):
        (run / "config.json").write_text(json.dumps({**cfg, key: value}))
        code, _, err = _run(["--out", str(run), "--resume"], capsys)
        assert code == 2 and message in err, err
    (run / "config.json").write_text("[1, 2]")
    code, _, err = _run(["--out", str(run), "--resume"], capsys)
    assert code == 2 and "cannot resume" in err, err


def test_epochs_beyond_t_max_warn_on_stderr_at_the_start(tmp_path, capsys):
    tiny = [*FAST, "--set", "channels=[4,8]", "feedback_iterations=[1,1]"]
    code, out, err = _run([*tiny, "--epochs", "10", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert err.startswith("warning: epochs 10 > t_max 8 + 1"), err
    assert "eta_min 0 in epoch 9, then climbs back up to" in err and "--set t_max=9" in err, err
    assert "epoch 10/10" in out and "epoch 0" not in out, out
    code, _, err = _run([*tiny, "--epochs", "9", "--out", str(tmp_path / "r9")], capsys)
    assert code == 0 and "warning" not in err, "no warning while the lr does not rise"


def test_schedule_warning_follows_the_schedule():
    paper = get_preset("cifar10-ldrl")  # 90 epochs with T_max 85, as the paper
    warning = schedule_warning(paper, schedule_of(paper).lr_at)
    assert warning is not None and "epoch 86, then climbs" in warning, warning
    step = dataclasses.replace(paper, schedule="step")
    assert schedule_warning(step, schedule_of(step).lr_at) is None


def test_people_read_1_based_epochs_and_steps():
    assert position(0, 0) == "before epoch 1"
    assert position(2, 0) == "at the end of epoch 2"
    assert position(2, 5) == "in epoch 3 after step 5"
    assert failing_step(0, 5, 8) == "epoch 1/8, step 6"
