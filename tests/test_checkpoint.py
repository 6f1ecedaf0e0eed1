"""HDF5 checkpoints: exact round trips, atomic rotation, refusal of damaged or foreign files."""
from __future__ import annotations

import dataclasses
import json
import os

import h5py
import numpy as np
import pytest
from tree_asserts import assert_same_tree

from refdtp.algorithms import init_state
from refdtp.config import build_network
from refdtp.optim import flatten
from refdtp.training import checkpoint as ck
from refdtp.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from refdtp.training.presets import get_preset
from refdtp.training.resume import fresh_progress, load_state, save_state

HEADER = {"config": {"lr": 0.1, "epochs": 3}, "config_hash": "abc", "epoch": 1, "step": 2,
          "global_step": 7, "rng_seed": 5}


def _payload(rng):
    return {"W": {"conv_0": {"weight": rng.standard_normal((2, 1, 3, 3)).astype(np.float32),
                             "bias": rng.standard_normal(2).astype(np.float32)}},
            "omega": {"conv_0": {"weight": rng.standard_normal((2, 1, 3, 3))}},
            "forward_opt": {"step": 3, "momentum": {"conv_0.weight": rng.standard_normal(4)}},
            "feedback_opt": {"fc": {"step": 0, "momentum": {}}},
            "progress": {"loss_sum": 1.25, "acc_sum": 0.5, "batches": 2, "done": True, "tag": "x"},
            "history": [{"epoch": 1, "test_top1": 0.5}]}


def test_round_trip_is_exact(tmp_path, rng):
    payload = _payload(rng)
    save_checkpoint(tmp_path / "c.h5", HEADER, payload)
    header, loaded = load_checkpoint(tmp_path / "c.h5")
    assert_same_tree(payload, loaded)
    for key, value in HEADER.items():
        assert header[key] == value, f"header {key}: {header[key]!r} != {value!r}"
    assert header["format_version"] == ck.FORMAT_VERSION and header["refdtp_version"]


def test_save_keeps_previous_and_leaves_no_temp(tmp_path, rng):
    first, second = _payload(rng), _payload(rng)
    save_checkpoint(tmp_path / "checkpoint.h5", HEADER, first)
    save_checkpoint(tmp_path / "checkpoint.h5", {**HEADER, "epoch": 2}, second)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.h5", "checkpoint.prev.h5"]
    assert_same_tree(first, load_checkpoint(tmp_path / "checkpoint.prev.h5")[1])
    assert_same_tree(second, load_checkpoint(tmp_path / "checkpoint.h5")[1])


def test_failed_write_leaves_old_checkpoint(tmp_path, rng, monkeypatch):
    path = tmp_path / "checkpoint.h5"
    save_checkpoint(path, HEADER, _payload(rng))
    before = path.read_bytes()

    def broken(group, tree):
        raise OSError("disk full")
    monkeypatch.setattr(ck, "_write_tree", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, HEADER, _payload(rng))
    assert path.read_bytes() == before, "a failed save changed the checkpoint"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.h5"], "a failed save left files behind"


def test_truncated_and_garbage_files_are_refused(tmp_path, rng):
    path = tmp_path / "c.h5"
    save_checkpoint(path, HEADER, _payload(rng))
    data = path.read_bytes()
    (tmp_path / "short.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "short.h5")
    (tmp_path / "noise.h5").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="not a refdtp checkpoint"):
        load_checkpoint(tmp_path / "noise.h5")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.h5")


