"""``python -m refdtp.sweep search``: an Optuna search on a local Ray, resuming, divergence, bad spaces."""
from __future__ import annotations

import json
import sys

import pytest

from refdtp.sweep import cli as sweep_cli
from refdtp.sweep import search as search_mod
from refdtp.sweep.space import parse_dimension, parse_space, to_sets
from refdtp.sweep.spec import SpecError

pytest.importorskip("optuna")

TINY = ["--preset", "demo", "--epochs", "1", "--quiet", "--max-concurrent", "2"]
SPACE = ["--space", "lr=log:1e-3:3e-2", "feedback_lr_scale=log:0.1:10"]


def _search(out, *extra, steps: int = 2) -> int:
    return sweep_cli.main(["search", "--out", str(out), *TINY, "--steps", str(steps), *extra])


def _load(out) -> dict:
    return json.loads((out / "search.json").read_text())


def _report(out, number: int) -> dict:
    return json.loads((out / "runs" / f"trial{number:04d}-seed0" / "report.json").read_text())


def test_search_finishes_and_reports_the_best_trial(tmp_path, local_ray):
    out = tmp_path / "s"
    assert _search(out, *SPACE, "--trials", "3") == 0
    data = _load(out)
    assert data["n_finished"] == 3 and data["n_failed"] == 0 and len(data["trials"]) == 3
    values = [t["value"] for t in data["trials"]]
    assert values == sorted(values, reverse=True)  # sorted by objective
    best = data["best"]
    assert best["value"] == max(values) and best["status"] == "completed"
    assert best["value"] == pytest.approx(_report(out, best["number"])["best_test_top1"])
    # each trial is a refdtp.train run whose config holds the sampled values (scale x preset list)
    cfg = json.loads((out / "runs" / f"trial{best['number']:04d}-seed0" / "config.json").read_text())
    cfg = cfg.get("config", cfg)
    assert cfg["lr"] == pytest.approx(best["params"]["lr"], rel=1e-5)
    scale = best["params"]["feedback_lr_scale"]
    assert cfg["feedback_lr"] == pytest.approx([8e-3 * scale, 0.18 * scale], rel=1e-5)
    md = (out / "search.md").read_text()
    assert f"**best: trial {best['number']}, best_test_top1 {100 * best['value']:.2f} %**" in md
    assert "3 finished trial(s), 0 failed" in md and (out / "study.db").is_file()
    # a new study starts from the preset's own values (lr 0.02, every _scale 1)
    first = next(t for t in data["trials"] if t["number"] == 0)
    assert first["params"] == {"lr": 0.02, "feedback_lr_scale": 1.0} and first["baseline"]
    assert "| 0 (preset) |" in md


def test_rerun_continues_without_rerunning_finished_trials(tmp_path, local_ray):
    out = tmp_path / "s"
    assert _search(out, *SPACE, "--trials", "2") == 0
    stamps = {n: (out / "runs" / f"trial000{n}-seed0" / "report.json").stat().st_mtime_ns for n in (0, 1)}
    assert _search(out, *SPACE, "--trials", "2") == 0  # nothing to do
    assert _search(out, *SPACE, "--trials", "3") == 0  # one more
    data = _load(out)
    assert data["n_finished"] == 3 and sorted(t["number"] for t in data["trials"]) == [0, 1, 2]
    for n, stamp in stamps.items():
        assert (out / "runs" / f"trial000{n}-seed0" / "report.json").stat().st_mtime_ns == stamp


def test_interrupted_trial_whose_run_finished_is_scored_without_running_again(tmp_path, local_ray,
                                                                               monkeypatch):
    out = tmp_path / "s"
    real_finish = search_mod.Search.finish

    def interrupt(self, number):  # the driver dies after the run ended, before the study was told
        raise KeyboardInterrupt
    monkeypatch.setattr(search_mod.Search, "finish", interrupt)
    assert _search(out, *SPACE, "--trials", "1", "--max-concurrent", "1") == 130
    assert _report(out, 0)["status"] == "completed"
    assert _load(out)["n_running"] == 1
    log = out / "runs" / "trial0000-seed0" / "train.log"
    before = (log.read_text(), _report(out, 0))
    monkeypatch.setattr(search_mod.Search, "finish", real_finish)
    assert _search(out, *SPACE, "--trials", "1", "--max-concurrent", "1") == 0
    data = _load(out)
    assert data["n_finished"] == 1 and data["n_running"] == 0 and len(data["trials"]) == 1
    assert (log.read_text(), _report(out, 0)) == before  # not run again
    assert data["best"]["value"] == pytest.approx(before[1]["best_test_top1"])


def test_diverging_trial_is_recorded_not_fatal(tmp_path, local_ray):
    out = tmp_path / "s"
    assert _search(out, "--space", "lr=log:1e12:1e13", "--trials", "1", steps=4) == 0  # NaN at step 3
    data = _load(out)
    (trial,) = data["trials"]
    assert trial["state"] == "COMPLETE" and trial["status"] == "diverged" and trial["value"] == 0.0
    assert "diverged" in trial["message"] and data["n_failed"] == 1
    assert "| diverged |" in (out / "search.md").read_text()


