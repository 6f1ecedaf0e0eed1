"""Winograd F(2x2, 3x3) (refdtp.ops.winograd) equals the direct im2col convolution and its weight
gradient (float64, to round-off) on hypothesis-drawn shapes, odd sides and paddings included;
its transforms satisfy the 1-D F(2, 3) identity; float32 stays within a few ulps of the direct
form; and a planted error in a transform matrix fails the comparison."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from refdtp.ops import conv as C
from refdtp.ops import winograd as wg

TOL = 1e-12  # observed <= 2e-14 relative to the largest output


def direct_conv(x, W, b, padding):
    """The im2col + GEMM convolution, whatever conv2d dispatches to."""
    B, C_out = x.shape[0], W.shape[0]
    Ho, Wo = x.shape[2] + 2 * padding - 2, x.shape[3] + 2 * padding - 2
    return C.channels_first(W.reshape(C_out, -1) @ C.im2col(x, 3, 1, padding), B, Ho, Wo, b)


def direct_weight_grad(x, dy, padding):
    C_out = dy.shape[1]
    cols = C.im2col(x, 3, 1, padding)
    return (dy.transpose(1, 0, 2, 3).reshape(C_out, -1) @ cols.T).reshape(C_out, x.shape[1], 3, 3)


def _max_rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def test_one_dimensional_f23_identity():
    """y = A^T [(G g) * (B^T d)] is the 3-tap correlation y_i = sum_j g_j d_{i+j} (Lavin & Gray Sec. 4)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        g, d = rng.standard_normal(3), rng.standard_normal(4)
        direct = np.array([g @ d[0:3], g @ d[1:4]])
        assert np.allclose(wg.AT @ ((wg.G @ g) * (wg.BT @ d)), direct, rtol=0, atol=1e-14)


def test_kronecker_forms_are_the_nested_transforms():
    rng = np.random.default_rng(1)
    d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    assert np.allclose(wg.KB @ d.ravel(), (wg.BT @ d @ wg.BT.T).ravel(), atol=1e-14)
    assert np.allclose(wg.KG @ g.ravel(), (wg.G @ g @ wg.G.T).ravel(), atol=1e-14)
    m = rng.standard_normal((4, 4))
    assert np.allclose(wg.KA @ m.ravel(), (wg.AT @ m @ wg.AT.T).ravel(), atol=1e-14)


shapes = dict(seed=st.integers(0, 2 ** 32 - 1), B=st.integers(1, 3), c_in=st.integers(1, 5),
              c_out=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9), padding=st.integers(0, 2),
              bias=st.booleans())


def _draw(seed, B, c_in, c_out, h, w, padding):
    assume(min(h, w) + 2 * padding >= 3)  # the kernel fits
    rng = np.random.default_rng(seed)
    Ho, Wo = h + 2 * padding - 2, w + 2 * padding - 2
    return (rng.standard_normal((B, c_in, h, w)), rng.standard_normal((c_out, c_in, 3, 3)),
            rng.standard_normal(c_out), rng.standard_normal((B, c_out, Ho, Wo)))


@given(**shapes)
def test_conv_and_weight_grad_equal_the_direct_form(seed, B, c_in, c_out, h, w, padding, bias):
    x, W, b, dy = _draw(seed, B, c_in, c_out, h, w, padding)
    b = b if bias else None
    assert _max_rel(wg.conv2d(x, W, b, padding), direct_conv(x, W, b, padding)) <= TOL
    assert _max_rel(wg.conv2d_weight_grad(x, dy, padding), direct_weight_grad(x, dy, padding)) <= TOL


