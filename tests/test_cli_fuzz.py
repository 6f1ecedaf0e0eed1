"""Fuzzing the command lines: any value either runs or exits 2 with one ``error:`` line, never a traceback.

Values for every Config field (through ``--set``) and for the options
(``--seed``, ``--epochs``, ``--steps``, ``--batch-size``, ``--out``) are drawn
valid and invalid: negative, zero, huge, NaN/inf strings, wrong types, wrong
list lengths, odd characters. Most draws only resolve and validate the command
line (``--print-config``, milliseconds); a few run a tiny demo for one step, so
that the checks made once the data and the network exist are fuzzed too. The
``slow`` variants draw many more examples.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from refdtp.config import DOMAINS, Config
from refdtp.training import evaluate_cli
from refdtp.training.cli import main

FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]  # capsys is reset per example
FIELDS = sorted(f.name for f in dataclasses.fields(Config))
TINY = ["--preset", "demo", "--quiet", "--no-download"]
#: Fields whose valid values can make a one-step run slow (sizes, iteration counts): kept small there.
SMALL = {"channels": "[4,8]", "hidden": "[8]", "feedback_iterations": "[1,1]"}

JUNK = st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e999", "-1", "0", "-0.0", "1.5", "2",
                        "1e30", "-1e30", str(2 ** 64), str(-2 ** 63), "true", "false", "abc", "[]", "[1]",
                        "[1,2]", "[1,2,3,4,5,6]", "[0,0]", "[-1,1]", "[1,", "[[1]]", "[1;2]", "1,,2",
                        "[nan,1]", "[1e999]", "ldrl", "cifar10", "digits", "é", "a\tb", "99999999999"])
NUMBER = st.one_of(st.integers(-10 ** 12, 10 ** 12).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.floats(-2.0, 2.0).map(lambda x: f"{x:.3g}"))
LIST = st.lists(st.one_of(st.integers(-3, 70), st.floats(-1, 1).map(lambda x: round(x, 3))),
                max_size=6).map(lambda v: "[" + ",".join(map(str, v)) + "]")


def value_text(key: str):
    """Text for ``--set key=...``: the field's own choices, numbers, lists, junk, or any short text."""
    domain = DOMAINS[key]
    options = [st.sampled_from(domain.options())] if domain.options() else []
    return st.one_of(*options, JUNK, NUMBER, LIST, st.text(max_size=12))


SET_ITEM = st.sampled_from(FIELDS).flatmap(lambda k: value_text(k).map(lambda v: f"{k}={v}"))
INT_TEXT = st.one_of(st.integers(-10, 10).map(str), st.sampled_from(["0", "-1", "1e3", "x", "", "2.5",
                                                                    str(2 ** 40), str(2 ** 32)]))


def assert_clean_exit(code: int, err: str, out_dir: Path | None = None) -> None:
    """0 (ran), 3 (diverged, one status line), or 2 with one ``error:`` line and nothing written."""
    assert "Traceback" not in err, err
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line: {err!r}"
        assert out_dir is None or not out_dir.exists(), f"{out_dir} written although the input was refused"
    elif code == 3:
        assert err.splitlines()[-1].startswith("diverged: "), err
    else:
        assert code == 0, f"exit {code}: {err}"


def _main(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _resolve_only(set_items, options, capsys, base: Path):
    out = base / "never-written"
    code, stdout, err = _main([*TINY, "--out", str(out), *options, "--set", *set_items, "--print-config"],
                              capsys)
    assert_clean_exit(code, err, out)
    if code == 0:
        cfg = Config.from_dict(json.loads(stdout))
        cfg.validate()  # what --print-config shows lies in the declared domains
    assert not out.exists(), "--print-config must write nothing"
    return code


@settings(max_examples=300, suppress_health_check=FIXTURES)
@given(items=st.lists(SET_ITEM, min_size=1, max_size=4))
@example(items=["val_fraction=-0.1", "eta_min=-1", "feedback_momentum=2"]).via("accepted silently before")
def test_any_set_value_resolves_or_exits_2(items, capsys):
    with tempfile.TemporaryDirectory() as base:
        _resolve_only(items, [], capsys, Path(base))


OPTION = st.one_of(*(st.tuples(st.just(flag), INT_TEXT)
                     for flag in ("--seed", "--epochs", "--steps", "--batch-size", "--threads")))


@settings(max_examples=150, suppress_health_check=FIXTURES)
@given(options=st.lists(OPTION, min_size=1, max_size=4))
def test_any_option_value_resolves_or_exits_2(options, capsys):
    argv = [f"{flag}={value}" for flag, value in options]  # "=" so that "-1" is a value, not an option
    with tempfile.TemporaryDirectory() as base:
        code = _resolve_only(["notes=fuzz"], argv, capsys, Path(base))
    threads = [v for f, v in options if f == "--threads"][-1:]  # argparse keeps the last one
    assert code == 2 or not threads or int(threads[0]) >= 1, f"--threads {threads} accepted"


OUT_NAME = st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20),
                     st.sampled_from(["afile", "afile/sub", "x" * 300, "a\x00b", "new/deeper/run", " ",
                                      "dir", "-", "run.h5"]))