def test_garbage_inside_a_weight_is_caught_by_the_digest(tmp_path, rng):
    path = tmp_path / "c.h5"
    save_checkpoint(path, HEADER, _payload(rng))
    with h5py.File(path, "r") as f:
        offset = f["W/conv_0/weight"].id.get_offset()  # contiguous data: raw bytes in the file
    with open(path, "r+b") as f:
        f.seek(offset + 4)
        f.write(b"\xde\xad\xbe\xef")
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.attrs.__setitem__("format", "something-else"), "not a refdtp checkpoint"),
    (lambda f: f.attrs.__setitem__("format_version", 99), "format version 99"),
    (lambda f: f.__delitem__("omega"), "missing /omega"),
    (lambda f: f.attrs.__delitem__("config_hash"), "missing config_hash"),
])
def test_foreign_or_incomplete_files_are_refused(tmp_path, rng, damage, message):
    path = tmp_path / "c.h5"
    save_checkpoint(path, HEADER, _payload(rng))
    with h5py.File(path, "r+") as f:
        damage(f)
    with pytest.raises(CheckpointError, match="SHA-256|truncated"):  # any edit changes the sealed bytes
        load_checkpoint(path)
    _reseal(path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def _tiny(**changes):
    cfg = get_preset("demo")
    return dataclasses.replace(cfg, channels=[2, 3], feedback_iterations=[1, 1], **changes)


def _state(cfg):
    net = build_network(cfg, (1, 8, 8), 10)
    return net, init_state(cfg, net)


def test_state_round_trip_and_extension(tmp_path):
    cfg = _tiny()
    net, state = _state(cfg)
    state = dataclasses.replace(state, forward_opt={"step": 4, "momentum": {k: v + 1 for k, v in
                                                    flatten(state.W).items()}},
                                epoch=2, step=5, global_step=99)
    save_state(tmp_path / "c.h5", cfg, state, {**fresh_progress(), "batches": 5}, [{"epoch": 2}])
    longer = dataclasses.replace(cfg, epochs=cfg.epochs + 10, diagnostics=True)  # allowed changes
    loaded, progress, history = load_state(tmp_path / "c.h5", longer, net, "numpy")
    for name in ("W", "omega", "forward_opt", "feedback_opt"):
        assert_same_tree(getattr(state, name), getattr(loaded, name))
    assert (loaded.epoch, loaded.step, loaded.global_step) == (2, 5, 99)
    assert progress["batches"] == 5 and history == [{"epoch": 2}]


def test_other_config_is_refused_naming_the_keys(tmp_path):
    cfg = _tiny()
    net, state = _state(cfg)
    save_state(tmp_path / "c.h5", cfg, state, fresh_progress(), [])
    other = dataclasses.replace(cfg, lr=0.5, feedback_sigma=[0.1, 0.1])
    with pytest.raises(CheckpointError, match="different configuration") as err:
        load_state(tmp_path / "c.h5", other, net, "numpy")
    keys = str(err.value).split("differing keys: ")[1].split(". Resume")[0]
    assert keys == "feedback_sigma: [0.2, 0.08] -> [0.1, 0.1]; lr: 0.02 -> 0.5", str(err.value)


def test_shapes_are_checked_against_the_network(tmp_path):
    cfg = _tiny()
    net, state = _state(cfg)
    W = {b: dict(p) for b, p in state.W.items()}
    W["fc"]["weight"] = np.zeros((10, 5), np.float32)
    save_state(tmp_path / "c.h5", cfg, dataclasses.replace(state, W=W), fresh_progress(), [])
    with pytest.raises(CheckpointError, match="W/fc/weight is \\(10, 5\\)"):
        load_state(tmp_path / "c.h5", cfg, net, "numpy")


def test_momentum_buffers_must_match_parameters(tmp_path):
    cfg = _tiny()
    net, state = _state(cfg)
    bad = {"step": 1, "momentum": {"conv_0.weight": np.zeros(3, np.float32)}}
    save_state(tmp_path / "c.h5", cfg, dataclasses.replace(state, forward_opt=bad), fresh_progress(), [])
    with pytest.raises(CheckpointError, match="forward_opt/momentum/conv_0.weight"):
        load_state(tmp_path / "c.h5", cfg, net, "numpy")


# -- every attribute is covered (issue "Hardening" 2, 3) ------------------------

ODD = {"epoch": 0x0123456789A, "step": 0x0BCDEF01234, "global_step": 0x056789ABCDE, "rng_seed": 0x09876543210}


def _flip_in(path, needle: bytes, bit: int = 0):
    """Flip one bit of the first occurrence of ``needle`` in the file; return the offset."""
    data = bytearray(path.read_bytes())
    offset = data.find(needle)
    assert offset >= 0 and data.find(needle, offset + 1) < 0, f"{needle!r} not found exactly once"
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))
    return offset