@given(**shapes)
def test_transforms_accept_channel_major_views(seed, B, c_in, c_out, h, w, padding, bias):
    """The L-DRL plan feeds transposed (C, B, H, W) workspaces: same results as contiguous inputs."""
    x, _, _, dy = _draw(seed, B, c_in, c_out, h, w, padding)
    xpad = wg.padded_input(x, padding)
    th, tw = wg.tile_counts(*dy.shape[2:])
    T = B * th * tw
    work = np.empty(wg.input_work_size(xpad.shape) + 4 * max(c_in, c_out) * T)
    V = wg.input_transform(xpad, np.empty((16, c_in, T)), work).copy()
    cm = np.ascontiguousarray(xpad.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    assert np.array_equal(wg.input_transform(cm, np.empty((16, c_in, T)), work), V)
    U = wg.gradient_transform(dy, np.empty((16, c_out, T)), work).copy()
    dy_cm = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    assert np.array_equal(wg.gradient_transform(dy_cm, np.empty((16, c_out, T)), work), U)
    out = np.empty((c_out, B) + dy.shape[2:]).transpose(1, 0, 2, 3)
    M = np.random.default_rng(seed).standard_normal((16, c_out, T))
    assert np.array_equal(wg.output_transform(M, out, work), wg.output_transform(M, np.empty(dy.shape), work))


def test_float32_stays_close_to_the_direct_form():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 32, 16, 16)).astype(np.float32)
    W = rng.standard_normal((48, 32, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((8, 48, 16, 16)).astype(np.float32)
    exact = direct_conv(x.astype(np.float64), W.astype(np.float64), None, 1)
    # the direct float32 form's own error, times a small factor: F(2x2, 3x3) loses about a bit
    budget = 4 * _max_rel(direct_conv(x, W, None, 1), exact)
    assert wg.conv2d(x, W, None, 1).dtype == np.float32
    assert _max_rel(wg.conv2d(x, W, None, 1), exact) <= budget
    exact_g = direct_weight_grad(x.astype(np.float64), dy.astype(np.float64), 1)
    assert _max_rel(wg.conv2d_weight_grad(x, dy, 1), exact_g) <= 4 * _max_rel(
        direct_weight_grad(x, dy, 1), exact_g)


def test_only_3x3_stride_1_is_supported():
    assert wg.supported(3, 1)
    assert not any(wg.supported(k, s) for k, s in [(3, 2), (1, 1), (5, 1), (2, 1)])


@pytest.mark.parametrize("name", ["BT", "G", "AT"])
def test_a_wrong_transform_matrix_fails_the_comparison(name, monkeypatch):
    """Meta-test: one entry of one F(2, 3) matrix off by 1e-6 is caught far above TOL."""
    rng = np.random.default_rng(3)
    x, W, dy = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(
        (2, 4, 6, 6))
    wrong = getattr(wg, name).copy()
    wrong[1, 1] += 1e-6
    mats = {"BT": wg.BT, "G": wg.G, "AT": wg.AT, name: wrong}
    monkeypatch.setattr(wg, "KB", np.kron(mats["BT"], mats["BT"]))
    monkeypatch.setattr(wg, "KG", np.kron(mats["G"], mats["G"]))
    monkeypatch.setattr(wg, "KA", np.kron(mats["AT"], mats["AT"]))
    monkeypatch.setattr(wg, "_CONSTANTS", {})
    errors = (_max_rel(wg.conv2d(x, W, None, 1), direct_conv(x, W, None, 1)),
              _max_rel(wg.conv2d_weight_grad(x, dy, 1), direct_weight_grad(x, dy, 1)))
    assert max(errors) > 1e3 * TOL


def test_conv2d_dispatches_to_winograd_from_the_channel_threshold(monkeypatch):
    """From the threshold on, conv2d, its adjoint and its weight gradient run Winograd (and equal the
    im2col forms); below it they do not. The threshold is lowered so that the test stays small."""
    monkeypatch.setattr(C, "WINOGRAD_MIN_CHANNELS", 4)
    calls = []
    for name in ("conv2d", "conv2d_weight_grad"):
        original = getattr(wg, name)
        monkeypatch.setattr(wg, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    rng = np.random.default_rng(4)
    x, W, dy = rng.standard_normal((2, 4, 6, 6)), rng.standard_normal((5, 4, 3, 3)), rng.standard_normal(
        (2, 5, 6, 6))
    assert _max_rel(C.conv2d(x, W, None, 1, 1), direct_conv(x, W, None, 1)) <= TOL and calls == ["conv2d"]
    adjoint = C.col2im(W.reshape(5, -1).T @ dy.transpose(1, 0, 2, 3).reshape(5, -1), x.shape, 3, 1, 1)
    assert _max_rel(C.conv_transpose2d(dy, W, None, 1, 1, (6, 6)), adjoint) <= TOL and calls[-1] == "conv2d"
    grad = direct_weight_grad(x, dy, 1)
    assert _max_rel(C.conv2d_weight_grad(x, dy, 3, 1, 1), grad) <= TOL and calls[-1] == "conv2d_weight_grad"
    n = len(calls)
    C.conv2d(x[:, :3], W[:, :3], None, 1, 1)  # 3 input channels: below the threshold
    C.conv2d(x, W, None, 2, 1)  # stride 2: not F(2x2, 3x3)
    assert len(calls) == n
