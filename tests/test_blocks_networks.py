"""refdtp.blocks and refdtp.networks: architectures, parameter counts, initialisation,
symmetric init, explicit routing, block-level derivatives and input validation."""
import math

import numpy as np
import pytest

from refdtp import numerical as nm
from refdtp.blocks import Block, invert
from refdtp.networks import (
    Network,
    conv_block,
    count_params,
    lenet,
    linear_block,
    mlp,
    simple_vgg,
    small_convnet,
)
from refdtp.ops import Act, ConvTranspose2d, Linear, MaxPool2d, MaxUnpool2d, Reshape

RTOL = 1e-6


def feedback_count(net, omega):
    """Feedback parameters of the trained blocks 2..N (G_1 exists but is never trained)."""
    return count_params({b.name: omega[b.name] for b in net.blocks[1:]})


def window_top2_gap(pool, x):
    """Smallest gap between the two largest entries of any window of max-pool ``pool`` on x."""
    p, k, s = pool.padding, pool.k, pool.stride
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    top2 = np.sort(win.reshape(*win.shape[:4], -1), axis=-1)[..., -2:]
    return float(np.min(top2[..., 1] - top2[..., 0]))


def min_pool_gap(block, W, x):
    """Smallest top-two gap over the max-pool windows of one forward pass of a block."""
    gaps, h = [np.inf], x
    for op in block.F.ops:
        if isinstance(op, MaxPool2d):
            gaps.append(window_top2_gap(op, h))
        h, _ = op.forward(W if op.has_params else {}, h)
    return min(gaps)


def tie_free_input(block, W, rng, B=2, gap=1e-3):
    """A (deterministic) random input whose max-pool windows have no near-ties."""
    for _ in range(50):
        x = rng.standard_normal((B, *block.in_shape))
        if min_pool_gap(block, W, x) > gap:
            return x
    raise AssertionError("could not draw a tie-free input in 50 tries")


def flat(grads: dict, like: dict) -> np.ndarray:
    return np.concatenate([np.asarray(grads[k]).ravel() for k in like])


# -- architectures and parameter counts ----------------------------------------------

def test_simple_vgg_has_the_papers_parameter_counts():
    net = simple_vgg()
    W, omega = net.init(0)
    assert count_params(W) == 2_221_706
    assert feedback_count(net, omega) == 2_218_240
    W1000, _ = simple_vgg(num_classes=1000).init(0)
    assert count_params(W1000) == 2_729_576


def test_simple_vgg_block_shapes_follow_the_paper():
    net = simple_vgg()
    assert net.names == ["conv_0", "conv_1", "conv_2", "conv_3", "conv_4", "fc"]
    assert [b.out_shape for b in net.blocks] == [(128, 16, 16), (128, 8, 8), (256, 4, 4), (256, 2, 2),
                                                 (512, 1, 1), (10,)]
    assert net.num_classes == 10 and len(net) == 6


def test_lenet_parameter_count_and_shapes():
    net = lenet()
    W, _ = net.init(0)

    def conv(c_in, c_out, k):
        """Parameters of a k x k conv with bias."""
        return c_in * c_out * k * k + c_out

    def dense(n_in, n_out):
        """Parameters of a linear layer with bias."""
        return n_in * n_out + n_out

    expected = conv(3, 32, 5) + conv(32, 64, 5) + dense(64 * 8 * 8, 512) + dense(512, 10)
    assert count_params(W) == expected == 2_156_490
    assert [b.out_shape for b in net.blocks] == [(32, 16, 16), (64, 8, 8), (512,), (10,)]
    pools = [op for b in net.blocks for op in b.F.ops if isinstance(op, MaxPool2d)]
    assert [(p.k, p.stride, p.padding, p.overlapping) for p in pools] == [(3, 2, 1, True)] * 2


def test_small_networks_shapes_and_logits():
    rng = np.random.default_rng(0)
    for net, B in [(mlp((6, 5, 4, 3)), 4), (small_convnet(), 2), (lenet(in_shape=(3, 12, 12)), 2),
                   (simple_vgg(channels=(8, 16), in_shape=(1, 8, 8)), 3)]:
        W, _ = net.init(1, np.float64)
        x = rng.standard_normal((B, *net.in_shape))
        trace = net.forward(W, x)
        assert len(trace.s) == len(net) + 1 and trace.s[0] is x
        for s, b in zip(trace.s[1:], net.blocks, strict=True):
            assert s.shape == (B, *b.out_shape), f"{net.name}/{b.name}: {s.shape}"
        assert net.logits(W, x).shape == (B, net.num_classes)


