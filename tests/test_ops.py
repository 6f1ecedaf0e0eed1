"""refdtp.ops: every primitive op's JVP, VJP, parameter gradient and parameter JVP
against finite differences (float64), exact adjoint identities, and input checks.

Kinks are avoided by construction: activation inputs keep |a| > 1e-3, and max-pool
inputs are a shuffled grid with spacing 2e-3, so the top two entries of every
window differ by more than 1e-3 and a finite-difference step (~1e-6) never moves
an argmax.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from refdtp import numerical as nm
from refdtp.activations import ACTIVATIONS
from refdtp.ops import (
    Act,
    AvgPool2d,
    AvgUnpool2d,
    Chain,
    Conv2d,
    ConvTranspose2d,
    Flatten,
    Linear,
    MaxPool2d,
    MaxUnpool2d,
    Reshape,
    conv2d,
    conv_transpose2d,
    gather_plane,
)

RTOL = 1e-6  # finite-difference agreement (the issue asks for 1e-5 or tighter)
ADJOINT_RTOL = 1e-12

# (k, stride, padding) geometries: stride-1 (flipped-conv adjoint) and strided (col2im) paths.
CONV_GEOMETRIES = [(1, 1, 0), (2, 2, 0), (3, 1, 0), (3, 1, 1), (3, 2, 0), (3, 2, 1), (4, 3, 1),
                   (5, 1, 2), (5, 2, 2), (3, 1, 2)]
# (k, stride, padding) pools: non-overlapping, overlapping (LeNet's 3/2/1), uneven sizes.
POOL_GEOMETRIES = [(2, 2, 0), (3, 3, 0), (3, 2, 1), (3, 2, 0), (2, 1, 0), (3, 1, 1), (2, 2, 1)]


# -- helpers ------------------------------------------------------------------

def spaced_values(rng, shape, gap=2e-3):
    """Distinct values with pairwise gaps >= gap, in random order (no max-pool ties)."""
    n = math.prod(shape)
    return (rng.permutation(n) * gap - 0.5 * n * gap).reshape(shape)


def away_from_zero(a, gap=2e-3):
    return np.where(a < 0, -1.0, 1.0) * (np.abs(a) + gap)


def flat_grads(grads: dict, like: dict) -> np.ndarray:
    return np.concatenate([np.asarray(grads[k], dtype=np.float64).ravel() for k in like])


def check_op(op, p, x, route=None, seed=0, rtol=RTOL):
    """Input JVP/VJP and (if any) parameter JVP/gradient of ``op`` at (p, x) vs finite differences."""
    def f(xx):
        return op.forward(p, xx, route)[0]

    def cache(xx):
        return op.forward(p, xx, route)[1]

    nm.check_jvp(f, lambda xx, u: op.jvp(p, cache(xx), u), x, seed=seed, rtol=rtol, name=f"{op.name} jvp")
    nm.check_vjp(f, lambda xx, w: op.vjp(p, cache(xx), w), x, seed=seed, rtol=rtol, name=f"{op.name} vjp")
    if not op.has_params:
        return
    vec, unflat = nm.flat_params(p)
    c = cache(x)

    def fp(v):
        return op.forward(unflat(v), x, route)[0]

    nm.check_jvp(fp, lambda v, dv: op.param_jvp(unflat(v), c, unflat(dv)), vec, seed=seed, rtol=rtol,
                 name=f"{op.name} param_jvp")
    nm.check_vjp(fp, lambda v, w: flat_grads(op.param_grads(unflat(v), c, w), p), vec, seed=seed,
                 rtol=rtol, name=f"{op.name} param_grads")


def random_params(op, rng):
    return {k: rng.standard_normal(s) for k, s in op.param_shapes().items()}


def adjoint_gap(forward, adjoint, u, v):
    """|<A u, v> - <u, A^T v>| relative to ||A u|| ||v|| (and ||u|| ||A^T v||)."""
    Au, Atv = forward(u), adjoint(v)
    lhs, rhs = float(np.vdot(Au, v)), float(np.vdot(u, Atv))
    scale = max(np.linalg.norm(Au) * np.linalg.norm(v), np.linalg.norm(u) * np.linalg.norm(Atv))
    return abs(lhs - rhs) / scale


def conv_case(draw_k_s_p, hw_extra, c_in, c_out):
    k, s, p = draw_k_s_p
    H = max(k - 2 * p, 1) + hw_extra[0]
    W = max(k - 2 * p, 1) + hw_extra[1]
    return k, s, p, (c_in, H, W), c_out


conv_cases = st.builds(conv_case, st.sampled_from(CONV_GEOMETRIES),
                       st.tuples(st.integers(0, 4), st.integers(0, 4)),
                       st.integers(1, 3), st.integers(1, 3))
seeds = st.integers(0, 2**31)
batches = st.integers(1, 3)


# -- Linear -----------------------------------------------------------------------

@given(B=batches, n_in=st.integers(1, 6), n_out=st.integers(1, 6), bias=st.booleans(), seed=seeds)
def test_linear_jvp_vjp_param_grads_match_finite_differences(B, n_in, n_out, bias, seed):
    rng = np.random.default_rng(seed)
    op = Linear(n_in, n_out, bias=bias)
    check_op(op, random_params(op, rng), rng.standard_normal((B, n_in)), seed=seed % 97)


def test_linear_computes_x_wT_plus_b(rng):
    op = Linear(4, 3)
    p = random_params(op, rng)
    x = rng.standard_normal((5, 4))
    nm.assert_allclose(op.forward(p, x)[0], x @ p["weight"].T + p["bias"], rtol=1e-14, name="Linear")
    assert op.inverted().param_shapes() == {"weight": (4, 3), "bias": (4,)}


# -- Conv2d / ConvTranspose2d -----------------------------------------------------

@given(case=conv_cases, B=batches, seed=seeds)
def test_conv2d_jvp_vjp_param_grads_match_finite_differences(case, B, seed):
    k, s, p, in_shape, c_out = case
    rng = np.random.default_rng(seed)
    op = Conv2d(in_shape, c_out, k, s, p)
    check_op(op, random_params(op, rng), rng.standard_normal((B, *in_shape)), seed=seed % 97)


@given(case=conv_cases, B=batches, seed=seeds)
def test_conv_transpose2d_jvp_vjp_param_grads_match_finite_differences(case, B, seed):
    k, s, p, in_shape, c_out = case
    rng = np.random.default_rng(seed)
    op = ConvTranspose2d(in_shape, c_out, k, s, p)
    assert op.out_shape == tuple(in_shape)
    check_op(op, random_params(op, rng), rng.standard_normal((B, *op.in_shape)), seed=seed % 97)


@pytest.mark.parametrize("k, s, p", CONV_GEOMETRIES)
@pytest.mark.parametrize("hw", [(7, 7), (8, 6)])
def test_conv_and_conv_transpose_are_adjoint(k, s, p, hw, rng):
    """<Conv_W u, v> = <u, ConvT_W v> to 1e-12 for the forward conv's weight layout."""
    in_shape = (3, *hw)
    conv = Conv2d(in_shape, 4, k, s, p, bias=False)
    weight = rng.standard_normal((4, 3, k, k))
    u = rng.standard_normal((2, *in_shape))
    v = rng.standard_normal((2, *conv.out_shape))
    gap = adjoint_gap(lambda a: conv2d(a, weight, None, s, p),
                      lambda b: conv_transpose2d(b, weight, None, s, p, out_hw=hw), u, v)
    assert gap <= ADJOINT_RTOL, f"conv adjoint identity off by {gap:.3g} (k={k}, s={s}, p={p}, hw={hw})"