@settings(max_examples=80, suppress_health_check=FIXTURES)
@given(name=OUT_NAME)
def test_any_out_path_is_usable_or_exits_2(name, capsys):
    """--out under a scratch folder holding a file ``afile`` and a folder ``dir``; never a traceback."""
    if ".." in Path(name).parts or name.startswith("/"):
        name = "x" + name.replace("..", "_")
    with tempfile.TemporaryDirectory() as base:
        (Path(base) / "afile").write_text("a file")
        (Path(base) / "dir").mkdir()
        out = f"{base}/{name}"
        code, _, err = _main([*TINY, "--out", out, "--print-config"], capsys)
        assert_clean_exit(code, err)
        if code == 0:
            assert Path(out).is_dir() or not os.path.lexists(out), "a usable --out must be a folder or new"


def _one_step_run(items, options, capsys, base: Path):
    out = base / "run"
    argv = [*TINY, "--epochs", "1", "--steps", "1", "--out", str(out), *options,
            "--set", *[f"{k}={v}" for k, v in SMALL.items()], *items]
    code, _, err = _main(argv, capsys)
    assert_clean_exit(code, err, out)
    if code in (0, 3):
        assert (out / "config.json").is_file() and (out / "report.json").is_file()


def _small_set_item(key: str):
    """Like SET_ITEM, but valid sizes stay small so that one step takes a moment."""
    if key in SMALL:
        return st.sampled_from(["[0,0]", "[]", "[1]", "[2,3]", "[1,2,3]", "[-1,2]", "x", "[5000,1]"])
    return value_text(key)


RUN_ITEM = st.sampled_from([f for f in FIELDS if f not in ("epochs", "max_steps_per_epoch")]).flatmap(
    lambda k: _small_set_item(k).map(lambda v: f"{k}={v}"))
RUN_OPTION = st.one_of(st.tuples(st.just("--seed"), INT_TEXT),
                       st.tuples(st.just("--batch-size"), st.sampled_from(["1", "7", "0", "-2", "x",
                                                                          str(2 ** 40), "100000"])))


@settings(max_examples=30, suppress_health_check=FIXTURES)
@given(items=st.lists(RUN_ITEM, min_size=1, max_size=2), options=st.lists(RUN_OPTION, max_size=1))
@example(items=["lr=-1"], options=[]).via("the issue's tracebacks")
@example(items=["channels=[0,0]"], options=[]).via("the issue's tracebacks")
@example(items=["t_max=0", "momentum=-1"], options=[]).via("the issue's tracebacks")
@example(items=["val_fraction=1.5"], options=[("--seed", "-1")]).via("the issue's tracebacks")
@example(items=["val_fraction=0.0001"], options=[]).via("no validation example held out")
def test_one_step_runs_complete_or_exit_2(items, options, capsys, monkeypatch):
    """Checks that need the data and the network (list lengths, shapes) are fuzzed by real runs."""
    with tempfile.TemporaryDirectory() as base:
        monkeypatch.setenv("REFDTP_DATA", str(Path(base) / "data"))  # never the user's data folder
        _one_step_run(items, [f"{f}={v}" for f, v in options], capsys, Path(base))


@settings(max_examples=40, suppress_health_check=FIXTURES)
@given(batch=INT_TEXT, extra=st.sampled_from([[], ["--backend", "tpu"], ["--source", "/no/such"],
                                              ["--data-dir", ""], ["--bogus"]]))
def test_evaluate_options_are_checked_or_exit_2(batch, extra, capsys):
    with tempfile.TemporaryDirectory() as base:
        code = evaluate_cli.main([base, f"--batch-size={batch}", *extra])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, (code, err)


@pytest.mark.slow
@settings(max_examples=3000, suppress_health_check=FIXTURES)
@given(items=st.lists(SET_ITEM, min_size=1, max_size=6))
def test_any_set_value_resolves_or_exits_2_long(items, capsys):
    with tempfile.TemporaryDirectory() as base:
        _resolve_only(items, [], capsys, Path(base))


@pytest.mark.slow
@settings(max_examples=200, suppress_health_check=FIXTURES)
@given(items=st.lists(RUN_ITEM, min_size=1, max_size=3), options=st.lists(RUN_OPTION, max_size=2))
def test_one_step_runs_complete_or_exit_2_long(items, options, capsys, monkeypatch):
    with tempfile.TemporaryDirectory() as base:
        monkeypatch.setenv("REFDTP_DATA", str(Path(base) / "data"))
        _one_step_run(items, [f"{f}={v}" for f, v in options], capsys, Path(base))
