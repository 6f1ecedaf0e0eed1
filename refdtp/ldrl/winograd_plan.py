"""The conv-pool L-DRL plan with its four convolutions in the Winograd domain, F(2x2, 3x3).

Same maths as :class:`ConvPoolPlan` (refdtp.ldrl.conv_pool), whose four GEMMs per
iteration become 16 smaller ones each (refdtp.ops.winograd; 2.25x fewer multiplications):

    V_e = KB tiles(eps),   V_u = KB tiles(u_pad)              input transforms, once each
    F(x + eps):  a~ = L0(x) + KA (U_W  @ V_e)                 U_W  = KG vec(W), once per batch
    d_eta:       M  = U_Wf @ V_u,  d = KA M                   U_Wf = KG vec(flip(omega))
    dL/d omega = KG^T [ (KA^T feats) @ V_e^T ]  +  flip( B/2 KG^T [ (KA^T d) @ V_u^T ] )

Each input transform serves a convolution and a weight gradient, as each im2col does in
ConvPoolPlan. Where G's output has even sides, KA^T d = (KA^T KA) M: one 16x16 product
instead of the output transform and the tiling of d, and d itself is formed only for the
loss. Workspaces: two per batch, each holding an eps-side operand and then an eta-side one
(V_e then M_g, M_f then V_u); KA^T d and the transforms' temporaries in the thread's scratch.
"""
from __future__ import annotations

from ..backend import array_module
from ..blocks import Block
from ..ops import winograd as wg
from ..ops.conv import pad2d
from ..ops.scratch import scratch
from .conv_pool import ConvPoolPlan, flip_kernel, pool_block_parts
from .plans import columns_view

#: Channels from which make_plan picks this plan over ConvPoolPlan. Per-iteration time against
#: ConvPoolPlan, batch 128 (64 for width 1/2), float32, 1 thread, loaded host: 128-512 channels
#: 0.72-0.81; 64-256 channels 0.77-0.95; 32-128 channels 0.84-1.06; 16-64 channels 0.69-1.09.
MIN_CHANNELS = 64


class WinogradConvPoolPlan(ConvPoolPlan):
    """ConvPoolPlan for 3x3 stride-1 convolutions, its GEMMs in the Winograd domain (module docstring)."""

    @classmethod
    def supports(cls, block: Block) -> bool:
        parts = pool_block_parts(block)
        return parts is not None and wg.supported(parts[0].k, parts[0].stride)

    @classmethod
    def pays_off(cls, block: Block) -> bool:
        """From MIN_CHANNELS input and output channels on (below, the transforms cost what they save)."""
        conv = block.F.ops[0]
        return min(conv.c_in, conv.c_out) >= MIN_CHANNELS

    def _tile_extra(self) -> tuple[int, int]:
        """One zero row/column more where a convolution's output side is odd (its last tile)."""
        _, H, _ = self.conv_op.in_shape
        _, Ho, _ = self.conv_op.out_shape
        return Ho % 2, H % 2

    def _allocate_operands(self, x):
        xp, dt, conv = array_module(x), x.dtype, self.conv_op
        c_in, H, Wd = conv.in_shape
        c_out, Ho, Wo = conv.out_shape
        th, tw = wg.tile_counts(Ho, Wo)
        gh, gw = wg.tile_counts(H, Wd)
        T, Tg = self.B * th * tw, self.B * gh * gw
        # Two buffers, four operands: grads() is done with V_e and M_f (the eps side) before it
        # forms V_u and M_g (the eta side), so each eta-side operand reuses an eps-side buffer.
        eps_side = xp.empty(16 * c_in * max(T, Tg), dtype=dt)
        out_side = xp.empty(16 * c_out * max(T, Tg), dtype=dt)
        self.V_e = eps_side[:16 * c_in * T].reshape(16, c_in, T)  # KB tiles(eps)
        self.M_f = out_side[:16 * c_out * T].reshape(16, c_out, T)  # U_W @ V_e, then KA^T feats
        self.V_u = out_side[:16 * c_out * Tg].reshape(16, c_out, Tg)  # KB tiles(u_pad), over M_f
        self.M_g = eps_side[:16 * c_in * Tg].reshape(16, c_in, Tg)  # U_Wf @ V_u, over V_e
        self.n_U_d = 16 * c_in * Tg  # KA^T d lives in the scratch, before the transforms' work
        self.U_W = wg.filter_transform(self.W["weight"])  # (16, C_out, C_in), once per batch
        self.even_g = H % 2 == 0 and Wd % 2 == 0
        if self.even_g:
            self.KAtKA = xp.asarray(wg.KA.T @ wg.KA, dtype=dt)  # (16, 16)
        self.work_size = max(wg.input_work_size(self.eps_pad.shape), wg.input_work_size(
            (self.B, c_out) + self.u_pad.shape[2:]), 4 * max(c_in, c_out) * max(T, Tg))
        self.work_size += self.n_U_d

    def _noisy_pool(self, eps):
        """F(x + eps) = pool(act(L0(x) + W * eps)) and the plane indices G uses on it; fills V_e."""
        xp, conv = array_module(eps), self.conv_op
        work = scratch(xp, (self.work_size,), eps.dtype)
        wg.input_transform(pad2d(eps, conv.padding, out=self.eps_pad), self.V_e, work)
        xp.matmul(self.U_W, self.V_e, out=self.M_f)
        a = wg.output_transform(self.M_f, self.a_noisy, work, add=self.a_clean)
        y_noisy, idx_noisy = self.pool.forward({}, self.act.act.value(a))
        return y_noisy, (idx_noisy if self.routing == "noisy" else self.route[0])

    def grads(self, omega: dict, eps, eta, with_loss: bool = False):
        xp, B, conv = array_module(eps), self.B, self.conv_op
        c_in, H, Wd = conv.in_shape
        y_noisy, idx_noisy = self._noisy_pool(eps)
        self._scatter_features(y_noisy, idx_noisy, eta)
        buf = scratch(xp, (self.work_size,), eps.dtype)
        work, U_d = buf[self.n_U_d:], buf[:self.n_U_d].reshape(self.M_g.shape)
        feats = columns_view(self.feats, (B,) + conv.out_shape[1:]).transpose(1, 0, 2, 3)
        U_f = wg.gradient_transform(feats, self.M_f, work)
        grad = wg.weight_from_transformed(U_f @ self.V_e.transpose(0, 2, 1))
        # V_e and M_f are free from here on: M_g and V_u overwrite them.
        wg.input_transform(self.u_pad.transpose(1, 0, 2, 3), self.V_u, work)
        xp.matmul(wg.filter_transform(flip_kernel(omega["weight"])), self.V_u, out=self.M_g)
        d = columns_view(self.d_rows, (B, H, Wd)).transpose(1, 0, 2, 3)  # (B, C_in, H, W) view
        if self.even_g:
            xp.matmul(self.KAtKA, self.M_g.reshape(16, -1), out=U_d.reshape(16, -1))
            if with_loss:
                wg.output_transform(self.M_g, d, work)
        else:
            wg.output_transform(self.M_g, d, work)
            wg.gradient_transform(d, U_d, work)
        # U_d and the features both carry 2/B, the eta term wants it once: hence B/2.
        grad_f = wg.weight_from_transformed(U_d @ self.V_u.transpose(0, 2, 1))
        grad += (B / 2.0) * flip_kernel(grad_f)
        return self._finish(omega, eps, grad, with_loss)
