"""refdtp.losses and refdtp.backprop: losses, their gradients, label checks, and BP
gradients of whole networks against finite differences of the mean cross-entropy."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdtp import numerical as nm
from refdtp.backprop import backprop, cross_entropy_gradients
from refdtp.losses import (
    accuracy,
    cross_entropy,
    cross_entropy_grad,
    half_mse,
    half_mse_grad,
    log_softmax,
    softmax,
)
from refdtp.networks import lenet, mlp, simple_vgg, small_convnet
from refdtp.ops import MaxPool2d
from refdtp.optim import flatten, unflatten


def labels_for(rng, B, K):
    return rng.integers(0, K, B)


# -- cross-entropy -------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum"])
@given(B=st.integers(1, 5), K=st.integers(2, 6), seed=st.integers(0, 2**31),
       scale=st.sampled_from([0.1, 3.0, 30.0]))
def test_cross_entropy_value_and_gradient_match_definition_and_finite_differences(reduction, B, K, seed,
                                                                                   scale):
    rng = np.random.default_rng(seed)
    z, y = scale * rng.standard_normal((B, K)), labels_for(rng, B, K)
    loss = float(cross_entropy(z, y, reduction))
    by_hand = -sum(z[b, y[b]] - np.log(np.exp(z[b] - z[b].max()).sum()) - z[b].max() for b in range(B))
    expected = by_hand / B if reduction == "mean" else by_hand
    assert loss == pytest.approx(expected, rel=1e-12, abs=1e-12)
    nm.check_grad(lambda v: cross_entropy(v, y, reduction), cross_entropy_grad(z, y, reduction), z,
                  rtol=1e-6)


def test_mean_cross_entropy_is_sum_over_batch_size(rng):
    z, y = rng.standard_normal((4, 3)), labels_for(rng, 4, 3)
    mean = float(cross_entropy(z, y, "mean"))
    assert float(cross_entropy(z, y, "sum")) == pytest.approx(4 * mean, rel=1e-14)
    nm.assert_allclose(cross_entropy_grad(z, y, "sum"), 4 * cross_entropy_grad(z, y, "mean"), rtol=1e-14)
    nm.assert_allclose(cross_entropy_grad(z, y, "sum"), softmax(z) - np.eye(3)[y], rtol=1e-14, atol=1e-16,
                       name="softmax - onehot")


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4], [-1e4, -1e4, -1e4]])
    y = np.array([1, 2, 0])
    # filterwarnings = error: an overflow or invalid-value warning would fail this test.
    loss = cross_entropy(z, y, "sum")
    grad = cross_entropy_grad(z, y, "sum")
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert float(loss) == pytest.approx(1e4 + np.log(2) + np.log(3), rel=1e-12)
    nm.assert_allclose(grad, [[1.0, -1.0, 0.0], [0.0, 0.5, -0.5], [-2 / 3, 1 / 3, 1 / 3]],
                       rtol=1e-12, atol=1e-15, name="CE grad at huge logits")
    assert np.all(np.isfinite(log_softmax(z))) and np.allclose(softmax(z).sum(axis=1), 1.0)


def test_cross_entropy_float32_stays_float32(rng):
    z = rng.standard_normal((3, 4)).astype(np.float32)
    y = labels_for(rng, 3, 4)
    assert cross_entropy(z, y).dtype == np.float32
    assert cross_entropy_grad(z, y).dtype == np.float32


@pytest.mark.parametrize("labels, err, pattern", [
    (np.array([0, 3]), ValueError, r"values must lie in \[0, 3\)"),
    (np.array([-1, 0]), ValueError, r"values must lie in \[0, 3\)"),
    (np.array([0, 1, 2]), ValueError, r"expected shape \(2,\)"),
    (np.array([[0], [1]]), ValueError, r"expected shape \(2,\)"),
    (np.array([0.0, 1.0]), TypeError, "integer"),
])
def test_mismatched_labels_raise_clear_errors(labels, err, pattern):
    z = np.zeros((2, 3))
    for fn in (cross_entropy, cross_entropy_grad):
        with pytest.raises(err, match=pattern):
            fn(z, labels)


def test_unknown_reduction_is_rejected():
    z, y = np.zeros((2, 3)), np.array([0, 1])
    for fn in (cross_entropy, cross_entropy_grad):
        with pytest.raises(ValueError, match="reduction"):
            fn(z, y, "max")
    with pytest.raises(ValueError, match="reduction"):
        half_mse(z, z, "none")


# -- half MSE and accuracy --------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_half_mse_value_and_gradient(reduction, rng):
    y, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    total = 0.5 * np.sum((y - t) ** 2)
    assert float(half_mse(y, t, reduction)) == pytest.approx(total / 3 if reduction == "mean" else total,
                                                             rel=1e-14)
    nm.check_grad(lambda v: half_mse(v, t, reduction), half_mse_grad(y, t, reduction), y, rtol=1e-6)
    with pytest.raises(ValueError, match="differ"):
        half_mse(y, t[:, :3])


def test_accuracy_top1_and_top5():
    logits = np.array([[0.0, 1, 2, 3, 4, 5, 6],   # top-5 classes {6, 5, 4, 3, 2}, top-1 6
                       [6.0, 5, 4, 3, 2, 1, 0],   # top-5 {0, 1, 2, 3, 4}, top-1 0
                       [0.0, 1, 2, 3, 4, 5, 9]])  # top-5 {6, 5, 4, 3, 2}, top-1 6
    assert accuracy(logits, np.array([6, 4, 0])) == pytest.approx(1 / 3)
    assert accuracy(logits, np.array([6, 4, 0]), k=5) == pytest.approx(2 / 3)
    assert accuracy(logits, np.array([2, 2, 2]), k=5) == 1.0
    assert accuracy(logits, np.array([1, 5, 1]), k=5) == 0.0
    assert accuracy(logits, np.array([6, 0, 6])) == 1.0


# -- back-propagation vs finite differences -------------------------------------------------

def pool_gap(net, W, x):
    """Smallest gap between the top two entries of any max-pool window in the forward pass."""
    gap, h = np.inf, x
    for b in net.blocks:
        for op in b.F.ops:
            if isinstance(op, MaxPool2d):
                p, k, s = op.padding, op.k, op.stride
                hp = np.pad(h, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
                win = np.lib.stride_tricks.sliding_window_view(hp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
                top2 = np.sort(win.reshape(*win.shape[:4], -1), axis=-1)[..., -2:]
                gap = min(gap, float(np.min(top2[..., 1] - top2[..., 0])))
            h, _ = op.forward(W[b.name] if op.has_params else {}, h)
    return gap


def tie_free_batch(net, W, rng, B, gap=1e-4):
    for _ in range(50):
        x = rng.standard_normal((B, *net.in_shape))
        if pool_gap(net, W, x) > gap:
            return x
    raise AssertionError("no tie-free batch in 50 draws")


def check_bp(net, seed, B, directional):
    rng = np.random.default_rng(seed)
    W, _ = net.init(seed, np.float64)
    x = tie_free_batch(net, W, rng, B)
    y = labels_for(rng, B, net.num_classes)
    grads = cross_entropy_gradients(net, W, x, y)
    vec, unflat = nm.flat_params(flatten(W))
    flat_grads = flatten(grads)
    grad_vec = np.concatenate([flat_grads[k].ravel() for k in flatten(W)])  # W's key order

    def mean_ce(v):
        return cross_entropy(net.logits(unflatten(unflat(v)), x), y, "mean")

    nm.check_grad(mean_ce, grad_vec, vec, directional=directional, n_directions=4, rtol=1e-6, seed=seed)


@pytest.mark.parametrize("activation", ["tanh", "elu", "sigmoid"])
def test_bp_gradients_of_mlp_match_finite_differences(activation):
    check_bp(mlp((6, 5, 4, 3), activation=activation), seed=1, B=4, directional=False)


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_bp_gradients_of_small_convnet_match_finite_differences(pool):
    check_bp(small_convnet(pool=pool), seed=2, B=3, directional=False)


def test_bp_gradients_of_lenet_with_overlapping_pools_match_finite_differences():
    check_bp(lenet(in_shape=(3, 12, 12)), seed=3, B=2, directional=True)


def test_bp_gradients_of_small_simple_vgg_match_finite_differences():
    check_bp(simple_vgg(channels=(4, 6), in_shape=(3, 8, 8)), seed=4, B=2, directional=True)


def test_backprop_deltas_are_output_gradients_of_each_block(rng):
    net = mlp((4, 5, 3), activation="tanh")
    W, _ = net.init(0, np.float64)
    x, y = rng.standard_normal((3, 4)), labels_for(rng, 3, 3)
    trace = net.forward(W, x)
    _, deltas = backprop(net, W, trace, cross_entropy_grad(trace.logits, y))
    assert deltas[0] is None

    def loss_of_s1(s1):
        return cross_entropy(net.blocks[1].forward(W["fc_1"], s1)[0], y)

    nm.check_grad(loss_of_s1, deltas[1], trace.s[1], rtol=1e-6)
    sum_grads = cross_entropy_gradients(net, W, x, y, reduction="sum")
    mean_grads = cross_entropy_gradients(net, W, x, y)
    nm.assert_allclose(sum_grads["fc_0"]["weight"], 3 * mean_grads["fc_0"]["weight"], rtol=1e-13)
