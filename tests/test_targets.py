"""refdtp.targets: first target, difference/TP propagation, the block-local forward loss
and its gradients; the exact last layer and the oracle-feedback limit beta -> 0."""
import numpy as np
import pytest

from refdtp import numerical as nm
from refdtp.backprop import cross_entropy_gradients
from refdtp.networks import mlp, simple_vgg, small_convnet
from refdtp.optim import flatten, unflatten
from refdtp.targets import (
    dtp_forward_grads,
    first_target,
    forward_loss,
    forward_loss_grads,
    propagate_targets,
)

BETAS = np.logspace(-4, -2, 5)


def setup(net, seed=0, B=3, symmetric=False):
    rng = np.random.default_rng(seed)
    W, omega = net.init(seed, np.float64, symmetric=symmetric)
    x = rng.standard_normal((B, *net.in_shape))
    labels = rng.integers(0, net.num_classes, B)
    return W, omega, x, labels, net.forward(W, x)


def detached_block_losses(net, W, trace, targets):
    """l_n(W_n) = (1/2B) ||F_n(s_{n-1}; W_n) - t_n||^2 with the block input s_{n-1} frozen."""
    B = trace.s[0].shape[0]
    return [0.5 * np.sum((b.forward(W[b.name], trace.s[n - 1])[0] - targets[n]) ** 2) / B
            for n, b in enumerate(net.blocks, start=1)]


def flat_in_order(grads, W):
    g = flatten(grads)
    return np.concatenate([g[k].ravel() for k in flatten(W)])


# -- first target and propagation --------------------------------------------------------

def test_first_target_is_logits_minus_beta_per_sample_ce_gradient(rng):
    z = 3 * rng.standard_normal((4, 5))
    y = rng.integers(0, 5, 4)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected = z - 0.7 * (p - np.eye(5)[y])  # sum-reduced CE: no 1/B
    nm.assert_allclose(first_target(z, y, 0.7), expected, rtol=1e-14, atol=1e-15, name="t_N")


@pytest.mark.parametrize("make", [lambda: mlp((5, 4, 4, 3)), lambda: small_convnet(pool="max"),
                                  lambda: simple_vgg(channels=(3, 4), in_shape=(2, 8, 8))],
                         ids=["mlp", "small_convnet", "simple_vgg"])
def test_target_at_the_output_gives_targets_equal_to_activations_exactly(make):
    """G(h) - G(h) == 0 exactly, so t_n = s_n propagates to t_{n-1} = s_{n-1} bit for bit."""
    net = make()
    W, omega, _, _, trace = setup(net)
    targets = propagate_targets(net, omega, trace, trace.s[-1].copy())
    assert targets[0] is None
    for n in range(1, len(net) + 1):
        np.testing.assert_array_equal(targets[n], trace.s[n], err_msg=f"t_{n} != s_{n}")
        block = net.blocks[n - 1]
        route = block.route(trace.caches[n - 1])
        assert not np.any(block.feedback_difference(omega[block.name], trace.s[n], trace.s[n], route))


def test_difference_rule_and_tp_rule_by_hand():
    net = mlp((4, 5, 3), activation="tanh")
    W, omega, x, labels, trace = setup(net)
    t_N = first_target(trace.logits, labels, 0.5)
    top = net.blocks[1]
    route = top.route(trace.caches[1])

    def G(v):
        """The top block's feedback map G_2 (no difference correction)."""
        return top.feedback(omega["fc_1"], v, route)[0]

    dtp = propagate_targets(net, omega, trace, t_N, "difference")
    nm.assert_allclose(dtp[1], trace.s[1] + G(t_N) - G(trace.s[2]), rtol=1e-13, atol=1e-15, name="DTP t_1")
    tp = propagate_targets(net, omega, trace, t_N, "tp")
    nm.assert_allclose(tp[1], G(t_N), rtol=1e-14, name="TP t_1")
    np.testing.assert_array_equal(tp[2], t_N)
    with pytest.raises(ValueError, match="target rule"):
        propagate_targets(net, omega, trace, t_N, "gn")


# -- forward loss ----------------------------------------------------------------------------

def test_forward_loss_is_sum_of_block_half_squared_errors_over_batch(rng):
    net = mlp((4, 5, 3))
    W, omega, x, labels, trace = setup(net)
    targets = [None] + [s + rng.standard_normal(s.shape) for s in trace.s[1:]]
    expected = sum(0.5 * np.sum((trace.s[n] - targets[n]) ** 2) for n in (1, 2)) / 3
    assert float(forward_loss(trace, targets)) == pytest.approx(expected, rel=1e-14)
    assert float(forward_loss(trace, targets)) == pytest.approx(
        sum(detached_block_losses(net, W, trace, targets)), rel=1e-13)


@pytest.mark.parametrize("make", [lambda: mlp((5, 4, 4, 3)), lambda: small_convnet(),
                                  lambda: simple_vgg(channels=(3, 4), in_shape=(2, 8, 8))],
                         ids=["mlp", "small_convnet", "simple_vgg"])
def test_forward_loss_grads_match_finite_differences_with_targets_frozen(make):
    net = make()
    W, omega, x, labels, trace = setup(net)
    _, targets = dtp_forward_grads(net, W, omega, trace, labels, beta=0.5)
    grads = forward_loss_grads(net, W, trace, targets)
    vec, unflat = nm.flat_params(flatten(W))

    def summed(v):
        return sum(detached_block_losses(net, unflatten(unflat(v)), trace, targets))

    nm.check_grad(summed, flat_in_order(grads, W), vec, directional=vec.size > 400, rtol=1e-6)