def _reseal(path):
    """Recompute the file header's SHA-256 (as a forger would), so only the content digest is left."""
    data = path.read_bytes()
    path.write_bytes(ck.seal(data[ck.SEAL_SIZE:]))


@pytest.mark.parametrize("forged", [False, True], ids=["sealed", "resealed"])
@pytest.mark.parametrize("key", sorted(ODD))
def test_one_bit_flipped_in_a_counter_attribute_is_refused(tmp_path, rng, key, forged):
    path = tmp_path / "c.h5"
    save_checkpoint(path, {**HEADER, **ODD}, _payload(rng))
    _flip_in(path, ODD[key].to_bytes(8, "little"), bit=3)
    if forged:
        _reseal(path)
    with pytest.raises(CheckpointError, match="corrupt.*SHA-256"):
        load_checkpoint(path)


@pytest.mark.parametrize("forged", [False, True], ids=["sealed", "resealed"])
def test_edited_config_json_is_refused_as_corruption(tmp_path, rng, forged):
    path = tmp_path / "c.h5"
    save_checkpoint(path, HEADER, _payload(rng))
    _flip_in(path, b'"lr": 0.1', bit=0)  # "lr": 0.0 -- still valid JSON
    if forged:
        _reseal(path)
    with pytest.raises(CheckpointError, match="corrupt.*SHA-256"):
        load_checkpoint(path)


def _forge(path, **attrs):
    """Set root attributes and recompute both digests: a consistent file with chosen values."""
    with h5py.File(path, "r+") as f:
        f.attrs.update(attrs)
        f.attrs["digest"] = ck.read_file(f)[2]
    _reseal(path)


@pytest.mark.parametrize("attrs, message", [
    ({"config": "{not json"}, "unreadable JSON"),
    ({"epoch": -1}, "invalid epoch"),
    ({"step": 1.5}, "invalid step"),
    ({"config": "[1, 2]"}, "invalid config"),
])
def test_values_of_the_wrong_kind_are_refused_even_with_valid_digests(tmp_path, rng, attrs, message):
    path = tmp_path / "c.h5"
    save_checkpoint(path, HEADER, _payload(rng))
    _forge(path, **attrs)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_config_inconsistent_with_its_hash_is_named(tmp_path):
    cfg = _tiny()
    net, state = _state(cfg)
    save_state(tmp_path / "c.h5", cfg, state, fresh_progress(), [])
    _forge(tmp_path / "c.h5", config=json.dumps({**cfg.to_dict(), "lr": 0.5}, sort_keys=True))
    with pytest.raises(CheckpointError, match="corrupt .*its config does not match its config hash"):
        load_state(tmp_path / "c.h5", cfg, net, "numpy")
    with pytest.raises(CheckpointError, match="corrupt .*its config does not match its config hash"):
        load_state(tmp_path / "c.h5", dataclasses.replace(cfg, lr=0.5), net, "numpy")


def test_a_checkpoint_is_an_hdf5_file_with_a_sealed_user_block(tmp_path, rng):
    path = tmp_path / "c.h5"
    save_checkpoint(path, HEADER, _payload(rng))
    assert path.read_bytes().startswith(b"refdtp-checkpoint format 2 size ")
    with h5py.File(path, "r") as f:  # HDF5 tools still read it
        assert f.userblock_size == ck.SEAL_SIZE and f.attrs["epoch"] == HEADER["epoch"]


def test_only_keys_that_enter_the_config_hash_are_named(tmp_path):
    cfg = _tiny()
    net, state = _state(cfg)
    save_state(tmp_path / "c.h5", cfg, state, fresh_progress(), [])
    other = dataclasses.replace(cfg, lr=0.5, epochs=50, data_dir="/elsewhere", diagnostics=True)
    with pytest.raises(CheckpointError, match="different configuration") as err:
        load_state(tmp_path / "c.h5", other, net, "numpy")
    keys = str(err.value).split("differing keys: ")[1].split(". Resume")[0]
    assert keys == "lr: 0.02 -> 0.5", str(err.value)
