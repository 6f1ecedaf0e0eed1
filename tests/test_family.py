"""FW-DTP and DDTP-linear (refdtp.family): hand-written derivatives against finite differences
(float64, host), the target formulas, and the train_step / config / checkpoint plumbing."""
from __future__ import annotations

import numpy as np
import pytest

from refdtp import family
from refdtp.algorithms import init_state, train_step
from refdtp.config import Config, build_network
from refdtp.family import ddtp, fwdtp
from refdtp.family.common import chain_sample_jacobian, output_error
from refdtp.family.standardize import BatchStandardize, standardize
from refdtp.networks import mlp
from refdtp.numerical import check_grad, check_jacobian, check_jvp, check_vjp, flat_params
from refdtp.targets import first_target, propagate_targets
from refdtp.training.presets import PRESETS, get_preset

F64 = np.float64


def _rng(k=0):
    return np.random.default_rng(1234 + k)


def _fw_net(bn: bool, widths=(5, 4, 4, 3)):
    return fwdtp.fwdtp_mlp(widths, batch_standardize=bn)


def _fw_problem(bn: bool, B: int = 6, k: int = 0):
    net = _fw_net(bn)
    W, omega = fwdtp.init_params(net, 3 + k, F64, "numpy", scale=0.5)
    x = _rng(k).standard_normal((B, 5))
    y = _rng(k + 1).integers(0, 3, B)
    return net, W, omega, x, y


# -- batch standardisation --------------------------------------------------------

@pytest.mark.parametrize("B", [2, 5])
def test_standardize_jvp_vjp_match_finite_differences(B):
    op = BatchStandardize((4,))
    x = _rng().standard_normal((B, 4)) * 2 + 1
    def f(a):
        return op.forward({}, a)[0]

    check_jvp(f, lambda a, u: op.jvp({}, op.forward({}, a)[1], u), x)
    check_vjp(f, lambda a, w: op.vjp({}, op.forward({}, a)[1], w), x)


def test_standardize_output_has_zero_mean_unit_unbiased_std():
    y = standardize(_rng().standard_normal((7, 3)) * 5 - 2)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(0, ddof=1), 1, rtol=1e-9)


def test_standardize_single_sample_is_zero_with_zero_derivatives():
    op = BatchStandardize((3,))
    y, cache = op.forward({}, np.ones((1, 3)))
    assert np.all(y == 0) and np.all(op.vjp({}, cache, np.ones((1, 3))) == 0)


def test_sample_jacobian_of_plain_chain_matches_finite_differences():
    net, W, omega, x, _ = _fw_problem(bn=False)
    b = net.blocks[1]
    s1 = net.forward(W, x).s[1]
    J = chain_sample_jacobian(b.F, W[b.name], b.forward(W[b.name], s1)[1])
    for i in range(len(x)):
        def f(v, i=i):
            """Block output of sample i with its input replaced by v, the others fixed."""
            return b.forward(W[b.name], np.vstack([s1[:i], v[None], s1[i + 1:]]))[0][i]

        check_jacobian(J[i], f, s1[i])


# -- FW-DTP -----------------------------------------------------------------------

