"""2-D convolution and its exact adjoint, the transposed convolution.

Layout: activations NCHW, weights (C_out, C_in, k, k) as in PyTorch. The
convolution is an im2col + GEMM:

    col[(c, i, j), (b, h, w)] = x_pad[b, c, s*h + i, s*w + j]      (C_in k k, B Ho Wo)
    y[b, o, h, w]             = sum_{c,i,j} W[o, c, i, j] col[(c,i,j), (b,h,w)] + bias[o]

im2col is one strided view of the padded input and one copy (the only loop
is over kernel offsets in col2im, never over pixels, samples or channels).
:func:`conv2d` lays the patches out per sample instead, col[b, (c, i, j), (h, w)],
so that one batched GEMM W @ col[b] writes NCHW directly (no transpose copy
after the GEMM), when the images are large enough (``PER_SAMPLE_MIN_PIXELS``);
:func:`conv2d_weight_grad` keeps the (c i j, b h w) layout, whose contraction
over (b, h, w) is one GEMM. Both copy the patches into a
reused scratch buffer (:func:`scratch`) instead of a fresh allocation.
3x3 stride-1 convolutions with many channels (``WINOGRAD_MIN_CHANNELS``) take
Winograd F(2x2, 3x3) instead (:mod:`refdtp.ops.winograd`, 2.25x fewer
multiplications; equal to this path to round-off, tests/test_winograd.py).
The convolution's adjoint ``conv_transpose2d`` is what the feedback path G uses
(ConvTranspose2d with the forward conv's weight layout, scalingDTP's
`invert`), and what back-propagation uses for the input gradient.
"""
from __future__ import annotations

from ..backend import array_module
from . import winograd
from .base import Op, check_input
from .linear import uniform_init
from .scratch import scratch


def conv_output_size(n: int, k: int, stride: int, padding: int) -> int:
    """Output length of a convolution: floor((n + 2p - k) / s) + 1."""
    return (n + 2 * padding - k) // stride + 1


def pad2d(x, p: int, out=None):
    """Zero-pad the two spatial axes of (B, C, H, W) by ``p`` on each side.

    Args:
        out: optional (B, C, H+2p, W+2p) destination of any strides whose
            border is already zero (a reused workspace): only its interior is written.
    """
    xp = array_module(x)
    if out is not None:
        H, W = x.shape[2:]
        out[:, :, p:p + H, p:p + W] = x
        return out
    if p == 0:
        return xp.ascontiguousarray(x)
    B, C, H, W = x.shape
    out = xp.zeros((B, C, H + 2 * p, W + 2 * p), dtype=x.dtype)
    out[:, :, p:p + H, p:p + W] = x
    return out


#: Output pixels per sample from which :func:`conv2d` runs one GEMM per sample (NCHW out, no
#: transpose copy). Below, the per-sample GEMMs get too thin: at batch 128, float32, 1 thread
#: (loaded host) 3->128 @32x32 45 -> 26 ms, 128->128 @16x16 197 -> 158 ms, 128->256 @8x8 74 -> 69 ms,
#: but 256->256 @4x4 35 -> 42 ms and 256->512 @2x2 19 -> 57 ms.
PER_SAMPLE_MIN_PIXELS = 64

#: Channels (input and output) from which 3x3 stride-1 convolutions and their weight gradients run
#: by Winograd F(2x2, 3x3) (refdtp.ops.winograd). Batch 128, float32, 1 thread, loaded host, direct ->
#: Winograd: 128->128 @16x16 conv 146 -> 145 ms, weight gradient 183 -> 128 ms; 256->256 @4x4 36 -> 30
#: and 40 -> 28 ms; but 32->32 @16x16 15 -> 21 and 19 -> 23 ms, 3->128 @32x32 71 -> 207 ms: below
#: this the transforms outweigh the 2.25x fewer multiplications.
WINOGRAD_MIN_CHANNELS = 128


def use_winograd(k: int, stride: int, c_in: int, c_out: int) -> bool:
    """Whether :func:`conv2d` and :func:`conv2d_weight_grad` take the Winograd path."""
    return winograd.supported(k, stride) and min(c_in, c_out) >= WINOGRAD_MIN_CHANNELS

def im2col(x, k: int, stride: int, padding: int, out=None):
    """Patches of x as columns.

    Args:
        x: (B, C, H, W).
        out: optional (C*k*k, B*Ho*Wo) destination, e.g. one half of a wider
            buffer (any row stride; unit column stride); or a contiguous
            (B, C*k*k, Ho*Wo) one for the per-sample layout col[b, (c, i, j), (h, w)].
    Returns:
        col: (C*k*k, B*Ho*Wo), rows ordered (c, i, j), columns (b, h, w); or ``out``.
    """
    return im2col_padded(pad2d(x, padding), k, stride, out)