def test_feedback_is_the_scalingdtp_inversion_of_each_block():
    net = simple_vgg(channels=(4, 4), in_shape=(3, 8, 8))
    conv_G = [type(op) for op in net.blocks[1].G.ops]
    assert conv_G == [MaxUnpool2d, Act, ConvTranspose2d]
    assert net.blocks[1].G.ops[1].act.name == "elu(alpha=1.0)", "ELU maps to ELU, not its inverse"
    assert [type(op) for op in net.blocks[2].G.ops] == [Linear, Reshape]
    assert all(b.feedback_is_affine for b in net.blocks)
    assert [type(op) for op in invert(net.blocks[2].F.ops)] == [Linear, Reshape]


def test_network_and_block_constructors_reject_inconsistent_shapes():
    a = linear_block("a", (4,), 3)
    with pytest.raises(ValueError, match="outputs"):
        Network([a, linear_block("b", (5,), 2)])
    with pytest.raises(ValueError, match="unique"):
        Network([a, linear_block("a", (3,), 2)])
    with pytest.raises(ValueError, match="feedback maps"):
        Block("bad", [Linear(4, 3)], [Linear(3, 5)])
    with pytest.raises(ValueError, match="feedback must be"):
        mlp((3, 2), feedback="exact")
    with pytest.raises(ValueError, match="phi"):
        mlp((3, 2, 2), activation="relu", feedback="jmc")
    with pytest.raises(ValueError, match="in_shape"):
        mlp((5, 2), in_shape=(2, 2))


# -- initialisation ---------------------------------------------------------------------

def test_init_reproduces_pytorch_uniform_bounds():
    net = simple_vgg()
    W, omega = net.init(3, np.float64)
    cases = [  # (array, fan_in, what)
        (W["conv_4"]["weight"], 256 * 9, "Conv2d 256->512 weight"),
        (W["conv_1"]["weight"], 128 * 9, "Conv2d 128->128 weight"),
        (W["fc"]["weight"], 512, "Linear 512->10 weight"),
        (omega["conv_4"]["weight"], 256 * 9, "ConvT fan_in = forward C_in k^2"),
        (omega["conv_4"]["bias"], 256 * 9, "ConvT bias"),
        (omega["fc"]["weight"], 10, "feedback Linear 10->512 weight, bound 1/sqrt(10)"),
        (omega["fc"]["bias"], 10, "feedback Linear bias"),
    ]
    for a, fan_in, what in cases:
        bound = 1 / math.sqrt(fan_in)
        top = float(np.abs(a).max())
        # Uniform: P(all of n draws below 0.95 bound) = 0.95^n < e^-25 for n >= 512.
        assert 0.95 * bound <= top <= bound, f"{what}: max |w| = {top}, bound {bound}"
        assert abs(a.mean()) < 0.1 * bound, f"{what}: mean {a.mean()} not ~0"
        assert abs(a.std() - bound / math.sqrt(3)) < 0.1 * bound, f"{what}: std {a.std()} not uniform"
    assert math.isclose(1 / math.sqrt(10), 0.31622776601683794)


def test_init_default_dtype_is_float32_and_float64_on_request():
    net = mlp((4, 3, 2))
    W, omega = net.init(0)
    assert all(a.dtype == np.float32 for p in (W, omega) for d in p.values() for a in d.values())
    W64, _ = net.init(0, np.float64)
    assert W64["fc_0"]["weight"].dtype == np.float64
    with pytest.raises(TypeError, match="float32 or float64"):
        net.init(0, np.int32)


def test_same_seed_gives_identical_parameters_and_different_seeds_differ():
    net = simple_vgg(channels=(8, 16), in_shape=(3, 8, 8))
    W1, om1 = net.init(7)
    W2, om2 = net.init(7)
    W3, om3 = net.init(8)
    for name in net.names:
        for k in W1[name]:
            np.testing.assert_array_equal(W1[name][k], W2[name][k])
            assert not np.array_equal(W1[name][k], W3[name][k]), f"{name}.{k} ignores the seed"
        for k in om1[name]:
            np.testing.assert_array_equal(om1[name][k], om2[name][k])
            assert not np.array_equal(om1[name][k], om3[name][k])