def test_changed_space_is_refused_naming_the_difference(tmp_path, local_ray, capsys, monkeypatch):
    out = tmp_path / "s"
    assert _search(out, "--space", "lr=log:1e-3:3e-2", "--trials", "1") == 0
    capsys.readouterr()
    assert _search(out, "--space", "lr=log:1e-3:1e-1", "beta=float:0.3:0.9", "--trials", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert "space lr: log:0.001:0.03 -> log:0.001:0.1" in err[0]
    assert "space beta: absent -> float:0.3:0.9" in err[0]
    assert _load(out)["n_finished"] == 1
    # an edited preset is another search too (its runs and its _scale bases differ)
    from refdtp.training import presets
    monkeypatch.setitem(presets.PRESETS, "demo", dict(presets.PRESETS["demo"], momentum=0.8))
    assert _search(out, "--space", "lr=log:1e-3:3e-2", "--trials", "2") == 2
    assert "base_config_hash" in capsys.readouterr().err


@pytest.mark.parametrize("space, message", [
    (["lr=log:0:1"], "needs LOW > 0"),
    (["lr=log:1e-2:1e-3"], "LOW must be < HIGH"),
    (["lr=uniform:0.1:1"], "unknown kind"),
    (["lr=log:1e-3"], "expected KIND:LOW:HIGH"),
    (["lr=log:a:1"], "not a number"),
    (["batch_size=int:1.5:8"], "not an integer"),
    (["lr"], "expected NAME=KIND:LOW:HIGH"),
    (["nonsense=float:0:1"], "not a Config field"),
    (["feedback_lr=log:1e-3:1"], "per-block list"),
    (["lr_scale=log:0.1:10"], "not a non-empty list"),
    (["lr=log:1e-3:1e-2", "lr=log:1e-3:1e-1"], "more than once"),
    (["feedback_lr=log:1e-3:1", "feedback_lr_scale=log:0.1:1"], "both directly and as a _scale"),
    (["momentum=float:0.5:1.5"], "high end of the space is refused"),
    ([], "needs at least one dimension"),
])
def test_bad_spaces_exit_2_with_one_line(tmp_path, capsys, space, message):
    pytest.importorskip("ray")
    argv = ["search", "--out", str(tmp_path / "s"), "--preset", "demo", "--trials", "2"]
    assert sweep_cli.main(argv + (["--space", *space] if space else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("extra, message", [
    (["--space", "lr=log:1e-3:1e-2", "--set", "lr=0.01"], "searched and set by --set"),
    (["--space", "lr=log:1e-3:1e-2", "--trials", "0"], "--trials must be > 0"),
])
def test_bad_options_exit_2(tmp_path, capsys, extra, message):
    pytest.importorskip("ray")
    argv = ["search", "--out", str(tmp_path / "s"), "--preset", "demo", "--trials", "2", *extra]
    assert sweep_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_space_file_and_syntax(tmp_path):
    f = tmp_path / "space.json"
    f.write_text(json.dumps({"lr": "log:1e-4:1e-1", "feedback_iterations": "int:1:8"}))
    dims = parse_space(["feedback_sigma_scale=float:0.5:2"], str(f))
    assert [(d.name, d.kind, d.low, d.high) for d in dims] == [
        ("lr", "log", 1e-4, 1e-1), ("feedback_iterations", "int", 1, 8),
        ("feedback_sigma_scale", "float", 0.5, 2.0)]
    assert dims[2].field == "feedback_sigma" and dims[2].text() == "float:0.5:2.0"
    cfg = {"lr": 0.05, "feedback_sigma": [0.4, 0.08], "feedback_iterations": 3}
    sets = to_sets([dims[0], parse_dimension("feedback_iterations", "int:1:8"), dims[2]],
                   {"lr": 0.01, "feedback_iterations": 5, "feedback_sigma_scale": 0.5}, cfg)
    assert sets == ["lr=0.01", "feedback_iterations=5", "feedback_sigma=[0.2,0.04]"]
    init = parse_dimension("feedback_init_scale", "log:1e-4:1e-1")  # a Config field, not a factor
    assert not init.is_scale and init.field == "feedback_init_scale"
    assert to_sets([init], {"feedback_init_scale": 0.01}, {"feedback_init_scale": 1e-3}) == [
        "feedback_init_scale=0.01"]
    f.write_text("[1, 2]")
    with pytest.raises(SpecError, match="expected a JSON object"):
        parse_space([], str(f))


def test_without_optuna_the_command_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    argv = ["search", "--out", str(tmp_path / "s"), "--preset", "demo", "--trials", "1",
            "--space", "lr=log:1e-3:1e-2"]
    assert sweep_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'refdtp[sweep]'" in err[0]
