"""refdtp.feedback: every feedback-loss gradient (L-DRL naive and fused, vanilla DTP
reconstruction, DRL) against central finite differences of the loss with the noise
frozen (float64); fused == naive; bias gradients; the L-DRL expectation 2 sigma^2 (V - W^T)."""
import numpy as np
import pytest

from refdtp import feedback as fb
from refdtp import ldrl
from refdtp import numerical as nm
from refdtp.networks import lenet, linear_block, mlp, simple_vgg

SIGMA = 0.3
FULL_FD_LIMIT = 400  # parameter vectors up to this size get the full gradient, others directional
# Every feedback map here is affine in omega (G = post(L_omega(pre(y)) + c)), so every feedback
# loss is exactly quadratic in omega and a central difference has no truncation error: a step
# larger than the default 1e-6 only lowers round-off (DRL's 1/sigma^2 makes the loss ~1e3).
FD_STEP = 1e-4


def small_vgg():
    return simple_vgg(channels=(4, 4, 6, 6, 8), in_shape=(3, 32, 32))


NETS = {
    "simple_vgg": (small_vgg, 2),
    "lenet": (lambda: lenet(in_shape=(3, 12, 12)), 2),  # overlapping 3/2/1 pools
    "mlp": (lambda: mlp((6, 5, 4, 3), activation="elu"), 4),
}


def setup(key, seed=0):
    make, B = NETS[key]
    net = make()
    rng = np.random.default_rng(seed)
    W, omega = net.init(seed, np.float64)
    x = rng.standard_normal((B, *net.in_shape))
    return net, W, omega, net.forward(W, x), rng


def block_case(net, trace, n, rng, sigma=SIGMA):
    """(block, x, y, clean route, eps, eta) of block n (paper numbering), noise drawn on the host."""
    block = net.blocks[n - 1]
    x, y = trace.s[n - 1], trace.s[n]
    return (block, x, y, block.route(trace.caches[n - 1]), sigma * rng.standard_normal(x.shape),
            sigma * rng.standard_normal(y.shape))


def flat(grads, like):
    return np.concatenate([np.asarray(grads[k]).ravel() for k in like])


def check_omega_grad(loss_of_omega, grads, omega, seed=0):
    """Gradient ``grads`` (dict like omega) vs central differences of ``loss_of_omega``."""
    vec, unflat = nm.flat_params(omega)
    nm.check_grad(lambda v: loss_of_omega(unflat(v)), flat(grads, omega), vec,
                  directional=vec.size > FULL_FD_LIMIT, n_directions=4, rtol=1e-6, seed=seed,
                  eps=FD_STEP)


CASES = [("simple_vgg", 2), ("simple_vgg", 4), ("simple_vgg", 6), ("lenet", 2), ("lenet", 3), ("lenet", 4),
         ("mlp", 2), ("mlp", 3)]
IDS = [f"{k}-block{n}" for k, n in CASES]


# -- L-DRL ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key, n", CASES, ids=IDS)
def test_ldrl_naive_and_fused_gradients_match_finite_differences(key, n):
    net, W, omega, trace, rng = setup(key)
    block, x, y, route, eps, eta = block_case(net, trace, n, rng)
    Wn, om = W[block.name], omega[block.name]

    def loss(o):
        return ldrl.ldrl_loss(block, Wn, o, x, y, route, eps, eta)

    naive = ldrl.ldrl_grads_naive(block, Wn, om, x, y, route, eps, eta)
    consts = ldrl.ldrl_constants(block, y, route)
    fused, fused_loss = ldrl.ldrl_grads_fused(block, Wn, om, x, y, route, consts, eps, eta, with_loss=True)
    check_omega_grad(loss, naive, om)
    check_omega_grad(loss, fused, om)
    assert float(fused_loss) == pytest.approx(float(loss(om)), rel=1e-12)


ALL_BLOCKS = [("simple_vgg", n) for n in range(2, 7)] + [("lenet", n) for n in (2, 3, 4)]