def test_symmetric_init_copies_weights_zeroes_biases_and_does_not_alias():
    net = simple_vgg(channels=(4, 6), in_shape=(3, 8, 8))
    W, omega = net.init(1, np.float64, symmetric=True)
    for name in ("conv_0", "conv_1"):
        np.testing.assert_array_equal(omega[name]["weight"], W[name]["weight"])  # same layout
    np.testing.assert_array_equal(omega["fc"]["weight"], W["fc"]["weight"].T)
    for params in (W, omega):
        for name in net.names:
            assert not params[name]["bias"].any(), f"{name} bias not zeroed"
    before = W["conv_1"]["weight"].copy()
    omega["conv_1"]["weight"] += 1.0
    omega["fc"]["weight"][0, 0] += 1.0
    np.testing.assert_array_equal(W["conv_1"]["weight"], before)  # no shared storage
    assert W["fc"]["weight"][0, 0] != omega["fc"]["weight"][0, 0]
    W_plain, _ = net.init(1, np.float64)
    np.testing.assert_array_equal(W_plain["conv_0"]["weight"], W["conv_0"]["weight"])


def test_symmetric_feedback_makes_linear_blocks_exact_transposes(rng):
    net = mlp((5, 4, 3), activation="identity")
    W, omega = net.init(2, np.float64, symmetric=True)
    block = net.blocks[1]
    y, trace = block.forward(W["fc_1"], rng.standard_normal((3, 4)))
    g = block.feedback(omega["fc_1"], y, block.route(trace))[0]
    nm.assert_allclose(g, y @ W["fc_1"]["weight"], rtol=1e-14, name="G(y) = W^T y")


# -- routing --------------------------------------------------------------------------

def test_route_returns_this_passes_indices_and_other_indices_change_the_result(rng):
    block = conv_block("c", (2, 6, 6), 3)
    W, omega = block.init_forward(rng, np.float64), block.init_feedback(rng, np.float64)
    x1, x2 = rng.standard_normal((2, 2, 6, 6)), rng.standard_normal((2, 2, 6, 6))
    y1, trace1 = block.forward(W, x1)
    _, trace2 = block.forward(W, x2)
    r1, r2 = block.route(trace1), block.route(trace2)
    assert r1[0] is trace1[2] and r1[1:] == (None, None), "the un-pool gets the pool's indices"
    assert not np.array_equal(r1[0], r2[0])
    g1 = block.feedback(omega, y1, r1)[0]
    g2 = block.feedback(omega, y1, r2)[0]
    assert not np.allclose(g1, g2), "feeding another pass's indices must change G(y)"
    # G(y; r1) by hand: unpool with r1, ELU, ConvT.
    unpool, act, convT = block.G.ops
    manual = convT.forward(omega, act.forward({}, unpool.forward({}, y1, r1[0])[0])[0])[0]
    nm.assert_allclose(g1, manual, rtol=1e-14, name="G(y; route)")
    with pytest.raises(ValueError, match="needs pool indices"):
        block.feedback(omega, y1, (None, None, None))


def test_feedback_difference_equals_difference_of_feedbacks_and_cancels_bias(rng):
    block = conv_block("c", (2, 6, 6), 3)
    W, omega = block.init_forward(rng, np.float64), block.init_feedback(rng, np.float64)
    y, trace = block.forward(W, rng.standard_normal((2, 2, 6, 6)))
    route = block.route(trace)
    a = y + 0.1 * rng.standard_normal(y.shape)
    diff = block.feedback_difference(omega, a, y, route)
    direct = block.feedback(omega, a, route)[0] - block.feedback(omega, y, route)[0]
    nm.assert_allclose(diff, direct, rtol=1e-10, atol=1e-13, name="G(a) - G(b)")
    shifted = dict(omega, bias=omega["bias"] + 5.0)
    np.testing.assert_array_equal(block.feedback_difference(shifted, a, y, route), diff)
    assert not np.any(block.feedback_difference(omega, y, y, route)), "G(y) - G(y) must be exactly 0"


# -- block-level derivatives vs finite differences ------------------------------------

def check_block(block, W, omega, x, seed=0):
    """Forward and feedback chains: input JVP/VJP and parameter gradient/JVP vs finite differences."""
    def F(xx):
        return block.forward(W, xx)[0]

    def trace(xx):
        return block.forward(W, xx)[1]

    nm.check_jvp(F, lambda xx, u: block.forward_jvp(W, trace(xx), u), x, seed=seed, rtol=RTOL)
    nm.check_vjp(F, lambda xx, w: block.forward_vjp(W, trace(xx), w), x, seed=seed, rtol=RTOL)
    vec, unflat = nm.flat_params(W)
    tr = trace(x)

    def F_of_W(v):
        return block.forward(unflat(v), x)[0]

    nm.check_vjp(F_of_W, lambda v, w: flat(block.forward_param_grads(unflat(v), tr, w), W), vec,
                 seed=seed, rtol=RTOL, name="forward_param_grads")
    nm.check_jvp(F_of_W, lambda v, dv: block.forward_param_jvp(unflat(v), tr, unflat(dv)), vec,
                 seed=seed, rtol=RTOL, name="forward_param_jvp")
    y, route = F(x), block.route(tr)

    def G(yy):
        return block.feedback(omega, yy, route)[0]

    def gcache(yy):
        return block.feedback(omega, yy, route)[1]

    nm.check_jvp(G, lambda yy, u: block.feedback_jvp(omega, gcache(yy), u), y, seed=seed, rtol=RTOL)
    nm.check_vjp(G, lambda yy, w: block.feedback_vjp(omega, gcache(yy), w), y, seed=seed, rtol=RTOL)
    ovec, ounflat = nm.flat_params(omega)
    gc = gcache(y)
    nm.check_vjp(lambda v: block.feedback(ounflat(v), y, route)[0],
                 lambda v, w: flat(block.feedback_param_grads(ounflat(v), gc, w), omega), ovec,
                 seed=seed, rtol=RTOL, name="feedback_param_grads")