def im2col_padded(xpad, k: int, stride: int, out=None):
    """:func:`im2col` of an already zero-padded (B, C, Hp, Wp) array of any strides.

    One strided view of ``xpad`` and one copy; ``xpad`` may be a transposed
    view of a channel-major (C, B, Hp, Wp) workspace.
    """
    xp = array_module(xpad)
    B, C, Hp, Wp = xpad.shape
    Ho, Wo = (Hp - k) // stride + 1, (Wp - k) // stride + 1
    sb, sc, sh, sw = xpad.strides
    windows = xp.lib.stride_tricks.as_strided(
        xpad, shape=(C, k, k, B, Ho, Wo),
        strides=(sc, sh, sw, sb, sh * stride, sw * stride))
    if out is None:
        return windows.reshape(C * k * k, B * Ho * Wo)  # copies
    if out.ndim == 3:  # per-sample layout col[b, (c, i, j), (h, w)]
        if out.shape != (B, C * k * k, Ho * Wo) or not out.flags.c_contiguous:
            raise ValueError(f"im2col: out must be a contiguous ({B}, {C * k * k}, {Ho * Wo}) array")
        out.reshape(B, C, k, k, Ho, Wo)[...] = windows.transpose(3, 0, 1, 2, 4, 5)
        return out
    if out.shape != (C * k * k, B * Ho * Wo) or out.strides[1] != out.itemsize:
        raise ValueError(f"im2col: out must be ({C * k * k}, {B * Ho * Wo}) with unit column stride")
    r, c = out.strides
    dest = xp.lib.stride_tricks.as_strided(
        out, shape=(C, k, k, B, Ho, Wo), strides=(k * k * r, k * r, r, Ho * Wo * c, Wo * c, c))
    dest[...] = windows
    return out


def col2im(col, x_shape: tuple, k: int, stride: int, padding: int):
    """Adjoint of :func:`im2col`: sums each column entry back to its pixel.

    Args:
        col: (C*k*k, B*Ho*Wo).
        x_shape: (B, C, H, W) of the image that im2col read.
    Returns:
        (B, C, H, W).
    """
    xp = array_module(col)
    B, C, H, W = x_shape
    Ho, Wo = conv_output_size(H, k, stride, padding), conv_output_size(W, k, stride, padding)
    g = col.reshape(C, k, k, B, Ho, Wo)
    out = xp.zeros((C, B, H + 2 * padding, W + 2 * padding), dtype=col.dtype)
    for i in range(k):  # loop over kernel offsets only
        for j in range(k):
            out[:, :, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride] += g[:, i, j]
    out = out[:, :, padding:padding + H, padding:padding + W]
    return xp.ascontiguousarray(out.transpose(1, 0, 2, 3))


def channels_first(y, B: int, Ho: int, Wo: int, bias=None):
    """(C, B*Ho*Wo) GEMM output -> contiguous (B, C, Ho, Wo), adding a bias on the way."""
    xp = array_module(y)
    C = y.shape[0]
    view = y.reshape(C, B, Ho, Wo).transpose(1, 0, 2, 3)
    out = xp.empty((B, C, Ho, Wo), dtype=y.dtype)
    if bias is None:
        out[...] = view
    else:
        xp.add(view, bias.reshape(1, C, 1, 1), out=out)
    return out


def conv2d(x, weight, bias=None, stride: int = 1, padding: int = 0):
    """y = Conv_W(x) + b.

    Args:
        x: (B, C_in, H, W).
        weight: (C_out, C_in, k, k).
        bias: (C_out,) or None.
    Returns:
        (B, C_out, Ho, Wo).
    """
    xp = array_module(x)
    C_out, C_in, k, _ = weight.shape
    if use_winograd(k, stride, C_in, C_out):
        return winograd.conv2d(x, weight, bias, padding)
    B, _, H, W = x.shape
    Ho, Wo = conv_output_size(H, k, stride, padding), conv_output_size(W, k, stride, padding)
    if Ho * Wo < PER_SAMPLE_MIN_PIXELS:
        col = im2col(x, k, stride, padding, out=scratch(xp, (C_in * k * k, B * Ho * Wo), x.dtype))
        return channels_first(weight.reshape(C_out, -1) @ col, B, Ho, Wo, bias)
    col = im2col(x, k, stride, padding, out=scratch(xp, (B, C_in * k * k, Ho * Wo), x.dtype))
    y = xp.matmul(weight.reshape(C_out, -1), col)  # (B, C_out, Ho*Wo): one GEMM per sample, NCHW
    if bias is not None:
        y += bias.reshape(1, C_out, 1)
    return y.reshape(B, C_out, Ho, Wo)


