"""refdtp.bench.profile: the per-block and per-kind breakdown of one step (structure only: a
command that prints figures, never a timed test)."""
import numpy as np
import pytest

from refdtp.algorithms import init_state
from refdtp.bench.profile import KINDS, format_profile, kind_of, profile_step
from refdtp.config import Config, build_network


@pytest.mark.parametrize("filename, function, kind", [
    ("/x/refdtp/ops/conv.py", "im2col_padded", "im2col/col2im"),
    ("/x/refdtp/ops/conv.py", "conv2d", "GEMM"),
    ("/x/refdtp/ops/winograd.py", "input_transform", "Winograd transforms"),
    ("/x/refdtp/ops/winograd.py", "conv2d", "GEMM"),
    ("/x/refdtp/ldrl/winograd_plan.py", "grads", "GEMM"),
    ("/x/refdtp/ldrl/conv_pool.py", "grads", "GEMM"),
    ("/x/refdtp/ldrl/conv_pool.py", "_scatter_features", "pool/unpool"),
    ("/x/refdtp/ops/pool.py", "forward", "pool/unpool"),
    ("/x/refdtp/activations.py", "value", "activation"),
    ("~", "<method 'standard_normal' of 'numpy.random._generator.Generator' objects>", "noise generation"),
    ("/x/refdtp/optim.py", "step", "optimiser"),
    ("/x/refdtp/algorithms.py", "_train_step", "Python and other"),
])
def test_functions_are_grouped_by_kind_of_work(filename, function, kind):
    assert kind_of(filename, function) == kind


@pytest.mark.parametrize("algorithm", ["ldrl", "bp"])
def test_profile_step_reports_every_block_and_kind_and_leaves_the_state_alone(algorithm):
    cfg = Config(algorithm=algorithm, channels=[2, 2, 3, 3, 4], feedback_iterations=[2] * 5, augment=False)
    net = build_network(cfg, (3, 32, 32), 10)
    state = init_state(cfg, net)
    before = {k: v.copy() for k, v in state.W["conv_1"].items()}
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 4)
    result = profile_step(cfg, net, state, x, y, 0.05, lambda: None)
    assert list(result["blocks"]) == net.names and list(result["kinds"]) == list(KINDS)
    assert sum(result["kinds"].values()) <= result["profiled"] * 1.05 + 1e-3
    feedback = [row["feedback"] for row in result["blocks"].values()]
    assert feedback[0] == 0.0
    assert all(f > 0 for f in feedback[1:]) if algorithm == "ldrl" else not any(feedback)
    assert all(row["forward"] > 0 for row in result["blocks"].values())
    assert all(np.array_equal(v, before[k]) for k, v in state.W["conv_1"].items())
    assert not any(m in vars(b) for b in net.blocks for m in ("forward", "feedback"))  # wrappers removed
    text = format_profile(algorithm, result)
    assert all(name in text for name in net.names) and "top functions" in text


def test_bench_profile_flag_prints_both_tables_and_writes_json(tmp_path, capsys):
    import json

    from refdtp.bench.__main__ import main
    out = tmp_path / "p.json"
    assert main(["--profile", "--batch", "4", "--width-scale", "0.0625", "--iter-scale", "0.05",
                 "--gemm-size", "64", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ldrl:" in text and "bp:" in text and "the step's FLOPs at the measured GEMM rate" in text
    data = json.loads(out.read_text())
    assert set(data["profile"]) == {"ldrl", "bp"} and "kinds" in data["profile"]["ldrl"]