@pytest.mark.parametrize("pool_k, pool_stride, pool_padding", [(2, None, 0), (3, 2, 1)])
def test_conv_block_elu_maxpool_derivatives_match_finite_differences(pool_k, pool_stride, pool_padding,
                                                                       rng):
    block = conv_block("c", (2, 6, 6), 3, activation="elu", pool_k=pool_k, pool_stride=pool_stride,
                       pool_padding=pool_padding)
    W, omega = block.init_forward(rng, np.float64), block.init_feedback(rng, np.float64)
    check_block(block, W, omega, tie_free_input(block, W, rng))


@pytest.mark.parametrize("activation", ["elu", "tanh", None])
def test_linear_block_derivatives_match_finite_differences(activation, rng):
    block = linear_block("l", (2, 2, 2), 5, activation=activation)
    W, omega = block.init_forward(rng, np.float64), block.init_feedback(rng, np.float64)
    check_block(block, W, omega, rng.standard_normal((3, 2, 2, 2)))


def test_difference_grads_match_finite_differences_and_bias_gets_zero(rng):
    block = conv_block("c", (2, 6, 6), 3)
    W, omega = block.init_forward(rng, np.float64), block.init_feedback(rng, np.float64)
    y, trace = block.forward(W, tie_free_input(block, W, rng))
    route = block.route(trace)
    a = y + 0.3 * rng.standard_normal(y.shape)
    dx = rng.standard_normal((2, 2, 6, 6))
    du = block.feedback_features(a, route) - block.feedback_features(y, route)
    grads = block.difference_grads(omega, du, dx)
    assert not grads["bias"].any()
    vec, unflat = nm.flat_params(omega)
    nm.check_grad(lambda v: np.vdot(dx, block.feedback_difference(unflat(v), a, y, route)),
                  flat(grads, omega), vec, directional=True, rtol=RTOL)


# -- bad inputs -------------------------------------------------------------------------

BAD_INPUTS = [
    ("rank", np.zeros((3, 8, 8)), ValueError, r"simple_vgg input: expected input of shape \(B, 3, 8, 8\)"),
    ("channels", np.zeros((2, 1, 8, 8)), ValueError, r"expected input of shape \(B, 3, 8, 8\), got \(2, 1"),
    ("size", np.zeros((2, 3, 9, 8)), ValueError, r"expected input of shape \(B, 3, 8, 8\)"),
    ("int dtype", np.zeros((2, 3, 8, 8), dtype=np.int64), TypeError, "simple_vgg input: .*float32/float64"),
    ("nan", np.full((2, 3, 8, 8), np.nan), ValueError, "simple_vgg input: input contains NaN"),
    ("inf", np.full((2, 3, 8, 8), np.inf), ValueError, "simple_vgg input: input contains NaN or Inf"),
]


@pytest.mark.parametrize("what, x, err, pattern", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_network_rejects_bad_input_with_a_message_naming_layer_and_shape(what, x, err, pattern):
    net = simple_vgg(channels=(4, 4), in_shape=(3, 8, 8))
    W, _ = net.init(0)
    with pytest.raises(err, match=pattern):
        net.forward(W, x)


def test_block_rejects_wrong_shape_naming_the_block():
    block = conv_block("conv_7", (2, 6, 6), 3)
    W = block.init_forward(np.random.default_rng(0), np.float64)
    with pytest.raises(ValueError, match=r"conv_7 forward: expected input of shape \(B, 2, 6, 6\)"):
        block.forward(W, np.zeros((1, 3, 6, 6)))
    with pytest.raises(ValueError, match=r"conv_7 feedback: expected input of shape \(B, 3, 3, 3\)"):
        block.feedback(block.init_feedback(np.random.default_rng(0), np.float64), np.zeros((1, 3, 6, 6)),
                       (None, None, None))
