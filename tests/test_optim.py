"""refdtp.optim: SGD and Adam reproduce hand-computed PyTorch-convention steps; schedules."""
import math

import numpy as np
import pytest

from refdtp.optim import (
    SGD,
    Adam,
    ConstantLR,
    CosineAnnealingLR,
    StepLR,
    flatten,
    make_optimizer,
    make_schedule,
    unflatten,
)


def run(opt, params, grad_list, lr=None):
    state = opt.init_state(params)
    for g in grad_list:
        params, state = opt.step(params, g, state, lr)
    return params, state


def one(value):
    return {"w": np.array([value])}


# -- SGD -------------------------------------------------------------------------------

def test_sgd_momentum_first_step_uses_the_gradient_as_buffer_then_accumulates():
    # lr 0.1, mu 0.9, wd 0.01, w0 = 1, g = 0.5 twice:
    # step 1: g' = 0.51, m = 0.51 (no dampening of the first buffer), w = 1 - 0.051 = 0.949
    # step 2: g' = 0.5 + 0.00949 = 0.50949, m = 0.459 + 0.50949 = 0.96849, w = 0.949 - 0.096849
    opt = SGD(0.1, momentum=0.9, weight_decay=0.01)
    p1, s1 = run(opt, one(1.0), [one(0.5)])
    assert p1["w"][0] == pytest.approx(0.949, rel=1e-14)
    assert s1["momentum"]["w"][0] == pytest.approx(0.51, rel=1e-14) and s1["step"] == 1
    p2, s2 = run(opt, one(1.0), [one(0.5), one(0.5)])
    assert s2["momentum"]["w"][0] == pytest.approx(0.96849, rel=1e-14)
    assert p2["w"][0] == pytest.approx(0.852151, rel=1e-14)


