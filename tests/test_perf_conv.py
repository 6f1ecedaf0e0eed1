"""The per-sample im2col layout, batched-GEMM conv2d and scratch buffer equal the straightforward
im2col + GEMM path (float64, to round-off) on hypothesis-drawn shapes, and never alias results."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from refdtp.ops import conv as C

TOL = 1e-12


def conv2d_rows(x, weight, bias, stride, padding):
    """The straightforward conv: (C_in k k, B Ho Wo) columns, one GEMM, a transpose copy."""
    C_out, _, k, _ = weight.shape
    B, _, H, W = x.shape
    Ho, Wo = C.conv_output_size(H, k, stride, padding), C.conv_output_size(W, k, stride, padding)
    y = weight.reshape(C_out, -1) @ C.im2col(x, k, stride, padding)
    return C.channels_first(y, B, Ho, Wo, bias)


def weight_grad_rows(x, dy, k, stride, padding):
    cols = C.im2col(x, k, stride, padding)
    return (dy.transpose(1, 0, 2, 3).reshape(dy.shape[1], -1) @ cols.T).reshape(
        dy.shape[1], x.shape[1], k, k)


shapes = dict(seed=st.integers(0, 2 ** 32 - 1), B=st.integers(1, 4), c_in=st.integers(1, 5),
              c_out=st.integers(1, 5), hw=st.integers(1, 9), k=st.sampled_from([1, 2, 3, 5]),
              stride=st.integers(1, 3), padding=st.integers(0, 2), bias=st.booleans())


def _draw(seed, B, c_in, c_out, hw, k, stride, padding):
    if hw + 2 * padding < k:
        return None
    rng = np.random.default_rng(seed)
    Ho = C.conv_output_size(hw, k, stride, padding)
    return (rng.standard_normal((B, c_in, hw, hw)), rng.standard_normal((c_out, c_in, k, k)),
            rng.standard_normal(c_out), rng.standard_normal((B, c_out, Ho, Ho)))


@settings(max_examples=150, deadline=None)
@given(**shapes)
def test_conv2d_equals_the_straightforward_path(seed, B, c_in, c_out, hw, k, stride, padding, bias):
    drawn = _draw(seed, B, c_in, c_out, hw, k, stride, padding)
    if drawn is None:
        return
    x, w, b, dy = drawn
    b = b if bias else None
    expected = conv2d_rows(x, w, b, stride, padding)
    threshold = C.PER_SAMPLE_MIN_PIXELS
    try:
        for C.PER_SAMPLE_MIN_PIXELS in (0, 10 ** 9):  # both layouts: per sample, then rows
            y = C.conv2d(x, w, b, stride, padding)
            assert y.flags.c_contiguous and y.dtype == np.float64
            np.testing.assert_allclose(y, expected, rtol=0, atol=TOL)
    finally:
        C.PER_SAMPLE_MIN_PIXELS = threshold
    np.testing.assert_allclose(C.conv2d_weight_grad(x, dy, k, stride, padding),
                               weight_grad_rows(x, dy, k, stride, padding), rtol=0, atol=TOL)


@settings(max_examples=60, deadline=None)
@given(**shapes)
def test_per_sample_im2col_is_a_transpose_of_the_row_layout(seed, B, c_in, c_out, hw, k, stride,
                                                            padding, bias):
    drawn = _draw(seed, B, c_in, c_out, hw, k, stride, padding)
    if drawn is None:
        return
    x = drawn[0]
    rows = C.im2col(x, k, stride, padding)
    out = np.empty((B, rows.shape[0], rows.shape[1] // B))
    C.im2col(x, k, stride, padding, out=out)
    np.testing.assert_array_equal(out, rows.reshape(rows.shape[0], B, -1).transpose(1, 0, 2))


def test_conv_transpose2d_still_the_adjoint():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((3, 4, 7, 7)), rng.standard_normal((5, 4, 3, 3))
    v = rng.standard_normal((3, 5, 7, 7))
    lhs = (C.conv2d(x, w, None, 1, 1) * v).sum()
    assert abs(lhs - (x * C.conv_transpose2d(v, w, None, 1, 1, (7, 7))).sum()) < 1e-10


def test_results_never_alias_the_scratch_buffer():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3))
    y = C.conv2d(x, w, None, 1, 1)
    g = C.conv2d_weight_grad(x, y, 3, 1, 1)
    y0, g0 = y.copy(), g.copy()
    C.conv2d(10 * x, w, None, 1, 1)  # reuses the scratch buffer
    C.conv2d_weight_grad(x, -y, 3, 1, 1)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(g, g0)


def test_scratch_grows_and_views_the_same_memory():
    a = C.scratch(np, (3, 4), np.float32)
    b = C.scratch(np, (2, 2), np.float64)
    assert a.shape == (3, 4) and b.dtype == np.float64 and np.shares_memory(a, b)
    big = C.scratch(np, (1000, 1000), np.float64)
    assert big.shape == (1000, 1000) and big.flags.c_contiguous


def test_scratch_is_per_thread():
    from concurrent.futures import ThreadPoolExecutor
    main = C.scratch(np, (64,), np.float64)
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(C.scratch, np, (64,), np.float64).result()
    assert not np.shares_memory(main, other)


def test_concurrent_convs_match_serial():
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(3)
    jobs = [(rng.standard_normal((4, 3, 12, 12)), rng.standard_normal((5, 3, 3, 3))) for _ in range(8)]
    serial = [conv2d_rows(x, w, None, 1, 1) for x, w in jobs]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda job: C.conv2d(job[0], job[1], None, 1, 1), jobs * 4))
    for i, y in enumerate(threaded):
        np.testing.assert_allclose(y, serial[i % 8], rtol=0, atol=TOL)