@pytest.mark.parametrize("k, s, p", CONV_GEOMETRIES)
def test_conv_transpose_op_with_forward_weights_equals_conv_vjp(k, s, p, rng):
    in_shape = (2, 7, 6)
    conv = Conv2d(in_shape, 3, k, s, p)
    convT = conv.inverted()
    assert isinstance(convT, ConvTranspose2d)
    assert (convT.in_shape, convT.out_shape) == (conv.out_shape, conv.in_shape)
    weight = rng.standard_normal((3, 2, k, k))
    v = rng.standard_normal((2, *conv.out_shape))
    x_conv = rng.standard_normal((2, *in_shape))
    _, cache = conv.forward({"weight": weight, "bias": np.zeros(3)}, x_conv)
    expected = conv.vjp({"weight": weight}, cache, v)
    got = convT.forward({"weight": weight, "bias": np.zeros(2)}, v)[0]
    nm.assert_allclose(got, expected, rtol=1e-12, atol=1e-12, name="ConvT_W v vs Conv_W^T v")
    assert isinstance(convT.inverted(), Conv2d) and convT.inverted().out_shape == conv.out_shape


def test_conv2d_rejects_a_kernel_larger_than_the_padded_input():
    with pytest.raises(ValueError, match="Conv2d"):
        Conv2d((1, 2, 2), 1, 5, 1, 0)


