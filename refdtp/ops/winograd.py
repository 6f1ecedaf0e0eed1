"""Winograd minimal filtering F(2x2, 3x3) for 3x3 stride-1 convolutions (Lavin & Gray 2016).

1-D F(2, 3) computes the two outputs y_i = sum_j g_j d_{i+j} of a 3-tap filter over 4
inputs with 4 multiplications instead of 6:

    y = A^T [(G g) * (B^T d)]                    (Lavin & Gray 2016, Sec. 4, F(2, 3))

Nesting it gives F(2x2, 3x3): a 4x4 input tile d at stride 2 yields a 2x2 output tile,
Y = A^T [(G g G^T) * (B^T d B)] A. On tiles flattened row-major (index xi = 4 a + b) the
nesting is a Kronecker product, which is how this module writes it:

    V = KB vec(d)  (16,),   U = KG vec(g)  (16,),   vec(Y) = KA (U * V)  (4,)
    KB = B^T (x) B^T  (16, 16),   KG = G (x) G  (16, 9),   KA = A^T (x) A^T  (4, 16)

With C_in -> C_out channels the channel sum moves inside the product, so a whole
convolution is 16 GEMMs, one per xi, over T = B * tiles columns:

    M[xi] = U[xi] @ V[xi]      (C_out, C_in) @ (C_in, T)

16 C_out C_in T multiply-adds against the direct (im2col) form's 36 C_out C_in T
(9 per output pixel, 4 pixels per tile): 2.25x fewer.

The weight gradient follows from the same bilinear form: <dy, KA (U * V)> differentiated in
g gives dg = KG^T [(KA^T dy) * V], so, summed over tiles and batch,

    dW[:, :, xi] = (KA^T dy)[xi] @ V[xi]^T     then  dW = KG^T dW  (16 -> 3x3)

which reuses the forward's input transform V (the L-DRL conv plan computes it once per
iteration for both). Outputs of odd size take one more tile row/column, computed and
cropped (forward) or fed zeros (gradient). In float64 the results equal the direct
convolution to round-off; the transform entries are 0, +-1 and +-1/2, so float32 loses
about one bit against the direct form (docs/algorithm.md §4.3).
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from .scratch import device_key, scratch

#: F(2, 3) matrices (Lavin & Gray 2016, Sec. 4).
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
KB, KG, KA = np.kron(BT, BT), np.kron(G, G), np.kron(AT, AT)

_CONSTANTS: dict = {}


def transform_matrix(xp, name: str, dtype):
    """KB, KG, KA or their transposes ("KG.T", "KA.T") as a contiguous ``xp`` array of ``dtype``."""
    key = (xp.__name__, device_key(xp), name, np.dtype(dtype).str)
    if key not in _CONSTANTS:
        base = {"KB": KB, "KG": KG, "KA": KA}[name.split(".")[0]]
        matrix = np.ascontiguousarray(base.T if name.endswith(".T") else base)
        _CONSTANTS[key] = xp.asarray(matrix, dtype=dtype)
    return _CONSTANTS[key]


def supported(k: int, stride: int) -> bool:
    """F(2x2, 3x3) applies to 3x3 kernels at stride 1 (any zero padding)."""
    return k == 3 and stride == 1


def tile_counts(Ho: int, Wo: int) -> tuple[int, int]:
    """(th, tw): 2x2 output tiles per column and row, one more where the size is odd."""
    return (Ho + 1) // 2, (Wo + 1) // 2


def padded_input(x, padding: int):
    """x (B, C, H, W) zero-padded by ``padding`` and up to the tiles' (B, C, 2 th + 2, 2 tw + 2)."""
    xp = array_module(x)
    B, C, H, W = x.shape
    th, tw = tile_counts(H + 2 * padding - 2, W + 2 * padding - 2)
    out = xp.zeros((B, C, 2 * th + 2, 2 * tw + 2), dtype=x.dtype)
    out[:, :, padding:padding + H, padding:padding + W] = x
    return out


