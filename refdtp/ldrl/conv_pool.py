"""The L-DRL plan of the paper's conv block: stride-1 conv -> act -> non-overlapping max-pool.

Its feedback is max-unpool -> act' -> conv-transpose. With non-overlapping
windows and act'(0) = 0, act'(unpool(z; r)) = unpool(act'(z); r) exactly, so
the feature differences are formed at the pooled size and scattered straight
into the buffers the GEMMs read (docs/algorithm.md §4.3):

    du~    = unpool(act'(F(x+eps)); r~) - unpool(act'(y); r)
    du_eta = unpool(act'(y + eta) - act'(y); r)

G's conv-transpose is a convolution with the flipped kernel
Wf[c, o, i, j] = omega[o, c, k-1-i, k-1-j]; with cols_u = im2col(du_eta) in the
flipped geometry and cols_e = im2col(eps) in the forward geometry,

    d_eta = G(y+eta) - G(y) = Wf cols_u,
    dL/d omega = [-2/B du~] cols_e^T  +  flip( [2/B d_eta] cols_u^T ),

the second term being the gradient of (1/B)||Wf cols_u||^2 in Wf, mapped back
to omega. cols_e also gives F(x+eps) = act(L0(x) + W cols_e): every GEMM
operand is reused, four GEMMs of C_n each per iteration. du_eta sits at the
clean positions every iteration, so its buffer needs no clearing; du~ clears
only what the previous iteration wrote. All large temporaries are per-batch
workspaces.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from ..blocks import Block
from ..ops import Act, Conv2d, MaxPool2d, MaxUnpool2d
from ..ops.conv import im2col_padded, pad2d
from .plans import HoistedPlan, columns_view, first_layer_supported


def pool_block_parts(block: Block):
    """(conv, act, pool, unpool, feedback act) when the block has the structure above, else None."""
    F, G = block.F.ops, block.G.ops
    if len(F) != 3 or len(G) != 3 or not first_layer_supported(block):
        return None
    conv, act, pool = F
    unpool, act_g, _ = G
    if not (isinstance(conv, Conv2d) and isinstance(act, Act) and isinstance(pool, MaxPool2d)
            and isinstance(unpool, MaxUnpool2d) and unpool.pool is pool and isinstance(act_g, Act)):
        return None
    if pool.overlapping or pool.padding or conv.stride != 1 or conv.padding > conv.k - 1:
        return None
    zero = act_g.act.value(np.zeros(1))
    return (conv, act, pool, unpool, act_g) if float(zero[0]) == 0.0 else None


def flip_kernel(w):
    """(C_out, C_in, k, k) <-> (C_in, C_out, k, k) with both kernel axes reversed (an involution)."""
    return array_module(w).ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


class ConvPoolPlan(HoistedPlan):
    """Pooled-size feature differences and two im2col per iteration (module docstring)."""

    @classmethod
    def supports(cls, block: Block) -> bool:
        return pool_block_parts(block) is not None

    def _allocate(self, x):
        self.conv_op, self.act, self.pool, self.unpool, self.act_g = pool_block_parts(self.block)
        self._allocate_features(x, extra=self._tile_extra())
        self._allocate_operands(x)

    def _tile_extra(self) -> tuple[int, int]:
        """Rows and columns of zeros past the padded inputs of both convolutions (none here)."""
        return 0, 0

    def _allocate_features(self, x, extra: tuple[int, int]):
        """The feature buffers, their scatter indices and the per-batch constants of act'.

        ``extra``: (eps_pad, u_pad) additional zero rows/columns at the bottom/right.
        """
        xp, B, dt, route = array_module(x), self.B, x.dtype, self.route
        c_in, H, Wd = self.conv_op.in_shape
        c_out, Ho, Wo = self.conv_op.out_shape
        k, p = self.conv_op.k, self.conv_op.padding
        q = k - 1 - p  # padding of the flipped-kernel convolution that is G's conv-transpose
        self.N = B * Ho * Wo
        e, f = extra
        self.eps_pad = xp.zeros((B, c_in, H + 2 * p + e, Wd + 2 * p + e), dtype=dt)
        self.feats = xp.zeros((c_out, self.N), dtype=dt)  # -2/B du~, channel-major rows
        Hq, Wq = Ho + 2 * q + f, Wo + 2 * q + f
        self.u_pad = xp.zeros((c_out, B, Hq, Wq), dtype=dt)  # 2/B du_eta, padded
        self.d_rows = xp.empty((c_in, B * H * Wd), dtype=dt)  # 2/B d_eta, channel-major rows
        # Flat offsets of the (b, c) planes in feats and in u_pad: (B, C_out, 1, 1).
        c_idx = xp.arange(c_out, dtype=xp.int64).reshape(1, c_out, 1, 1)
        b_idx = xp.arange(B, dtype=xp.int64).reshape(B, 1, 1, 1)
        self.base = c_idx * self.N + b_idx * (Ho * Wo)
        plane = route[0]
        self.clean_flat = (self.base + plane).ravel()
        self.clean_upad = (c_idx * (B * Hq * Wq) + b_idx * (Hq * Wq)
                           + (plane // Wo + q) * Wq + plane % Wo + q).ravel()
        self.last_noisy = self.clean_flat
        self.noisy_flat = xp.empty(self.clean_flat.shape, dtype=xp.int64)  # base + noisy indices
        self.a_noisy = xp.empty((B, c_out, Ho, Wo), dtype=dt)  # L0(x) + W cols_e, NCHW
        self.y_eta = xp.empty(self.y.shape, dtype=self.y.dtype)  # y + eta, then 2/B du_eta
        self.f_noisy = xp.empty(self.y.shape, dtype=self.y.dtype)  # -2/B act'(F(x + eps))
        self.f_clean = self.act_g.act.value(self.y)  # act'(y) at the pooled size, once per batch
        self.scaled_f_clean = ((-2.0 / B) * self.f_clean).ravel()

    def _allocate_operands(self, x):
        """The im2col columns and the GEMM output of the forward geometry."""
        xp, dt = array_module(x), x.dtype
        c_in, H, Wd = self.conv_op.in_shape
        k = self.conv_op.k
        self.cols_e = xp.empty((c_in * k * k, self.N), dtype=dt)  # im2col(eps), forward geometry
        self.a_rows = xp.empty((self.conv_op.c_out, self.N), dtype=dt)  # W cols_e
        self.cols_u = xp.empty((self.conv_op.c_out * k * k, self.B * H * Wd), dtype=dt)  # flipped geometry

    def _noisy_pool(self, eps):
        """F(x + eps) = pool(act(L0(x) + W cols_e)) and the plane indices G uses on it; fills cols_e."""
        xp, conv = array_module(eps), self.conv_op
        _, Ho, Wo = conv.out_shape
        pad2d(eps, conv.padding, out=self.eps_pad)
        im2col_padded(self.eps_pad, conv.k, conv.stride, out=self.cols_e)
        xp.matmul(self.W["weight"].reshape(conv.c_out, -1), self.cols_e, out=self.a_rows)
        rows = self.a_rows.reshape(conv.c_out, self.B, Ho, Wo).transpose(1, 0, 2, 3)
        a = xp.add(rows, self.a_clean, out=self.a_noisy)  # channels-first copy and add in one pass
        y_noisy, idx_noisy = self.pool.forward({}, self.act.act.value(a))
        return y_noisy, (idx_noisy if self.routing == "noisy" else self.route[0])

    def _scatter_features(self, y_noisy, idx_noisy, eta):
        """-2/B du~ into feats (clearing the last iteration's entries), 2/B du_eta into u_pad."""
        flat, B = self.feats.ravel(), self.B
        flat[self.last_noisy] = 0
        flat[self.clean_flat] = 0
        xp = array_module(flat)
        self.last_noisy = xp.add(self.base, idx_noisy, out=self.noisy_flat.reshape(idx_noisy.shape)).ravel()
        # Workspaces written with out=: act' may return its argument (identity), never modify it.
        flat[self.last_noisy] = xp.multiply(self.act_g.act.value(y_noisy), -2.0 / B, out=self.f_noisy).ravel()
        flat[self.clean_flat] -= self.scaled_f_clean
        f_eta = self.act_g.act.value(xp.add(self.y, eta, out=self.y_eta))
        du_eta = xp.subtract(f_eta, self.f_clean, out=self.y_eta)
        du_eta *= 2.0 / B
        self.u_pad.ravel()[self.clean_upad] = du_eta.ravel()

    def grads(self, omega: dict, eps, eta, with_loss: bool = False):
        xp, B, conv = array_module(eps), self.B, self.conv_op
        c_in, H, Wd = conv.in_shape
        y_noisy, idx_noisy = self._noisy_pool(eps)
        self._scatter_features(y_noisy, idx_noisy, eta)
        im2col_padded(self.u_pad.transpose(1, 0, 2, 3), conv.k, 1, out=self.cols_u)
        xp.matmul(flip_kernel(omega["weight"]).reshape(c_in, -1), self.cols_u, out=self.d_rows)
        grad = (self.feats @ self.cols_e.T).reshape(omega["weight"].shape)
        # u_pad and d_rows both carry 2/B, the eta term wants it once: hence B/2.
        grad_f = (self.d_rows @ self.cols_u.T).reshape(c_in, conv.c_out, conv.k, conv.k)
        grad += (B / 2.0) * flip_kernel(grad_f)
        return self._finish(omega, eps, grad, with_loss)

    def _finish(self, omega: dict, eps, grad, with_loss: bool):
        """The gradient dict (the bias cancels in every difference) and, if asked, the loss."""
        xp, B, conv = array_module(eps), self.B, self.conv_op
        grads = {"weight": grad}
        if "bias" in omega:
            grads["bias"] = xp.zeros_like(omega["bias"])
        loss = None
        if with_loss:
            feats = columns_view(self.feats, (B,) + conv.out_shape[1:]).transpose(1, 0, 2, 3)
            d_noisy = self.LG.forward({"weight": omega["weight"]}, feats)[0]
            # feats holds -2/B du~, so <eps, G(feats)> is already -2/B <eps, G(F(x+eps)) - G(y)>;
            # d_rows holds 2/B d_eta, so ||d_eta||^2 / B = B/4 ||d_rows||^2.
            loss = (eps * d_noisy).sum() + (B / 4.0) * (self.d_rows * self.d_rows).sum()
        return grads, loss