# -- pools --------------------------------------------------------------------------

pool_cases = st.tuples(st.sampled_from(POOL_GEOMETRIES), st.integers(1, 2),
                       st.integers(0, 3), st.integers(0, 3))


def pool_input(rng, B, C, H, W):
    return spaced_values(rng, (B, C, H, W))


def pool_shape(k, C, extra):
    return (C, k + extra[0], k + extra[1])


@given(case=pool_cases, B=batches, seed=seeds)
def test_maxpool_jvp_vjp_match_finite_differences(case, B, seed):
    (k, s, p), C, eh, ew = case
    rng = np.random.default_rng(seed)
    op = MaxPool2d(pool_shape(k, C, (eh, ew)), k, s, p)
    check_op(op, {}, pool_input(rng, B, *op.in_shape), seed=seed % 97)


@given(case=pool_cases, B=batches, seed=seeds)
def test_maxunpool_jvp_vjp_match_finite_differences_for_given_indices(case, B, seed):
    (k, s, p), C, eh, ew = case
    rng = np.random.default_rng(seed)
    pool = MaxPool2d(pool_shape(k, C, (eh, ew)), k, s, p)
    _, idx = pool.forward({}, pool_input(rng, B, *pool.in_shape))
    unpool = pool.inverted()
    assert isinstance(unpool, MaxUnpool2d) and unpool.needs_route
    check_op(unpool, {}, rng.standard_normal((B, *pool.out_shape)), route=idx, seed=seed % 97)


@pytest.mark.parametrize("k, s, p", POOL_GEOMETRIES)
def test_maxpool_and_unpool_are_adjoint_for_the_same_indices(k, s, p, rng):
    """<Pool_idx u, v> = <u, Unpool_idx v>; overlapping windows need the *summing* un-pool."""
    pool = MaxPool2d((2, 7, 6), k, s, p)
    _, idx = pool.forward({}, pool_input(rng, 2, 2, 7, 6))
    unpool = pool.inverted()
    u = rng.standard_normal((2, 2, 7, 6))
    v = rng.standard_normal((2, *pool.out_shape))
    gap = adjoint_gap(lambda a: gather_plane(a, idx), lambda b: unpool.forward({}, b, idx)[0], u, v)
    assert gap <= ADJOINT_RTOL, f"pool/unpool adjoint identity off by {gap:.3g} (k={k}, s={s}, p={p})"


def test_overlapping_unpool_sums_values_routed_to_the_same_pixel():
    # A 1x3x3 plane: with k=3, s=2, p=1 the centre pixel is the maximum of all 4 windows.
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0
    pool = MaxPool2d((1, 3, 3), 3, 2, 1)
    y, idx = pool.forward({}, x)
    assert y.shape == (1, 1, 2, 2) and np.all(idx == 4), idx
    back = pool.inverted().forward({}, np.full((1, 1, 2, 2), 1.5), idx)[0]
    assert back[0, 0, 1, 1] == 6.0, "overlapping un-pool must sum (adjoint), not overwrite"
    assert back.sum() == 6.0