def input_transform(xpad, out, work):
    """V = KB vec(d) for every 4x4 tile of a padded input, tiles at stride 2.

    Args:
        xpad: (B, C, 2 th + 2, 2 tw + 2), any strides (e.g. a transposed channel-major buffer).
        out: (16, C, T) contiguous destination, T = B th tw ordered (b, ti, tj).
        work: flat scratch of at least ``input_work_size(xpad.shape)`` elements of xpad's dtype.
    Returns:
        out.
    """
    xp = array_module(xpad)
    B, C, Hp, Wp = xpad.shape
    th, tw = Hp // 2 - 1, Wp // 2 - 1
    # Polyphase copy first (rows and columns split by parity), so that every tile element
    # is a unit-stride slice: gathering straight from xpad reads at stride 2 (1.5x slower).
    n_poly = 4 * C * B * (th + 1) * (tw + 1)
    poly = work[:n_poly].reshape(2, 2, C, B, th + 1, tw + 1)
    poly[...] = xpad.reshape(B, C, th + 1, 2, tw + 1, 2).transpose(3, 5, 1, 0, 2, 4)
    tiles = work[n_poly:n_poly + 16 * C * B * th * tw].reshape(4, 4, C, B, th, tw)
    for a in range(4):
        for b in range(4):
            tiles[a, b] = poly[a % 2, b % 2, :, :, a // 2:a // 2 + th, b // 2:b // 2 + tw]
    xp.matmul(transform_matrix(xp, "KB", xpad.dtype), tiles.reshape(16, -1), out=out.reshape(16, -1))
    return out


def input_work_size(xpad_shape: tuple) -> int:
    """Scratch elements :func:`input_transform` needs for an input of this shape."""
    B, C, Hp, Wp = xpad_shape
    return B * C * Hp * Wp + 16 * B * C * (Hp // 2 - 1) * (Wp // 2 - 1)


def filter_transform(w):
    """U = KG vec(g) for every (C_out, C_in) 3x3 kernel: (C_out, C_in, 3, 3) -> (16, C_out, C_in)."""
    xp = array_module(w)
    C_out, C_in = w.shape[:2]
    return (transform_matrix(xp, "KG", w.dtype) @ w.reshape(C_out * C_in, 9).T).reshape(16, C_out, C_in)


def output_transform(M, out, work, bias=None, add=None):
    """Y = KA M: the 2x2 output tiles, cropped into ``out`` (+ ``add``, + bias).

    Args:
        M: (16, C, T) transformed-domain products, T = B th tw ordered (b, ti, tj).
        out: (B, C, Ho, Wo) destination of any strides, Ho in {2 th - 1, 2 th}, Wo likewise.
        work: flat scratch of at least 4 C T elements.
        bias: (C,) or None; add: (B, C, Ho, Wo) or None, added on the way.
    Returns:
        out.
    """
    xp = array_module(M)
    _, C, T = M.shape
    B, _, Ho, Wo = out.shape
    th, tw = tile_counts(Ho, Wo)
    Y = work[:4 * C * T].reshape(4, C * T)
    xp.matmul(transform_matrix(xp, "KA", M.dtype), M.reshape(16, -1), out=Y)
    Y = Y.reshape(2, 2, C, B, th, tw)
    for a in range(2):
        for b in range(2):
            rows, cols = (Ho - a + 1) // 2, (Wo - b + 1) // 2
            tile = Y[a, b, :, :, :rows, :cols].transpose(1, 0, 2, 3)  # (B, C, rows, cols)
            dest = out[:, :, a::2, b::2]
            if add is None:
                dest[...] = tile
            else:
                xp.add(tile, add[:, :, a::2, b::2], out=dest)
            if bias is not None:
                dest += bias.reshape(1, C, 1, 1)
    return out


def gradient_transform(dy, out, work):
    """KA^T vec(dy tile) for every 2x2 tile of an output gradient (zeros beyond odd edges).

    Args:
        dy: (B, C, Ho, Wo), any strides.
        out: (16, C, T) contiguous destination, T = B th tw.
        work: flat scratch of at least 4 C T elements.
    Returns:
        out.
    """
    xp = array_module(dy)
    B, C, Ho, Wo = dy.shape
    th, tw = tile_counts(Ho, Wo)
    tiles = work[:4 * C * B * th * tw].reshape(2, 2, C, B, th, tw)
    if Ho % 2 or Wo % 2:
        tiles[...] = 0
    for a in range(2):
        for b in range(2):
            part = dy[:, :, a::2, b::2]
            tiles[a, b, :, :, :part.shape[2], :part.shape[3]] = part.transpose(1, 0, 2, 3)
    xp.matmul(transform_matrix(xp, "KA.T", dy.dtype), tiles.reshape(4, -1), out=out.reshape(16, -1))
    return out


def weight_from_transformed(M):
    """dW = KG^T M back to kernels: (16, C_out, C_in) -> (C_out, C_in, 3, 3)."""
    xp = array_module(M)
    _, C_out, C_in = M.shape
    dW = transform_matrix(xp, "KG.T", M.dtype) @ M.reshape(16, -1)  # (9, C_out C_in)
    return xp.ascontiguousarray(dW.reshape(3, 3, C_out, C_in).transpose(2, 3, 0, 1))


def conv2d(x, weight, bias=None, padding: int = 0):
    """y = Conv_W(x) + b for a 3x3 kernel at stride 1, by F(2x2, 3x3).

    Args:
        x: (B, C_in, H, W); weight: (C_out, C_in, 3, 3); bias: (C_out,) or None.
    Returns:
        (B, C_out, H + 2p - 2, W + 2p - 2).
    """
    xp = array_module(x)
    B, C_in, H, W = x.shape
    C_out = weight.shape[0]
    Ho, Wo = H + 2 * padding - 2, W + 2 * padding - 2
    xpad = padded_input(x, padding)
    th, tw = tile_counts(Ho, Wo)
    T = B * th * tw
    # One scratch region for every temporary: [V | M | the transforms' work].
    n_v, n_m = 16 * C_in * T, 16 * C_out * T
    buf = scratch(xp, (n_v + n_m + max(input_work_size(xpad.shape), 4 * C_out * T),), x.dtype)
    V, M, work = buf[:n_v].reshape(16, C_in, T), buf[n_v:n_v + n_m].reshape(16, C_out, T), buf[n_v + n_m:]
    xp.matmul(filter_transform(weight), input_transform(xpad, V, work), out=M)
    return output_transform(M, xp.empty((B, C_out, Ho, Wo), dtype=x.dtype), work, bias)


def conv2d_weight_grad(x, dy, padding: int = 0):
    """d<dy, Conv_W(x)>/dW for a 3x3 kernel at stride 1, by F(2x2, 3x3) (module docstring).

    Args:
        x: (B, C_in, H, W); dy: (B, C_out, Ho, Wo).
    Returns:
        (C_out, C_in, 3, 3).
    """
    xp = array_module(x)
    B, C_in = x.shape[:2]
    C_out, Ho, Wo = dy.shape[1:]
    th, tw = tile_counts(Ho, Wo)
    T = B * th * tw
    xpad = padded_input(x, padding)
    n_v, n_u = 16 * C_in * T, 16 * C_out * T
    buf = scratch(xp, (n_v + n_u + max(input_work_size(xpad.shape), 4 * C_out * T),), x.dtype)
    V, U, work = buf[:n_v].reshape(16, C_in, T), buf[n_v:n_v + n_u].reshape(16, C_out, T), buf[n_v + n_u:]
    input_transform(xpad, V, work)
    gradient_transform(dy, U, work)
    return weight_from_transformed(U @ V.transpose(0, 2, 1))