def test_fwdtp_without_bn_targets_equal_refdtp_difference_targets():
    net, W, omega, x, y = _fw_problem(bn=False)
    trace = net.forward(W, x)
    t_N = first_target(trace.logits, y, 0.3)
    ours = fwdtp.propagate(net, omega, trace, t_N, bn=False)
    ref = propagate_targets(net, omega, trace, t_N, "difference")
    for a, b in zip(ours[1:], ref[1:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_fwdtp_feedback_is_tanh_of_linear():
    net, W, omega, x, _ = _fw_problem(bn=False)
    b = net.blocks[2]
    yv = _rng(5).standard_normal((3, 3))
    np.testing.assert_allclose(b.feedback(omega[b.name], yv, ())[0], np.tanh(yv @ omega[b.name]["weight"].T))


@pytest.mark.parametrize("bn", [False, True])
def test_fwdtp_local_grads_match_finite_differences(bn):
    """grads_n = d/dW_n (1/B) sum ||F_n(s_{n-1}; W_n) - t_n||^2 with s_{n-1}, t_n fixed."""
    net, W, omega, x, y = _fw_problem(bn)
    trace = net.forward(W, x)
    grads, targets = fwdtp.forward_grads(net, W, omega, trace, y, 0.3)
    B = len(x)
    for n, b in enumerate(net.blocks, start=1):
        vec, unflat = flat_params(W[b.name])
        def f(v, b=b, n=n, unflat=unflat):
            return ((b.forward(unflat(v), trace.s[n - 1])[0] - targets[n]) ** 2).sum() / B

        check_grad(f, flat_params(grads[b.name])[0], vec)


def test_fwdtp_bn_targets_are_standardised_and_feedback_untrained():
    cfg = _cfg("fwdtp", "fwdtp_mlp_bn")
    net = build_network(cfg, (1, 4, 4), 3)
    st = init_state(cfg, net)
    x = _rng().standard_normal((8, 1, 4, 4)).astype(np.float32)
    y = _rng(1).integers(0, 3, 8)
    trace = net.forward(st.W, x)
    _, t = fwdtp.forward_grads(net, st.W, st.omega, trace, y, cfg.beta)
    np.testing.assert_allclose(t[1].mean(0), 0, atol=1e-5)
    new, stats = train_step(cfg, net, st, x, y, cfg.lr)
    assert st.feedback_opt == {} and new.feedback_opt == {}
    for name in st.omega:
        assert np.array_equal(new.omega[name]["weight"], st.omega[name]["weight"])
    assert any(not np.array_equal(new.W[k]["weight"], st.W[k]["weight"]) for k in st.W)
    assert np.isfinite(stats["forward_loss"]) and new.global_step == 1


def test_fwdtp_conditions_of_constructed_feedback():
    """B = W^T on a linear output block gives A = W D W^T (positive definite); -W^T its negative."""
    net, W, omega, x, _ = _fw_problem(bn=False)
    top = net.blocks[-1].name
    pos = {**omega, top: {"weight": W[top]["weight"].T.copy()}}
    neg = {**omega, top: {"weight": -W[top]["weight"].T.copy()}}
    trace = net.forward(W, x)
    sp = fwdtp.condition_stats(fwdtp.jacobian_products(net, W, pos, trace)[top])
    sn = fwdtp.condition_stats(fwdtp.jacobian_products(net, W, neg, trace)[top])
    assert sp["positive_ratio"] == 1 and sp["min_sym_eig"] > 0 and sp["trace"] > 0
    assert sn["positive_ratio"] == 0 and sn["trace"] < 0


# -- DDTP-linear --------------------------------------------------------------------

def _dd_problem(B: int = 5, k: int = 0):
    net = mlp((5, 4, 4, 3), "tanh")
    W, omega = ddtp.init_params(net, 7 + k, F64, "numpy")
    x = _rng(k).standard_normal((B, 5))
    return net, W, omega, x, _rng(k + 1).integers(0, 3, B)


def test_ddtp_targets_are_direct_difference_targets():
    net, W, omega, x, y = _dd_problem()
    trace = net.forward(W, x)
    _, delta = ddtp.forward_grads(net, W, omega, trace, y, 0.2)
    t_N = trace.s[-1] - 0.2 * output_error(trace.logits, y) / len(x)
    for n, b in enumerate(net.blocks[:-1], start=1):
        Q = omega[b.name]["weight"]
        np.testing.assert_allclose(trace.s[n] + delta[n], trace.s[n] + t_N @ Q.T - trace.s[-1] @ Q.T,
                                   rtol=1e-10, atol=1e-13)


def test_ddtp_local_grads_match_finite_differences():
    net, W, omega, x, y = _dd_problem()
    trace = net.forward(W, x)
    grads, delta = ddtp.forward_grads(net, W, omega, trace, y, 0.2)
    for n, b in enumerate(net.blocks, start=1):
        t_n = trace.s[n] + delta[n]
        vec, unflat = flat_params(W[b.name])
        def f(v, b=b, n=n, t_n=t_n, unflat=unflat):
            return ((b.forward(unflat(v), trace.s[n - 1])[0] - t_n) ** 2).sum() / len(x)

        check_grad(f, flat_params(grads[b.name])[0], vec)


@pytest.mark.parametrize("n", [1, 2])
def test_ddtp_drl_grads_match_finite_differences(n):
    net, W, omega, x, _ = _dd_problem()
    trace = net.forward(W, x)
    name = net.blocks[n - 1].name
    eps = 0.1 * _rng(9).standard_normal(trace.s[n].shape)
    g, loss = ddtp.drl_grads(net, W, omega[name]["weight"], trace, n, eps, 0.1, with_loss=True)
    np.testing.assert_allclose(loss, ddtp.drl_loss(net, W, omega[name]["weight"], trace, n, eps, 0.1))
    check_grad(lambda q: ddtp.drl_loss(net, W, q, trace, n, eps, 0.1), g["weight"], omega[name]["weight"])


def test_ddtp_train_step_updates_feedback_and_respects_pretraining():
    cfg = _cfg("ddtp", "mlp", feedback_pretrain_epochs=1)
    net = build_network(cfg, (1, 4, 4), 3)
    st = init_state(cfg, net)
    assert set(st.omega) == {b.name for b in net.blocks[:-1]} == set(st.feedback_opt)
    x = _rng().standard_normal((8, 1, 4, 4)).astype(np.float32)
    y = _rng(1).integers(0, 3, 8)
    new, stats = train_step(cfg, net, st, x, y, cfg.lr)
    assert all(np.array_equal(new.W[k]["weight"], st.W[k]["weight"]) for k in st.W)  # pretraining epoch
    assert all(not np.array_equal(new.omega[k]["weight"], st.omega[k]["weight"]) for k in st.omega)
    assert {f"feedback_loss/{k}" for k in st.omega} <= set(stats)
    new.epoch = 1
    newer, stats = train_step(cfg, net, new, x, y, cfg.lr)
    assert any(not np.array_equal(newer.W[k]["weight"], new.W[k]["weight"]) for k in st.W)
    assert "forward_loss" in stats


# -- config, presets, networks ------------------------------------------------------------

def _cfg(algorithm, network, **kw):
    base = dict(algorithm=algorithm, network=network, hidden=[6, 6], activation="tanh", dataset="digits",
                normalization="digits", augment=False, optimizer="sgd", lr=0.05, momentum=0.0,
                weight_decay=0.0, beta=0.05, feedback_iterations=[2, 2], feedback_sigma=[0.1, 0.1],
                feedback_lr=[1e-3, 1e-3], feedback_optimizer="adam", seed=0)
    base.update(kw)
    return Config(**base)


def test_family_presets_validate_against_their_networks():
    for name in [k for k, v in PRESETS.items() if v["algorithm"] in family.FAMILY]:
        cfg = get_preset(name)
        shape = {"mnist": (1, 28, 28), "fmnist": (1, 28, 28), "cifar10": (3, 32, 32), "digits": (1, 8, 8)}
        cfg.validate(build_network(cfg, shape[cfg.dataset], 10))


def test_ddtp_needs_one_feedback_entry_per_hidden_block():
    cfg = _cfg("ddtp", "mlp", feedback_lr=[1e-3])
    with pytest.raises(ValueError, match="feedback_lr"):
        cfg.validate(build_network(cfg, (1, 4, 4), 3))


def test_new_fields_at_default_keep_old_config_hash():
    cfg = Config()
    d = cfg.to_dict()
    for k in ("adam_beta1", "feedback_optimizer", "feedback_init_scale", "feedback_pretrain_epochs"):
        d.pop(k)
    import hashlib
    import json
    old = {k: v for k, v in d.items() if k not in ("epochs", "diagnostics", "notes", "data_dir", "source")}
    for k in ("adam_beta2", "adam_eps", "feedback_beta1", "feedback_beta2", "feedback_eps"):
        old.pop(k)
    assert cfg.config_hash() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert Config(feedback_optimizer="adam").config_hash() != cfg.config_hash()


def test_fwdtp_network_shapes_and_bias_free():
    net = fwdtp.fwdtp_mlp((784, 256, 256, 256, 256, 256, 10), batch_standardize=True, in_shape=(1, 28, 28))
    assert len(net) == 6 and net.name == "fwdtp_mlp_bn"
    W, omega = fwdtp.init_params(net, 0, np.float32, "numpy", 1e-3)
    assert all(set(w) == {"weight"} for w in W.values())
    w = W["fc_1"]["weight"].astype(F64)
    np.testing.assert_allclose(w @ w.T, np.eye(256), atol=1e-5)  # orthogonal init
    assert np.abs(omega["fc_3"]["weight"]).max() <= 1e-3


@pytest.mark.parametrize("algorithm,network", [("fwdtp", "fwdtp_mlp"), ("fwdtp", "fwdtp_mlp_bn"),
                                               ("ddtp", "mlp")])
def test_every_family_algorithm_runs_one_step_with_finite_stats(algorithm, network):
    cfg = _cfg(algorithm, network)
    net = build_network(cfg, (1, 4, 4), 3)
    st = init_state(cfg, net)
    x = _rng().standard_normal((8, 1, 4, 4)).astype(np.float32)
    new, stats = train_step(cfg, net, st, x, _rng(1).integers(0, 3, 8), cfg.lr)
    assert all(np.isfinite(v) for v in stats.values()) and 0 <= stats["accuracy"] <= 1
    assert all(a.dtype == np.float32 for blk in new.W.values() for a in blk.values())
    assert any(not np.array_equal(new.W[k]["weight"], st.W[k]["weight"]) for k in st.W)


@pytest.mark.parametrize("algorithm,network", [("fwdtp", "mlp"), ("ddtp", "small_convnet")])
def test_family_algorithm_on_a_foreign_network_is_a_config_error(algorithm, network):
    cfg = _cfg(algorithm, network, channels=[2], hidden=[6])
    net = build_network(cfg, (1, 6, 6), 3)
    with pytest.raises(ValueError, match=f"algorithm '{algorithm}'"):
        cfg.validate(net)