def test_maxpool_matches_window_maxima_and_pytorch_index_convention(rng):
    x = spaced_values(rng, (2, 3, 4, 6))
    pool = MaxPool2d((3, 4, 6), 2)
    y, idx = pool.forward({}, x)
    expected = x.reshape(2, 3, 2, 2, 3, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(np.take_along_axis(x.reshape(2, 3, -1), idx.reshape(2, 3, -1), 2),
                                  y.reshape(2, 3, -1))  # idx = h * W + w within each plane


def test_maxpool_rejects_padding_over_half_the_window():
    with pytest.raises(ValueError, match="padding"):
        MaxPool2d((1, 6, 6), 2, 2, 2)


def test_maxunpool_rejects_indices_of_the_wrong_shape(rng):
    pool = MaxPool2d((1, 4, 4), 2)
    _, idx = pool.forward({}, spaced_values(rng, (2, 1, 4, 4)))
    with pytest.raises(ValueError, match="indices"):
        pool.inverted().forward({}, rng.standard_normal((1, 1, 2, 2)), idx)


@given(case=pool_cases, B=batches, seed=seeds)
def test_avgpool_and_avgunpool_jvp_vjp_match_finite_differences(case, B, seed):
    (k, s, p), C, eh, ew = case
    rng = np.random.default_rng(seed)
    pool = AvgPool2d(pool_shape(k, C, (eh, ew)), k, s, p)
    check_op(pool, {}, rng.standard_normal((B, *pool.in_shape)), seed=seed % 97)
    unpool = pool.inverted()
    assert isinstance(unpool, AvgUnpool2d) and unpool.inverted() is pool
    check_op(unpool, {}, rng.standard_normal((B, *pool.out_shape)), seed=seed % 97)


@pytest.mark.parametrize("k, s, p", POOL_GEOMETRIES)
def test_avgpool_and_avgunpool_are_adjoint(k, s, p, rng):
    pool = AvgPool2d((2, 7, 6), k, s, p)
    unpool = pool.inverted()
    u = rng.standard_normal((2, 2, 7, 6))
    v = rng.standard_normal((2, *pool.out_shape))
    gap = adjoint_gap(lambda a: pool.forward({}, a)[0], lambda b: unpool.forward({}, b)[0], u, v)
    assert gap <= ADJOINT_RTOL, f"avg pool/unpool adjoint identity off by {gap:.3g}"


def test_avgpool_counts_zero_padding_like_pytorch():
    pool = AvgPool2d((1, 2, 2), 2, 2, 1)  # each 2x2 window holds one real pixel
    y = pool.forward({}, np.ones((1, 1, 2, 2)))[0]
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), 0.25))


# -- Reshape / Flatten / Act --------------------------------------------------------

@given(B=batches, seed=seeds)
def test_reshape_and_flatten_derivatives_and_inverse(B, seed):
    rng = np.random.default_rng(seed)
    op = Reshape((2, 3, 2), (3, 4))
    x = rng.standard_normal((B, 2, 3, 2))
    check_op(op, {}, x)
    back = op.inverted()
    np.testing.assert_array_equal(back.forward({}, op.forward({}, x)[0])[0], x)
    flat = Flatten((2, 3, 2))
    assert flat.out_shape == (12,)
    np.testing.assert_array_equal(flat.forward({}, x)[0], x.reshape(B, 12))  # C order, like torch
    with pytest.raises(ValueError, match="cannot reshape"):
        Reshape((2, 3), (7,))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@given(B=batches, seed=seeds)
def test_act_op_jvp_vjp_match_finite_differences(name, B, seed):
    rng = np.random.default_rng(seed)
    op = Act((2, 3), name)
    check_op(op, {}, away_from_zero(rng.uniform(-2, 2, (B, 2, 3))), seed=seed % 97)
    assert op.inverted().act is op.act, "scalingDTP maps an activation to the same activation"
    assert op.linear == (name == "identity")


# -- dtypes and input validation ------------------------------------------------------