def test_block_losses_are_independent_when_inputs_are_detached(rng):
    """Perturbing W_m changes only block m's loss term; its gradient is block m's alone."""
    net = mlp((5, 4, 4, 3), activation="tanh")
    W, omega, x, labels, trace = setup(net)
    _, targets = dtp_forward_grads(net, W, omega, trace, labels, beta=0.5)
    base = detached_block_losses(net, W, trace, targets)
    grads = forward_loss_grads(net, W, trace, targets)
    for m, name in enumerate(net.names):
        W2 = dict(W, **{name: {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in W[name].items()}})
        moved = detached_block_losses(net, W2, trace, targets)
        for n in range(len(net)):
            if n == m:
                assert moved[n] != base[n], f"perturbing {name} must change its own loss"
            else:
                assert moved[n] == base[n], f"perturbing {name} changed block {net.names[n]}'s loss"
        vec, unflat = nm.flat_params(W[name])

        def own(v, name=name, unflat=unflat, m=m):
            """Block m's detached loss as a function of its own flattened parameters."""
            return detached_block_losses(net, dict(W, **{name: unflat(v)}), trace, targets)[m]

        nm.check_grad(own, np.concatenate([grads[name][k].ravel() for k in W[name]]), vec, rtol=1e-6)


# -- exact last layer and oracle feedback ------------------------------------------------------

@pytest.mark.parametrize("beta", [1e-3, 0.1, 0.7])
@pytest.mark.parametrize("make", [lambda: mlp((5, 4, 3), activation="tanh"),
                                  lambda: simple_vgg(channels=(3, 4), in_shape=(2, 8, 8))],
                         ids=["mlp", "simple_vgg"])
def test_last_block_update_over_beta_is_exactly_the_mean_ce_gradient(make, beta):
    """s_N - t_N = beta (softmax - onehot): dW_N / beta = d(mean CE)/dW_N for any feedback."""
    net = make()
    W, omega, x, labels, trace = setup(net, seed=5)  # random (not symmetric) feedback weights
    dtp, _ = dtp_forward_grads(net, W, omega, trace, labels, beta)
    bp = cross_entropy_gradients(net, W, x, labels)
    last = net.names[-1]
    for k in W[last]:
        err = nm.relative_error(dtp[last][k] / beta, bp[last][k])
        assert err <= 1e-10, f"last block {k}: rel. error {err:.3g} at beta {beta}"
    first = net.names[0]
    assert nm.relative_error(dtp[first]["weight"] / beta, bp[first]["weight"]) > 0.05, \
        "with random feedback the first block should not match BP (else the test cannot tell)"


def relative_errors(net, W, omega, x, labels, betas):
    bp = cross_entropy_gradients(net, W, x, labels)
    trace = net.forward(W, x)
    errs = {name: [] for name in net.names}
    for beta in betas:
        dtp, _ = dtp_forward_grads(net, W, omega, trace, labels, beta)
        for name in net.names:
            errs[name].append(nm.relative_error(flat_in_order({name: dtp[name]}, {name: W[name]}) / beta,
                                                flat_in_order({name: bp[name]}, {name: W[name]})))
    return errs


def test_linear_network_with_symmetric_feedback_gives_bp_exactly_at_every_beta():
    """Linear G = W^T: G(t) - G(s) = W^T (t - s) exactly, so dW/beta = BP with no O(beta) term."""
    net = mlp((6, 5, 4, 3), activation="identity")
    W, omega, x, labels, _ = setup(net, seed=1, B=4, symmetric=True)
    errs = relative_errors(net, W, omega, x, labels, [*BETAS, 0.7])
    for name, e in errs.items():
        assert max(e) <= 1e-10, f"{name}: rel. errors {e}"


def test_jmc_feedback_on_tanh_mlp_converges_to_bp_linearly_in_beta():
    """phi-feedback with V = W^T matches J_F^T exactly; the target is exact to first order in beta.

    Blocks reached only through linear feedback (the last two: G_N is linear) are exact at every
    beta; the first block's error is O(beta): log-log slope ~ 1.
    """
    net = mlp((6, 5, 4, 3), activation="tanh", feedback="jmc")
    W, omega, x, labels, _ = setup(net, seed=2, B=4, symmetric=True)
    errs = relative_errors(net, W, omega, x, labels, BETAS)
    for name in net.names[1:]:
        assert max(errs[name]) <= 1e-10, f"{name}: rel. errors {errs[name]}"
    slope = nm.fitted_slope(BETAS, errs["fc_0"])
    assert 0.9 <= slope <= 1.1, f"fc_0 error slope {slope:.3f} (errors {errs['fc_0']})"
    assert errs["fc_0"][0] < 1e-2, f"fc_0 error at beta=1e-4: {errs['fc_0'][0]}"


def test_random_feedback_does_not_converge_to_bp():
    net = mlp((6, 5, 4, 3), activation="tanh", feedback="jmc")
    W, omega, x, labels, _ = setup(net, seed=2, B=4)  # random feedback
    errs = relative_errors(net, W, omega, x, labels, BETAS)
    assert min(errs["fc_0"]) > 0.1 and min(errs["fc_1"]) > 0.1, errs
