"""The GPU run script (refdtp.bench.gpu_check) exercised on the CPU: its plan, its per-stage
time limits and budget, its output folder, and a tiny NumPy run of the fast stages."""
import json

from refdtp.bench import gpu_check


def test_dry_run_plans_every_stage_and_skips_cifar_without_data(capsys, tmp_path):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("env", "warmup", "pytest", "theory", "bench", "train-ldrl", "train-drl", "sweep"):
        assert name in out
    assert "--peer torch" in out and "REFDTP" not in out and "-m gpu" in out
    assert "cifar10-ldrl" in out and "SKIP (no CIFAR-10" in out
    assert sum(gpu_check.LIMITS[k] for k in ("env", "warmup", "pytest", "theory", "bench", "sweep")) \
        + 5 * gpu_check.LIMITS["train"] + 2 * gpu_check.LIMITS["cifar"] <= 11 * 60 + 60


def test_cifar_stages_run_when_the_data_dir_holds_cifar10(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    args = gpu_check.parse_args(["--data-dir", str(tmp_path)])
    stages = {s.name: s for s in gpu_check.plan(args, tmp_path / "out")}
    assert stages["cifar10-ldrl"].skip is None and stages["cifar10-bp"].skip is None
    assert "--gpus-per-run" in stages["sweep"].cmd and stages["pytest"].env == {"REFDTP_REQUIRE_GPU": "1"}


def test_sweep_stage_is_skipped_when_the_module_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "sweep_available", lambda: False)
    stages = {s.name: s for s in gpu_check.plan(gpu_check.parse_args([]), tmp_path)}
    assert "not installed" in stages["sweep"].skip


def test_tiny_numpy_run_writes_logs_and_summary_under_OUT(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    rc = gpu_check.main(["--backend", "numpy", "--tiny", "--stages", "env", "warmup", "bench"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert rc == 0 and list(summary) == ["env", "warmup", "bench"]
    assert all(r["rc"] == 0 and not r["timed_out"] for r in summary.values())
    env = (tmp_path / "00-env.log").read_text()
    assert '"usable": false' in env and "unusable_reason" in env
    warm = json.loads((tmp_path / "01-warmup.log").read_text().split("\n", 1)[1].rsplit("[gpu_check]", 1)[0])
    assert set(warm) >= {"ldrl", "bp", "dtp", "tp", "drl"}
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert "ldrl" in bench["refdtp"] and ("peer_error" in bench or "ldrl" in bench["competent"])


def test_a_stage_over_its_limit_is_stopped_and_reported_and_the_budget_skips_the_rest(tmp_path, capsys):
    rc = gpu_check.main(["--backend", "numpy", "--tiny", "--out", str(tmp_path), "--stages", "env", "warmup",
                         "--limit", "env=0.01"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert rc == 1 and summary["env"]["timed_out"] and summary["warmup"]["rc"] == 0
    rc = gpu_check.main(["--backend", "numpy", "--tiny", "--out", str(tmp_path / "b"), "--budget", "0",
                         "--stages", "env"])
    assert "budget spent" in json.loads((tmp_path / "b" / "summary.json").read_text())["env"]["skipped"]
