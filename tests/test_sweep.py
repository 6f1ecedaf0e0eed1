"""``python -m refdtp.sweep``: a tiny sweep on a local Ray, resuming, bit-identity, bad specs."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from refdtp.sweep import cli as sweep_cli
from refdtp.sweep.spec import SpecError, parse_grid, split_values
from refdtp.training.checkpoint import load_checkpoint
from refdtp.training.cli import main as train_main

TINY = ["--preset", "demo", "--steps", "3", "--epochs", "2", "--quiet", "--cpus-per-run", "1"]


def _weights(run_dir) -> dict:
    _, payload = load_checkpoint(run_dir / "checkpoint.h5")
    return {f"{b}.{k}": np.asarray(v) for b, d in payload["W"].items() for k, v in d.items()}


def _argv_of(sweep_dir, name) -> list:
    runs = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
    return next(r["argv"] for r in runs if r["name"] == name)


def test_tiny_sweep_runs_every_point_like_refdtp_train(tmp_path, local_ray):
    out = tmp_path / "sw"
    code = sweep_cli.main(["--out", str(out), "--algorithms", "bp", "ldrl", "--seeds", "0", "1", *TINY])
    assert code == 0
    names = sorted(p.name for p in (out / "runs").iterdir())
    assert names == ["demo-bp-seed0", "demo-bp-seed1", "demo-ldrl-seed0", "demo-ldrl-seed1"]
    for name in names:
        rep = json.loads((out / "runs" / name / "report.json").read_text())
        assert rep["status"] == "completed" and rep["epochs_done"] == 2 and rep["global_step"] == 6
    rows = (out / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 5 and rows[0].startswith("name,group")
    md = (out / "summary.md").read_text()
    assert "| demo-bp | 2 |" in md and "| demo-ldrl | 2 |" in md
    assert (out / "curves.png").stat().st_size > 0
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["spec"]["algorithms"] == ["bp", "ldrl"] and len(spec["runs"]) == 4
    # the same point run by refdtp.train: bit-identical weights
    ref = tmp_path / "ref"
    assert train_main(_argv_of(out, "demo-ldrl-seed1") + ["--out", str(ref), "--quiet"]) == 0
    a, b = _weights(out / "runs" / "demo-ldrl-seed1"), _weights(ref)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_interrupted_sweep_resumes_without_redoing_finished_runs(tmp_path, local_ray):
    out = tmp_path / "sw"
    argv = ["--out", str(out), "--algorithms", "ldrl", "--seeds", "0", "1", "2", "--max-concurrent", "1",
            *TINY]
    seen = []

    def stop_after_first(point, result):
        seen.append(point.name)
        raise KeyboardInterrupt

    assert sweep_cli.main(argv, on_result=stop_after_first) == 130
    first = out / "runs" / seen[0]
    assert json.loads((first / "report.json").read_text())["status"] == "completed"
    stamp = (first / "report.json").stat().st_mtime_ns, (first / "checkpoint.h5").stat().st_mtime_ns
    # a run cut mid-way (as a killed worker leaves it): refdtp.train interrupted at global step 4
    cut = out / "runs" / "demo-ldrl-seed2"

    def interrupt(state, stats):
        if state.global_step == 4:
            raise KeyboardInterrupt

    assert train_main(_argv_of(out, cut.name) + ["--out", str(cut), "--quiet"], on_step=interrupt) == 130
    made = []
    assert sweep_cli.main(argv, on_result=lambda p, r: made.append((p.name, r["resumed"]))) == 0
    assert seen[0] not in [n for n, _ in made]
    assert (cut.name, True) in made
    assert ((first / "report.json").stat().st_mtime_ns, (first / "checkpoint.h5").stat().st_mtime_ns) == stamp
    for name in ("demo-ldrl-seed0", "demo-ldrl-seed1", "demo-ldrl-seed2"):
        assert json.loads((out / "runs" / name / "report.json").read_text())["status"] == "completed"
    ref = tmp_path / "ref"
    assert train_main(_argv_of(out, cut.name) + ["--out", str(ref), "--quiet"]) == 0
    a, b = _weights(cut), _weights(ref)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert sweep_cli.main(argv) == 0  # a third run has nothing to do


def test_failed_run_is_recorded_and_others_go_on(tmp_path, local_ray):
    out = tmp_path / "sw"
    # lr 1e8 diverges at once; lr 0.02 (the preset's) trains
    code = sweep_cli.main(["--out", str(out), "--algorithms", "bp", "--grid", "lr=1e8,0.02", "--seeds", "0",
                           *TINY])
    assert code == 0  # a diverged run is a recorded outcome, not a sweep failure
    rows = {r.split(",")[0]: r for r in (out / "summary.csv").read_text().splitlines()[1:]}
    assert ",diverged,3," in rows["demo-bp-lr=1e8-seed0"]
    assert ",completed,0," in rows["demo-bp-lr=0.02-seed0"]
    assert "diverged" in (out / "summary.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--preset", "demo", "--set", "nokey=1"], "unknown config key"),
    (["--preset", "demo", "--grid", "lr="], "empty list of values"),
    (["--preset", "demo", "--grid", "lr"], "expected KEY=V1,V2"),
    (["--preset", "demo", "--seeds", "1", "--set", "seed=2"], "conflicting options"),
    (["--preset", "demo", "--algorithms", "bp", "--grid", "algorithm=ldrl"], "conflicting options"),
    (["--preset", "demo", "--grid", "lr=0.1", "--set", "lr=0.2"], "conflicting options"),
    (["--preset", "demo", "--gpus-per-run", "1"], "needs --backend cupy"),
    (["--preset", "demo", "--algorithms", "sgd"], "algorithm"),
    ([], "at least one"),
])
def test_bad_specs_exit_2_with_one_line(tmp_path, capsys, extra, message):
    pytest.importorskip("ray")
    assert sweep_cli.main(["--out", str(tmp_path / "sw"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "sw").exists()


def test_changed_spec_is_refused_naming_the_difference(tmp_path, capsys):
    pytest.importorskip("ray")
    out = tmp_path / "sw"
    args = sweep_cli.build_parser().parse_args(["--out", str(out), "--preset", "demo", "--seeds", "0"])
    sweep_cli.prepare(args)
    assert sweep_cli.main(["--out", str(out), "--preset", "demo", "--seeds", "0", "1"]) == 2
    err = capsys.readouterr().err
    assert "seeds: [0] -> [0, 1]" in err


def test_without_ray_the_command_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert sweep_cli.main(["--out", str(tmp_path / "sw"), "--preset", "demo"]) == 2
    assert "pip install 'refdtp[sweep]'" in capsys.readouterr().err


def test_grid_values_split_outside_brackets():
    assert split_values("a, b,[1,2],(3,4)") == ["a", "b", "[1,2]", "(3,4)"]
    assert parse_grid(["channels=[4,8],[8,16]", "lr=0.1"]) == [("channels", ["[4,8]", "[8,16]"]),
                                                               ("lr", ["0.1"])]
    with pytest.raises(SpecError, match="repeated"):
        parse_grid(["lr=0.1,0.1"])
