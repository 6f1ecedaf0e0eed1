"""The vectorised convolution and pooling kernels agree with deliberately naive
Python-loop references (written here from the definitions, tiny sizes)."""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdtp.ops import AvgPool2d, MaxPool2d, col2im, conv2d, conv2d_weight_grad, conv_transpose2d, im2col
from refdtp.ops.conv import conv_output_size

GEOMETRIES = [(1, 1, 0), (2, 2, 0), (3, 1, 0), (3, 1, 1), (3, 2, 1), (3, 3, 0), (4, 2, 1), (5, 1, 2),
              (3, 1, 2)]


# -- naive references ---------------------------------------------------------------

def naive_pad(x, p, value=0.0):
    B, C, H, W = x.shape
    out = np.full((B, C, H + 2 * p, W + 2 * p), value)
    for b, c, h, w in itertools.product(range(B), range(C), range(H), range(W)):
        out[b, c, h + p, w + p] = x[b, c, h, w]
    return out


def naive_conv2d(x, weight, bias, s, p):
    B, C, H, W = x.shape
    C_out, _, k, _ = weight.shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    xp = naive_pad(x, p)
    y = np.zeros((B, C_out, Ho, Wo))
    for b, o, h, w in itertools.product(range(B), range(C_out), range(Ho), range(Wo)):
        total = 0.0 if bias is None else bias[o]
        for c, i, j in itertools.product(range(C), range(k), range(k)):
            total += weight[o, c, i, j] * xp[b, c, s * h + i, s * w + j]
        y[b, o, h, w] = total
    return y


def naive_conv_transpose2d(v, weight, bias, s, p, hw):
    """PyTorch's definition: each input pixel scatters weight-scaled copies of its kernel."""
    B, C_out, Ho, Wo = v.shape
    _, C, k, _ = weight.shape
    H, W = hw
    out = np.zeros((B, C, H + 2 * p, W + 2 * p))
    for b, o, h, w in itertools.product(range(B), range(C_out), range(Ho), range(Wo)):
        for c, i, j in itertools.product(range(C), range(k), range(k)):
            out[b, c, s * h + i, s * w + j] += weight[o, c, i, j] * v[b, o, h, w]
    out = out[:, :, p:p + H, p:p + W]
    if bias is not None:
        for c in range(C):
            out[:, c] += bias[c]
    return out


def naive_weight_grad(x, dy, k, s, p):
    B, C = x.shape[:2]
    C_out, Ho, Wo = dy.shape[1:]
    xp = naive_pad(x, p)
    g = np.zeros((C_out, C, k, k))
    for o, c, i, j in itertools.product(range(C_out), range(C), range(k), range(k)):
        for b, h, w in itertools.product(range(B), range(Ho), range(Wo)):
            g[o, c, i, j] += dy[b, o, h, w] * xp[b, c, s * h + i, s * w + j]
    return g


def naive_im2col(x, k, s, p):
    B, C, H, W = x.shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    xp = naive_pad(x, p)
    col = np.zeros((C * k * k, B * Ho * Wo))
    for c, i, j, b, h, w in itertools.product(range(C), range(k), range(k), range(B), range(Ho), range(Wo)):
        col[(c * k + i) * k + j, (b * Ho + h) * Wo + w] = xp[b, c, s * h + i, s * w + j]
    return col


def naive_col2im(col, shape, k, s, p):
    B, C, H, W = shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    out = np.zeros((B, C, H + 2 * p, W + 2 * p))
    for c, i, j, b, h, w in itertools.product(range(C), range(k), range(k), range(B), range(Ho), range(Wo)):
        out[b, c, s * h + i, s * w + j] += col[(c * k + i) * k + j, (b * Ho + h) * Wo + w]
    return out[:, :, p:p + H, p:p + W]


def naive_maxpool(x, k, s, p):
    """Window maxima scanned in row-major order, first maximum on ties; index h*W + w."""
    B, C, H, W = x.shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    y, idx = np.zeros((B, C, Ho, Wo)), np.zeros((B, C, Ho, Wo), dtype=np.int64)
    for b, c, h, w in itertools.product(range(B), range(C), range(Ho), range(Wo)):
        best, where = -np.inf, None
        for i, j in itertools.product(range(k), range(k)):
            r, q = s * h + i - p, s * w + j - p
            if 0 <= r < H and 0 <= q < W and x[b, c, r, q] > best:
                best, where = x[b, c, r, q], r * W + q
        y[b, c, h, w], idx[b, c, h, w] = best, where
    return y, idx