@pytest.mark.parametrize("key, n", ALL_BLOCKS, ids=[f"{k}-block{n}" for k, n in ALL_BLOCKS])
def test_ldrl_fused_equals_naive_to_round_off_and_bias_gradient_vanishes(key, n):
    net, W, omega, trace, rng = setup(key, seed=1)
    block, x, y, route, eps, eta = block_case(net, trace, n, rng)
    Wn, om = W[block.name], omega[block.name]
    assert block.feedback_is_affine, "the fused path must be exercised, not its naive fallback"
    naive = ldrl.ldrl_grads_naive(block, Wn, om, x, y, route, eps, eta)
    consts = ldrl.ldrl_constants(block, y, route)
    fused, _ = ldrl.ldrl_grads_fused(block, Wn, om, x, y, route, consts, eps, eta)
    err = nm.relative_error(fused["weight"], naive["weight"])
    assert err <= 1e-12, f"{block.name}: fused vs naive weight gradient rel. error {err:.3g}"
    assert not fused["bias"].any(), "the fused feedback-bias gradient must be exactly 0"
    scale = max(1.0, float(np.linalg.norm(naive["weight"])))
    assert np.abs(naive["bias"]).max() <= 1e-14 * scale, \
        f"{block.name}: naive bias gradient {np.abs(naive['bias']).max():.3g} is not round-off"


def test_ldrl_noisy_branch_uses_the_noisy_routing():
    """G(F(x + eps)) must be routed by the noisy pass: routing it by the clean indices changes the loss."""
    net, W, omega, trace, rng = setup("simple_vgg", seed=2)
    block, x, y, route, eps, eta = block_case(net, trace, 2, rng, sigma=1.0)
    Wn, om = W[block.name], omega[block.name]
    y_noisy, noisy_trace = block.forward(Wn, x + eps)
    assert not np.array_equal(block.route(noisy_trace)[0], route[0])
    g_noisy = block.feedback(om, y_noisy, block.route(noisy_trace))[0]
    g_clean, g_eta = block.feedback(om, y, route)[0], block.feedback(om, y + eta, route)[0]
    expected = (-2 * np.vdot(eps, g_noisy - g_clean) + np.sum((g_eta - g_clean) ** 2)) / x.shape[0]
    assert float(ldrl.ldrl_loss(block, Wn, om, x, y, route, eps, eta)) == pytest.approx(expected, rel=1e-13)
    wrong = block.feedback(om, y_noisy, route)[0]
    wrong_loss = (-2 * np.vdot(eps, wrong - g_clean) + np.sum((g_eta - g_clean) ** 2)) / x.shape[0]
    assert abs(wrong_loss - expected) > 1e-6 * abs(expected)


def mc_relative_error(block, W, omega, target, draws, B, sigma, rng):
    """Relative error of the mean fused L-DRL gradient over ``draws`` batches of B samples."""
    total = np.zeros_like(omega["weight"])
    x = rng.standard_normal((B, *block.in_shape))
    y, trace = block.forward(W, x)
    route = block.route(trace)
    u = ldrl.ldrl_constants(block, y, route)
    for _ in range(draws):
        eps, eta = sigma * rng.standard_normal(x.shape), sigma * rng.standard_normal(y.shape)
        total += ldrl.ldrl_grads_fused(block, W, omega, x, y, route, u, eps, eta)[0]["weight"]
    return nm.relative_error(total / draws, target)


