"""``python -m refdtp.bench``'s control flow on the CPU, with a fake PyTorch peer (torch is not
installed here): both peer variants interleaved with refdtp, ratios reported, and a peer that
fails (missing, or a CPU-only PyTorch asked for CUDA) reported without losing refdtp's figures."""
import json
import types

import pytest

from refdtp.bench import __main__ as bench

TINY = ["--width-scale", "0.03", "--iter-scale", "0.02", "--batch", "2", "--steps", "2", "--warmup", "1",
        "--gemm-size", "32"]


def fake_peer(calls: list, fail_at: str | None = None):
    """A stand-in for refdtp.bench.torch_peer that records the order of the steps."""
    def make_peer(*args, device, variant):
        def step(alg):
            def fn(x, y):
                calls.append((variant, alg))
                if fail_at == f"{variant}/{alg}":
                    raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return fn
        return types.SimpleNamespace(ldrl=step("ldrl"), bp=step("bp"))

    def as_tensors(x, y, device):
        if fail_at == "to_device":
            raise AssertionError("Torch not compiled with CUDA enabled")
        return x, y
    return types.SimpleNamespace(device_for=lambda b: "cpu", as_tensors=as_tensors, make_peer=make_peer,
                                 synchronize=lambda d: None, threads=lambda: 1,
                                 step_peak_bytes=lambda step, device: step())


def run_bench(monkeypatch, tmp_path, capsys, peer):
    monkeypatch.setattr(bench, "load_peer_module", peer)
    out = tmp_path / "bench.json"
    assert bench.main(TINY + ["--peer", "torch", "--json", str(out)]) == 0
    return json.loads(out.read_text()), capsys.readouterr()


def test_both_peer_variants_are_timed_interleaved_with_refdtp(monkeypatch, tmp_path, capsys):
    calls = []
    real = bench.refdtp_steps

    def spy(*a):
        return {alg: ((lambda s=s, alg=alg: (calls.append(("refdtp", alg)), s[0]())), s[1])
                for alg, s in real(*a).items()}
    monkeypatch.setattr(bench, "refdtp_steps", spy)
    peer = fake_peer(calls)
    res, out = run_bench(monkeypatch, tmp_path, capsys, lambda: peer)
    assert set(res) >= {"refdtp", "official", "competent"} and "peer_error" not in res
    assert "bp" not in res["competent"]
    for impl in ("refdtp", "official", "competent"):
        r = res[impl]["ldrl"]
        assert r["min_s"] <= r["median_s"] <= r["max_s"] and len(r["times_s"]) == 2
    # one warm-up round and two timed rounds; each round runs every implementation once, in turn
    one_round = [("refdtp", "ldrl"), ("refdtp", "bp"), ("official", "ldrl"), ("official", "bp"),
                 ("competent", "ldrl")]
    assert calls[:15] == one_round * 3
    ratio = res["refdtp"]["ldrl"]["median_s"] / res["competent"]["ldrl"]["median_s"]
    assert f"{ratio:.2f}" in out.out and "TF32 off" in out.out


def test_a_cpu_only_torch_is_reported_and_refdtp_figures_survive(monkeypatch, tmp_path, capsys):
    res, out = run_bench(monkeypatch, tmp_path, capsys, lambda: fake_peer([], "to_device"))
    assert "Torch not compiled with CUDA" in res["peer_error"]
    assert set(res["refdtp"]) == {"ldrl", "bp"} and res["refdtp"]["ldrl"]["peak_bytes"] > 0
    assert "Torch not compiled with CUDA" in out.out and "refdtp" in out.out


def test_missing_torch_and_a_peer_failing_mid_run_are_reported(monkeypatch, tmp_path, capsys):
    def missing():
        raise ImportError("No module named 'torch'")
    res, _ = run_bench(monkeypatch, tmp_path, capsys, missing)
    assert "No module named 'torch'" in res["peer_error"] and "ldrl" in res["refdtp"]
    res, _ = run_bench(monkeypatch, tmp_path, capsys, lambda: fake_peer([], "competent/ldrl"))
    assert "illegal memory access" in res["step_errors"]["competent/ldrl"]
    assert "ldrl" in res["official"] and "ldrl" in res["refdtp"]


def test_competent_peer_flops_drop_one_forward_per_feedback_iteration():
    from refdtp.config import build_network
    from refdtp.training.presets import get_preset
    cfg = get_preset("cifar10-ldrl")
    net = build_network(cfg, (3, 32, 32), 10)
    C = bench.weight_layer_flops(net, 4)
    its = cfg.feedback_iterations
    diff = bench.ldrl_peer_step_flops(net, 4, its) - bench.competent_peer_flops(net, 4, its)
    assert diff == sum(k * c for k, c in zip(its, C[1:], strict=True)) > 0


def test_real_cpu_torch_asked_for_cuda_is_caught_with_its_reason():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("checks a CPU-only PyTorch")
    import numpy as np
    args = bench.parse_args(TINY + ["--backend", "cupy", "--peer", "torch"])
    cfg, net = _tiny_net()
    steps, _, err = bench.peer_steps(args, cfg, net, np.zeros((2, 3, 32, 32), np.float32), np.zeros(2, int))
    assert steps == {} and err and ("CUDA" in err or "cuda" in err)


def _tiny_net():
    from refdtp.config import build_network
    from refdtp.training.presets import get_preset
    cfg = get_preset("cifar10-ldrl")
    cfg.channels = bench.scaled_channels(cfg.channels, 0.03)
    cfg.feedback_iterations = bench.scaled_iterations(cfg.feedback_iterations, 0.02)
    return cfg, build_network(cfg, (3, 32, 32), 10)


def test_competent_peer_changes_nothing_but_the_clean_index_rerun():
    torch = pytest.importorskip("torch")
    from refdtp.bench import torch_peer
    cfg, net = _tiny_net()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(4)
    params = {}
    for variant in torch_peer.VARIANTS:
        peer = torch_peer.make_peer(cfg.channels, 10, cfg.feedback_iterations, cfg.feedback_sigma,
                                    cfg.feedback_lr, variant=variant)
        torch.manual_seed(1)  # the same noise for both
        peer.ldrl(x, y)
        params[variant] = [p.detach().clone() for m in peer.net.convs + peer.net.fb for p in m.parameters()]
    for a, b in zip(params["official"], params["competent"], strict=True):
        assert torch.equal(a, b)


def test_torch_peer_module_switches_tf32_off_and_has_both_variants():
    pytest.importorskip("torch")
    import torch

    from refdtp.bench import torch_peer
    torch_peer.configure()
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert set(torch_peer.VARIANTS) == {"official", "competent"}