def all_ops():
    pool = MaxPool2d((2, 4, 4), 2)
    avg = AvgPool2d((2, 4, 4), 2)
    conv = Conv2d((2, 4, 4), 3, 3, 2, 1)
    return [Linear(4, 3), conv, conv.inverted(), pool, avg, avg.inverted(), Flatten((2, 4, 4)),
            Act((2, 4, 4), "elu")], pool


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_op_keeps_float32_and_float64(dtype, rng):
    ops, pool = all_ops()
    for op in ops + [pool.inverted()]:
        p = {k: v.astype(dtype) for k, v in op.init_params(rng, dtype).items()}
        assert all(v.dtype == dtype for v in p.values()), f"{op!r} init dtype"
        x = spaced_values(rng, (2, *op.in_shape)).astype(dtype)
        route = pool.forward({}, spaced_values(rng, (2, *pool.in_shape)).astype(dtype))[1] \
            if op.needs_route else None
        y, cache = op.forward(p, x, route)
        dy = rng.standard_normal(y.shape).astype(dtype)
        outs = [y, op.jvp(p, cache, x), op.vjp(p, cache, dy)]
        if op.has_params:
            outs += list(op.param_grads(p, cache, dy).values()) + [op.param_jvp(p, cache, p)]
        for out in outs:
            assert out.dtype == dtype, f"{op!r}: an output has dtype {out.dtype}, not {np.dtype(dtype)}"


@pytest.mark.parametrize("bad, err, pattern", [
    (np.zeros((2, 4, 4)), ValueError, r"expected input of shape \(B, 2, 4, 4\)"),     # wrong rank
    (np.zeros((2, 3, 4, 4)), ValueError, r"expected input of shape \(B, 2, 4, 4\)"),  # channels
    (np.zeros((2, 2, 5, 4)), ValueError, r"expected input of shape \(B, 2, 4, 4\)"),  # height
    (np.zeros((2, 2, 4, 4), dtype=np.int64), TypeError, "float32/float64"),
    (np.zeros((2, 2, 4, 4), dtype=np.float16), TypeError, "float32 or float64"),
    ([[1.0]], TypeError, "expected an array"),
])
def test_ops_reject_bad_inputs_naming_the_layer_and_expected_shape(bad, err, pattern):
    conv = Conv2d((2, 4, 4), 3, 3, 1, 1)
    p = conv.init_params(np.random.default_rng(0), np.float64)
    with pytest.raises(err, match=pattern) as info:
        conv.forward(p, bad)
    assert "Conv2d(2->3" in str(info.value), f"message does not name the layer: {info.value}"


def test_chain_rejects_unconnected_ops_and_two_weight_layers():
    with pytest.raises(ValueError, match="does not connect"):
        Chain([Linear(3, 4), Linear(5, 2)], "bad chain")
    with pytest.raises(ValueError, match="at most one parameterised op"):
        Chain([Linear(3, 4), Linear(4, 2)], "two weights")


@given(seed=seeds)
def test_chain_derivatives_match_finite_differences(seed):
    rng = np.random.default_rng(seed)
    conv = Conv2d((2, 4, 4), 3, 3, 1, 1)
    chain = Chain([conv, Act(conv.out_shape, "tanh"), MaxPool2d(conv.out_shape, 2), Flatten((3, 2, 2))],
                  "test chain")
    p = {k: 0.2 * v for k, v in random_params(conv, rng).items()}  # keep tanh out of saturation
    x = rng.standard_normal((2, 2, 4, 4))
    _, caches = chain.forward(p, x)
    pooled_in = caches[1][1]  # tanh output: the pool's input
    gaps = np.diff(np.sort(pooled_in.reshape(2, 3, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
                           .reshape(2, 3, 2, 2, 4), axis=-1)[..., -2:], axis=-1)
    assume(gaps.min() >= 1e-3)  # a near-tie of the max-pool: finite differences would cross it
    check_op(chain_as_op(chain), p, x, seed=seed % 97)


def chain_as_op(chain):
    """A Chain seen through the Op protocol (parameters of its single weight layer)."""
    class _ChainOp:
        name = chain.where
        has_params = chain.param_op is not None

        def forward(self, p, x, route=None):
            return chain.forward(p, x)

        def jvp(self, p, caches, dx):
            return chain.jvp(p, caches, dx)

        def vjp(self, p, caches, dy):
            return chain.vjp(p, caches, dy)

        def param_grads(self, p, caches, dy):
            return chain.param_grads(p, caches, dy)

        def param_jvp(self, p, caches, dp):
            return chain.param_jvp(p, caches, dp)
    return _ChainOp()