def test_ldrl_linear_block_gradient_expectation_is_2_sigma2_v_minus_wt_at_rate_1_over_sqrt_m():
    """E[grad_V] = 2 sigma^2 (V - W^T) for F = W x + b, G = V y + c (docs/theory.md §3.2).

    The Monte-Carlo mean over M and 16 M draws has relative error ~ 1/sqrt(M): its RMS over
    R independent repetitions must shrink by about 4 (3.6-4.2 over seeds 1-5 and 1234). A wrong
    expectation, e.g. 2 sigma^2 (V + W^T) or sigma^2 (V - W^T), leaves an error of ~1.2 or ~0.5
    that does not shrink (ratio ~1), which the bounds below reject.
    """
    block = linear_block("fc", (5,), 4)
    rng = np.random.default_rng(1234)
    W, omega = block.init_forward(rng, np.float64), block.init_feedback(rng, np.float64)
    sigma, M, B, R = 0.2, 32, 8, 8
    expected = 2 * sigma ** 2 * (omega["weight"] - W["weight"].T)

    def rms_error(draws):
        return float(np.sqrt(np.mean([mc_relative_error(block, W, omega, expected, draws, B, sigma, rng) ** 2
                                      for _ in range(R)])))

    err_m, err_16m = rms_error(M), rms_error(16 * M)
    assert err_16m < 0.08, f"mean over {16 * M} draws is {err_16m:.3g} from 2 sigma^2 (V - W^T)"
    ratio = err_m / err_16m
    assert 3.0 <= ratio <= 5.3, f"error ratio {ratio:.3g} (M: {err_m:.3g}, 16M: {err_16m:.3g})"
    for wrong in (2 * sigma ** 2 * (omega["weight"] + W["weight"].T), expected / 2):
        assert nm.relative_error(expected, wrong) > 0.3, "the alternatives must be distinguishable"


# -- vanilla DTP reconstruction -------------------------------------------------------------

@pytest.mark.parametrize("key, n", CASES, ids=IDS)
def test_dtp_reconstruction_gradient_matches_finite_differences(key, n):
    net, W, omega, trace, rng = setup(key, seed=3)
    block, x, _, _, eps, _ = block_case(net, trace, n, rng)
    Wn, om = W[block.name], omega[block.name]
    grads, loss = fb.dtp_grads(block, Wn, om, x, eps, with_loss=True)
    check_omega_grad(lambda o: fb.dtp_loss(block, Wn, o, x, eps), grads, om)
    x_noisy = x + eps
    y_noisy, tr = block.forward(Wn, x_noisy)
    by_hand = np.sum((x_noisy - block.feedback(om, y_noisy, block.route(tr))[0]) ** 2) / x.shape[0]
    assert float(loss) == pytest.approx(by_hand, rel=1e-13)


# -- DRL --------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, n", [("simple_vgg", 2), ("simple_vgg", 5), ("simple_vgg", 6), ("lenet", 2),
                                    ("lenet", 4), ("mlp", 2), ("mlp", 3)],
                         ids=["simple_vgg-block2", "simple_vgg-block5", "simple_vgg-block6", "lenet-block2",
                              "lenet-block4", "mlp-block2", "mlp-block3"])
def test_drl_gradient_matches_finite_differences(key, n):
    net, W, omega, trace, rng = setup(key, seed=4)
    name = net.names[n - 1]
    sigma = 0.05
    eps = sigma * rng.standard_normal(trace.s[n - 1].shape)
    grads, loss = fb.drl_grads(net, W, omega, trace, n, eps, sigma, with_loss=True)
    assert not grads["bias"].any(), "the feedback bias cancels in the difference"

    def loss_of(o):
        return fb.drl_loss(net, W, dict(omega, **{name: o}), trace, n, eps, sigma)

    check_omega_grad(loss_of, grads, omega[name])
    assert float(loss) == pytest.approx(float(loss_of(omega[name])), rel=1e-12)


def test_drl_reconstruction_is_exact_for_zero_noise_and_top_block_is_local():
    net, W, omega, trace, rng = setup("mlp", seed=5)
    zero = np.zeros_like(trace.s[1])
    r, _ = fb.drl_reconstruction(net, W, omega, trace, 2, zero)
    np.testing.assert_array_equal(r, trace.s[1])  # up and down with no noise: back to s_1 exactly
    # At the top block the DRL reconstruction is s_{N-1} + G_N(F_N(s_{N-1} + eps)) - G_N(s_N).
    N = len(net)
    block = net.blocks[-1]
    eps = 0.1 * rng.standard_normal(trace.s[N - 1].shape)
    r, _ = fb.drl_reconstruction(net, W, omega, trace, N, eps)
    route = block.route(trace.caches[N - 1])
    up = block.forward(W[block.name], trace.s[N - 1] + eps)[0]
    expected = trace.s[N - 1] + block.feedback_difference(omega[block.name], up, trace.s[N], route)
    nm.assert_allclose(r, expected, rtol=1e-14, atol=1e-15, name="top-block DRL reconstruction")
