"""Fuzzing a real checkpoint: byte flips, truncations, attribute edits.

Every damaged file is either refused with a :class:`CheckpointError` (through the
command lines: exit status 2, one ``error:`` line, no traceback) or, where the
damage does not change what is stored, loads to exactly the same values.
"""
from __future__ import annotations

import json
import shutil

import h5py
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tree_asserts import assert_same_tree

from refdtp.training import checkpoint as ck
from refdtp.training import evaluate_cli
from refdtp.training.checkpoint import CheckpointError, load_checkpoint
from refdtp.training.cli import main

TINY = ["--preset", "demo", "--quiet", "--set", "channels=[4,8]", "feedback_iterations=[2,2]",
        "--epochs", "2", "--steps", "3"]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Run(tuple):
    """(run directory, checkpoint bytes, loaded (header, payload)) with a short repr for hypothesis."""

    def __repr__(self) -> str:
        return f"Run({self[0]})"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-epoch run."""
    out = tmp_path_factory.mktemp("fuzz") / "run"
    assert main([*TINY, "--out", str(out)]) == 0
    data = (out / "checkpoint.h5").read_bytes()
    return Run((out, data, load_checkpoint(out / "checkpoint.h5")))


def _refused_or_same(path, original):
    try:
        header, payload = load_checkpoint(path)
    except CheckpointError as exc:
        assert str(exc) and "\n" not in str(exc), f"unclear message: {exc!r}"
        return "refused"
    assert_same_tree(original[1], payload)
    assert_same_tree({k: v for k, v in original[0].items() if k != "created"},
          {k: v for k, v in header.items() if k != "created"})
    return "same"


@FUZZ
@given(data=st.data())
def test_random_bit_flips_are_refused_or_harmless(run, tmp_path_factory, data):
    _, raw, original = run
    damaged = bytearray(raw)
    for offset in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4), "offsets"):
        damaged[offset] ^= 1 << data.draw(st.integers(0, 7), "bit")
    path = tmp_path_factory.mktemp("flip") / "checkpoint.h5"
    path.write_bytes(bytes(damaged))
    _refused_or_same(path, original)


@FUZZ
@given(length=st.integers(0, 10**6))
def test_truncations_are_refused(run, tmp_path_factory, length):
    _, raw, original = run
    path = tmp_path_factory.mktemp("cut") / "checkpoint.h5"
    path.write_bytes(raw[: length % len(raw)])
    assert _refused_or_same(path, original) == "refused"


VALUES = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False),
                   st.text(st.characters(blacklist_characters="\x00"), max_size=20),
                   st.booleans())


@FUZZ
@given(name=st.sampled_from(["config", "config_hash", "epoch", "step", "global_step", "rng_seed",
                             "format", "format_version", "refdtp_version", "created", "digest", "extra"]),
       value=VALUES, reseal=st.booleans())
def test_attribute_edits_are_refused(run, tmp_path_factory, name, value, reseal):
    _, raw, original = run
    path = tmp_path_factory.mktemp("attr") / "checkpoint.h5"
    path.write_bytes(raw)
    with h5py.File(path, "r+") as f:
        old = ck._plain(f.attrs[name]) if name in f.attrs else None
        if old == value and type(old) is type(value):
            return  # not an edit
        f.attrs[name] = value
    if reseal:  # a consistent file header: only the content digest can tell
        path.write_bytes(ck.seal(path.read_bytes()[ck.SEAL_SIZE:]))
    assert _refused_or_same(path, original) == "refused"


def test_unused_bytes_of_the_user_block_are_covered_too(run, tmp_path):
    _, raw, original = run
    end = raw.index(b"\n") + 1
    damaged = raw[:end] + b"x" + raw[end + 1:]  # in the zero padding of the 512-byte header
    (tmp_path / "c.h5").write_bytes(damaged)
    assert _refused_or_same(tmp_path / "c.h5", original) == "refused"


# -- through the command lines ----------------------------------------------------------

def _damage(kind: str, path):
    raw = bytearray(path.read_bytes())
    if kind == "flip":
        raw[len(raw) // 2] ^= 0x10
    elif kind == "truncate":
        raw = raw[: len(raw) - 100]
    elif kind == "step":
        path.write_bytes(bytes(raw))
        with h5py.File(path, "r+") as f:
            f.attrs["step"] = int(f.attrs["step"]) + 1
        return
    elif kind == "config":
        path.write_bytes(bytes(raw))
        with h5py.File(path, "r+") as f:
            cfg = json.loads(f.attrs["config"])
            f.attrs["config"] = json.dumps({**cfg, "lr": cfg["lr"] * 2}, sort_keys=True)
            f.attrs["digest"] = ck.read_file(f)[2]
        raw = ck.seal(path.read_bytes()[ck.SEAL_SIZE:])
    elif kind == "json":
        path.write_bytes(bytes(raw))
        with h5py.File(path, "r+") as f:
            f.attrs["config"] = "{broken"
        raw = path.read_bytes()
    path.write_bytes(bytes(raw))


KINDS = ["flip", "truncate", "step", "config", "json"]


@pytest.mark.parametrize("kind", KINDS)
def test_resume_refuses_damage_and_points_at_the_previous_checkpoint(run, tmp_path, capsys, kind):
    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    _damage(kind, out / "checkpoint.h5")
    assert main(["--resume", "--quiet", "--epochs", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "corrupt" in err and "checkpoint.prev.h5 (at the end of epoch 1) is intact" in err, err
    assert f"mv {out / 'checkpoint.h5'}" in err, err


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_refuses_a_damaged_file_and_falls_back_in_a_run_dir(run, tmp_path, capsys, kind):
    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    _damage(kind, out / "checkpoint.h5")
    shutil.copy(out / "checkpoint.h5", tmp_path / "other.h5")
    assert evaluate_cli.main([str(tmp_path / "other.h5")]) == 2  # a file named on its own: no fallback
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and err.count("\n") == 1 and "Traceback" not in err, err
    assert evaluate_cli.main([str(out)]) == 0
    captured = capsys.readouterr()
    assert "corrupt" in captured.err and "using the previous checkpoint" in captured.err, captured.err
    assert "checkpoint.prev.h5" in captured.out and "at the end of epoch 1" in captured.out, captured.out


def test_evaluate_without_any_valid_checkpoint_exits_2(run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    _damage("flip", out / "checkpoint.h5")
    _damage("truncate", out / "checkpoint.prev.h5")
    assert evaluate_cli.main([str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and err.count("\n") == 1 and "unusable too" in err, err


def test_evaluate_uses_the_previous_checkpoint_when_the_latest_is_missing(run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    (out / "checkpoint.h5").unlink()
    assert evaluate_cli.main([str(out)]) == 0
    captured = capsys.readouterr()
    assert "no checkpoint at" in captured.err and "checkpoint.prev.h5" in captured.out