def naive_avgpool(x, k, s, p):
    xp = naive_pad(x, p)
    B, C, H, W = x.shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    y = np.zeros((B, C, Ho, Wo))
    for b, c, h, w in itertools.product(range(B), range(C), range(Ho), range(Wo)):
        y[b, c, h, w] = xp[b, c, s * h:s * h + k, s * w:s * w + k].sum() / (k * k)
    return y


def close(a, b, what):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=what)


def sizes(k, p, extra):
    base = max(k - 2 * p, 1)
    return base + extra[0], base + extra[1]


extras = st.tuples(st.integers(0, 3), st.integers(0, 3))


# -- tests ------------------------------------------------------------------------------

@pytest.mark.parametrize("k, s, p", GEOMETRIES)
@given(extra=extras, seed=st.integers(0, 2**31))
def test_conv2d_im2col_and_weight_grad_match_naive_loops(k, s, p, extra, seed):
    rng = np.random.default_rng(seed)
    H, W = sizes(k, p, extra)
    x = rng.standard_normal((2, 2, H, W))
    weight, bias = rng.standard_normal((3, 2, k, k)), rng.standard_normal(3)
    y = conv2d(x, weight, bias, s, p)
    close(y, naive_conv2d(x, weight, bias, s, p), f"conv2d k={k} s={s} p={p} H,W={H},{W}")
    close(im2col(x, k, s, p), naive_im2col(x, k, s, p), "im2col")
    dy = rng.standard_normal(y.shape)
    close(conv2d_weight_grad(x, dy, k, s, p), naive_weight_grad(x, dy, k, s, p), "conv2d_weight_grad")


@pytest.mark.parametrize("k, s, p", GEOMETRIES)
@given(extra=extras, seed=st.integers(0, 2**31))
def test_conv_transpose2d_and_col2im_match_naive_loops(k, s, p, extra, seed):
    rng = np.random.default_rng(seed)
    H, W = sizes(k, p, extra)
    Ho, Wo = conv_output_size(H, k, s, p), conv_output_size(W, k, s, p)
    v = rng.standard_normal((2, 3, Ho, Wo))
    weight, bias = rng.standard_normal((3, 2, k, k)), rng.standard_normal(2)
    close(conv_transpose2d(v, weight, bias, s, p, out_hw=(H, W)),
          naive_conv_transpose2d(v, weight, bias, s, p, (H, W)), f"conv_transpose2d k={k} s={s} p={p}")
    col = rng.standard_normal((2 * k * k, 2 * Ho * Wo))
    close(col2im(col, (2, 2, H, W), k, s, p), naive_col2im(col, (2, 2, H, W), k, s, p), "col2im")


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1), (3, 3, 0), (2, 1, 0), (3, 2, 0), (3, 1, 1)])
@given(extra=extras, seed=st.integers(0, 2**31), ties=st.booleans())
def test_maxpool_values_and_indices_match_naive_loops(k, s, p, extra, seed, ties):
    rng = np.random.default_rng(seed)
    H, W = k + extra[0], k + extra[1]
    # With ties (small integers) the index convention matters: first maximum, like PyTorch.
    x = rng.integers(0, 3, (2, 2, H, W)).astype(float) if ties else rng.standard_normal((2, 2, H, W))
    y, idx = MaxPool2d((2, H, W), k, s, p).forward({}, x)
    y_ref, idx_ref = naive_maxpool(x, k, s, p)
    np.testing.assert_array_equal(y, y_ref, err_msg=f"maxpool values k={k} s={s} p={p}")
    np.testing.assert_array_equal(idx, idx_ref, err_msg=f"maxpool indices k={k} s={s} p={p}")


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1), (2, 1, 0), (3, 3, 1)])
@given(extra=extras, seed=st.integers(0, 2**31))
def test_avgpool_matches_naive_loops(k, s, p, extra, seed):
    rng = np.random.default_rng(seed)
    H, W = k + extra[0], k + extra[1]
    x = rng.standard_normal((2, 2, H, W))
    close(AvgPool2d((2, H, W), k, s, p).forward({}, x)[0], naive_avgpool(x, k, s, p), "avgpool")