def conv_transpose2d(v, weight, bias=None, stride: int = 1, padding: int = 0, out_hw=None):
    """x = Conv_W^T(v) + c, the adjoint of :func:`conv2d` (bias aside).

    <Conv_W(u), v> = <u, Conv_W^T(v)> for every u, v.

    Args:
        v: (B, C_out, Ho, Wo).
        weight: (C_out, C_in, k, k), the *forward* conv's layout.
        bias: (C_in,) or None.
        out_hw: (H, W) of the conv input; needed when the stride makes it ambiguous.
    Returns:
        (B, C_in, H, W).
    """
    C_out, C_in, k, _ = weight.shape
    B, _, Ho, Wo = v.shape
    H, W = out_hw if out_hw is not None else ((Ho - 1) * stride - 2 * padding + k,) * 2
    if stride == 1 and padding <= k - 1:
        # Stride 1: the adjoint is a convolution with the flipped, channel-
        # swapped kernel and padding k-1-p (im2col is cheaper than col2im).
        xp = array_module(v)
        flipped = xp.ascontiguousarray(weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        return conv2d(v, flipped, bias, 1, k - 1 - padding)
    v_rows = v.transpose(1, 0, 2, 3).reshape(C_out, -1)  # (C_out, B*Ho*Wo)
    col = weight.reshape(C_out, -1).T @ v_rows  # (C_in*k*k, B*Ho*Wo)
    x = col2im(col, (B, C_in, H, W), k, stride, padding)
    if bias is not None:
        x += bias.reshape(1, C_in, 1, 1)
    return x


def conv2d_weight_grad(x, dy, k: int, stride: int = 1, padding: int = 0):
    """d<dy, Conv_W(x)>/dW = sum_{b,h,w} dy[b,o,h,w] x_pad[b,c,s h+i,s w+j].

    Args:
        x: (B, C_in, H, W); dy: (B, C_out, Ho, Wo).
    Returns:
        (C_out, C_in, k, k).
    """
    C_out, (B, C_in, H, W) = dy.shape[1], x.shape
    if use_winograd(k, stride, C_in, C_out):
        return winograd.conv2d_weight_grad(x, dy, padding)
    n = B * conv_output_size(H, k, stride, padding) * conv_output_size(W, k, stride, padding)
    col = im2col(x, k, stride, padding, out=scratch(array_module(x), (C_in * k * k, n), x.dtype))
    dy_rows = dy.transpose(1, 0, 2, 3).reshape(C_out, -1)  # (C_out, B*Ho*Wo)
    return (dy_rows @ col.T).reshape(C_out, C_in, k, k)


class Conv2d(Op):
    """y = Conv_W(x) + b, stride s, zero padding p.

    Args:
        in_shape: (C_in, H, W) per sample.
        c_out: output channels.
        k: kernel size; stride, padding: as in PyTorch.

    Parameters: ``weight`` (C_out, C_in, k, k), ``bias`` (C_out,).
    """
    linear = True

    def __init__(self, in_shape: tuple, c_out: int, k: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        c_in, H, W = in_shape
        self.c_in, self.c_out, self.k, self.stride, self.padding = c_in, int(c_out), k, stride, padding
        self.bias = bias
        self.in_shape = tuple(in_shape)
        self.out_shape = (self.c_out, conv_output_size(H, k, stride, padding),
                          conv_output_size(W, k, stride, padding))
        if min(self.out_shape[1:]) < 1:
            raise ValueError(f"Conv2d: kernel {k} does not fit input {in_shape} with padding {padding}")
        self.name = f"Conv2d({c_in}->{c_out}, k={k}, s={stride}, p={padding})"

    def flops_per_sample(self) -> int:
        """2 C_out C_in k^2 Ho Wo: multiply-adds of the GEMM (as many for the
        input gradient, the weight gradient and the conv-transpose)."""
        _, Ho, Wo = self.out_shape
        return 2 * self.c_out * self.c_in * self.k * self.k * Ho * Wo

    def param_shapes(self) -> dict:
        shapes = {"weight": (self.c_out, self.c_in, self.k, self.k)}
        if self.bias:
            shapes["bias"] = (self.c_out,)
        return shapes

    def init_params(self, rng, dtype) -> dict:
        fan_in = self.c_in * self.k * self.k
        return {n: uniform_init(rng, s, fan_in, dtype) for n, s in self.param_shapes().items()}

    def forward(self, p, x, route=None):
        """x: (B, C_in, H, W) -> (B, C_out, Ho, Wo). Cache: x."""
        check_input(x, self.in_shape, self.name)
        return conv2d(x, p["weight"], p.get("bias"), self.stride, self.padding), x

    def jvp(self, p, x, dx):
        return conv2d(dx, p["weight"], None, self.stride, self.padding)

    def vjp(self, p, x, dy):
        return conv_transpose2d(dy, p["weight"], None, self.stride, self.padding, self.in_shape[1:])

    def param_grads(self, p, x, dy) -> dict:
        grads = {"weight": conv2d_weight_grad(x, dy, self.k, self.stride, self.padding)}
        if "bias" in p:
            grads["bias"] = dy.sum(axis=(0, 2, 3))
        return grads

    def param_jvp(self, p, x, dp):
        return conv2d(x, dp["weight"], dp.get("bias"), self.stride, self.padding)

    def inverted(self) -> ConvTranspose2d:
        """ConvTranspose2d(C_out -> C_in) with its own weights, same layout and geometry."""
        return ConvTranspose2d(self.in_shape, self.c_out, self.k, self.stride, self.padding, self.bias)


class ConvTranspose2d(Op):
    """x = Conv_w^T(v) + c: the adjoint of a Conv2d of the given geometry.

    Built from the *forward* conv's geometry, so that with w = W it is exactly
    the transpose of that conv. Maps (C_out, Ho, Wo) -> (C_in, H, W).

    Args:
        conv_in_shape: (C_in, H, W), the forward conv's input shape (this op's output).
        conv_c_out: the forward conv's output channels (this op's input channels).
        k, stride, padding: the forward conv's.

    Parameters: ``weight`` (C_out, C_in, k, k) (PyTorch's ConvTranspose2d
    layout), ``bias`` (C_in,).
    """
    linear = True

    def __init__(self, conv_in_shape: tuple, conv_c_out: int, k: int, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        self.conv = Conv2d(conv_in_shape, conv_c_out, k, stride, padding, bias=False)
        self.k, self.stride, self.padding, self.bias = k, stride, padding, bias
        self.in_shape, self.out_shape = self.conv.out_shape, self.conv.in_shape
        self.name = f"ConvTranspose2d({conv_c_out}->{conv_in_shape[0]}, k={k}, s={stride}, p={padding})"

    def flops_per_sample(self) -> int:
        return self.conv.flops_per_sample()

    def param_shapes(self) -> dict:
        shapes = dict(self.conv.param_shapes())
        if self.bias:
            shapes["bias"] = (self.out_shape[0],)
        return shapes

    def init_params(self, rng, dtype) -> dict:
        # PyTorch takes fan_in from weight dim 1 (the forward C_in) times k^2.
        fan_in = self.out_shape[0] * self.k * self.k
        return {n: uniform_init(rng, s, fan_in, dtype) for n, s in self.param_shapes().items()}

    def forward(self, p, v, route=None):
        """v: (B, C_out, Ho, Wo) -> (B, C_in, H, W). Cache: v."""
        check_input(v, self.in_shape, self.name)
        x = conv_transpose2d(v, p["weight"], p.get("bias"), self.stride, self.padding, self.out_shape[1:])
        return x, v

    def jvp(self, p, v, dv):
        return conv_transpose2d(dv, p["weight"], None, self.stride, self.padding, self.out_shape[1:])

    def vjp(self, p, v, dx):
        return conv2d(dx, p["weight"], None, self.stride, self.padding)

    def param_grads(self, p, v, dx) -> dict:
        """d<dx, Conv_w^T v>/dw = d<Conv_w dx, v>/dw: a conv weight gradient with input dx."""
        grads = {"weight": conv2d_weight_grad(dx, v, self.k, self.stride, self.padding)}
        if "bias" in p:
            grads["bias"] = dx.sum(axis=(0, 2, 3))
        return grads

    def param_jvp(self, p, v, dp):
        return conv_transpose2d(v, dp["weight"], dp.get("bias"), self.stride, self.padding,
                                self.out_shape[1:])

    def inverted(self) -> Conv2d:
        return Conv2d(self.out_shape, self.in_shape[0], self.k, self.stride, self.padding, self.bias)