def test_sgd_nesterov_steps():
    # step 1: m = 0.51, d = 0.51 + 0.9*0.51 = 0.969, w = 0.9031
    # step 2: g' = 0.5 + 0.009031 = 0.509031, m = 0.459 + 0.509031 = 0.968031,
    #         d = 0.509031 + 0.9*0.968031 = 1.3802589, w = 0.9031 - 0.13802589 = 0.76507411
    opt = SGD(0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    assert run(opt, one(1.0), [one(0.5)])[0]["w"][0] == pytest.approx(0.9031, rel=1e-14)
    assert run(opt, one(1.0), [one(0.5)] * 2)[0]["w"][0] == pytest.approx(0.76507411, rel=1e-13)


def test_sgd_dampening_applies_from_the_second_step():
    # step 2: m = 0.9*0.51 + (1 - 0.5)*0.50949 = 0.713745, w = 0.949 - 0.0713745 = 0.8776255
    opt = SGD(0.1, momentum=0.9, weight_decay=0.01, dampening=0.5)
    assert run(opt, one(1.0), [one(0.5)] * 2)[0]["w"][0] == pytest.approx(0.8776255, rel=1e-13)


def test_sgd_plain_and_lr_override(rng):
    w, g = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    new, state = SGD(0.5).step({"w": w}, {"w": g}, SGD(0.5).init_state({"w": w}))
    np.testing.assert_allclose(new["w"], w - 0.5 * g, rtol=1e-15)
    assert state["momentum"] == {}
    new, _ = SGD(0.5).step({"w": w}, {"w": g}, {"step": 0, "momentum": {}}, lr=0.25)
    np.testing.assert_allclose(new["w"], w - 0.25 * g, rtol=1e-15)


def test_sgd_rejects_invalid_hyperparameters_and_mismatched_keys():
    with pytest.raises(ValueError, match="lr"):
        SGD(-1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(0.1, momentum=0.0, nesterov=True)
    opt = SGD(0.1)
    with pytest.raises(ValueError, match="do not match"):
        opt.step({"a": np.ones(1)}, {"b": np.ones(1)}, opt.init_state({}))


# -- Adam ----------------------------------------------------------------------------------

def adam_reference(w, grads, lr, b1, b2, eps, wd):
    """torch.optim.Adam's documented algorithm, scalar by scalar (L2 decay added to g)."""
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        g = g + wd * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = math.sqrt(v) / math.sqrt(1 - b2 ** t) + eps
        w = w - (lr / (1 - b1 ** t)) * m / denom
    return w, m, v


def test_adam_first_step_is_lr_times_sign_with_bias_correction():
    # Step 1: m_hat = g', v_hat = g'^2, so w moves by lr * g'/(|g'| + eps): 0.01 * 0.6/(0.6 + 1e-8).
    new, state = run(Adam(lr=0.01, weight_decay=0.1), one(1.0), [one(0.5)])
    assert new["w"][0] == pytest.approx(1 - 0.1 * 0.06 / (0.6 + 1e-8), rel=1e-14)
    assert state["exp_avg"]["w"][0] == pytest.approx(0.06, rel=1e-14)
    assert state["exp_avg_sq"]["w"][0] == pytest.approx(0.00036, rel=1e-12)


def test_adam_matches_pytorch_algorithm_over_several_steps(rng):
    grads = rng.standard_normal((5, 4))
    w0 = rng.standard_normal(4)
    opt = Adam(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
    new, state = run(opt, {"w": w0}, [{"w": g} for g in grads])
    for i in range(4):
        w, m, v = adam_reference(w0[i], grads[:, i], 0.02, 0.8, 0.99, 1e-6, 0.05)
        assert new["w"][i] == pytest.approx(w, rel=1e-13)
        assert state["exp_avg"]["w"][i] == pytest.approx(m, rel=1e-12)
        assert state["exp_avg_sq"]["w"][i] == pytest.approx(v, rel=1e-12)
    assert state["step"] == 5
    with pytest.raises(ValueError, match="betas"):
        Adam(betas=(1.0, 0.9))


@pytest.mark.parametrize("opt", [SGD(0.1, momentum=0.9, weight_decay=0.1, nesterov=True),
                                 Adam(lr=0.1, weight_decay=0.1)], ids=["sgd", "adam"])
def test_optimizer_steps_are_pure(opt, rng):
    params = {"a": rng.standard_normal((2, 3)), "b": rng.standard_normal(3)}
    grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    state = opt.init_state(params)
    p1, s1 = opt.step(params, grads, state)   # builds the momentum buffers
    snapshot = [{k: v.copy() for k, v in d.items()} for d in (params, grads, p1)]
    s1_copy = {k: ({n: a.copy() for n, a in v.items()} if isinstance(v, dict) else v) for k, v in s1.items()}
    p2, s2 = opt.step(p1, grads, s1)
    for before, after in zip(snapshot, (params, grads, p1), strict=True):
        for k in before:
            np.testing.assert_array_equal(before[k], after[k])
    for k, v in s1_copy.items():
        if isinstance(v, dict):
            for n in v:
                np.testing.assert_array_equal(v[n], s1[k][n])
        else:
            assert s1[k] == v
    assert not np.array_equal(p2["a"], p1["a"])


def test_make_optimizer_and_schedule_by_name():
    assert isinstance(make_optimizer("sgd", lr=0.1), SGD)
    assert isinstance(make_optimizer("adam", lr=0.1), Adam)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop", lr=0.1)
    assert isinstance(make_schedule("cosine", 0.1, T_max=3), CosineAnnealingLR)
    assert make_schedule("constant", 0.1).lr_at(50) == 0.1
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("linear", 0.1)


def test_flatten_unflatten_round_trip():
    nested = {"conv_0": {"weight": np.ones(2), "bias": np.zeros(1)}, "fc.x": {"weight": np.ones(3)}}
    flat = flatten(nested)
    assert sorted(flat) == ["conv_0.bias", "conv_0.weight", "fc.x.weight"]
    back = unflatten(flat)
    assert back.keys() == nested.keys() and back["fc.x"]["weight"] is nested["fc.x"]["weight"]


# -- schedules ------------------------------------------------------------------------------

def test_cosine_annealing_matches_closed_form_up_to_and_past_t_max():
    base, T, lo = 0.05, 85, 1e-5
    sched = CosineAnnealingLR(base, T, lo)
    for e in range(0, 90):
        closed = lo + (base - lo) * (1 + math.cos(math.pi * e / T)) / 2
        assert sched.lr_at(e) == pytest.approx(closed, rel=1e-9, abs=1e-15), f"epoch {e}"
    assert sched.lr_at(0) == base
    assert sched.lr_at(T) == pytest.approx(lo, rel=1e-9)
    assert sched.lr_at(89) == pytest.approx(2.83e-4, rel=2e-3)  # rising again after T_max
    assert sched.lr_at(89) > sched.lr_at(86) > sched.lr_at(85)
    with pytest.raises(ValueError, match="T_max"):
        CosineAnnealingLR(0.1, 0)


def test_step_lr_decays_by_gamma_every_step_size_epochs():
    sched = StepLR(0.1, step_size=30, gamma=0.1)
    assert [sched.lr_at(e) for e in (0, 29, 30, 59, 60, 90)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.0001], rel=1e-12)
    assert ConstantLR(0.3).lr_at(7) == 0.3
