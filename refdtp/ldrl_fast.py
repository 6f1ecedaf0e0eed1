"""The L-DRL feedback gradient with every per-batch constant hoisted (the fast path).

Same maths as :func:`refdtp.feedback.ldrl_grads_fused` (tests check equality
to round-off); it only removes work. For a block whose forward map starts
with its weight layer L0 (conv or linear) and whose feedback G ends with the
matching transposed layer (conv-transpose of the same geometry, or linear):

- F(x + eps) = rest(L0(x) + L0_W(eps)): L0(x) is computed once per batch,
  and the columns of eps (its im2col) are computed once per iteration and
  serve twice: for L0_W(eps) and for the weight gradient of the eps term;
- the weight gradient of both terms is one GEMM on the stacked columns
  [cols(eps) | cols(d_eta)] and stacked, pre-scaled features
  [-2/B du~ | 2/B du_eta], written in place into per-batch buffers:

      dL/d omega = [-2/B du~ | 2/B du_eta]_rows @ [cols(eps) | cols(d_eta)]^T.

Per iteration: 2 im2col, 3 GEMM-equivalents (L0 on eps, G's weight layer on
du_eta, one weight gradient of twice the width), no copy of the stacks.
"""
from __future__ import annotations

import numpy as np

from .backend import array_module
from .blocks import Block
from .ops import Act, Conv2d, ConvTranspose2d, Linear, MaxPool2d, MaxUnpool2d
from .ops.conv import _channels_first, im2col, im2col_padded, pad2d


def _columns_view(buf, shape: tuple):
    """View a (rows, N) slice with unit column stride as (rows, *shape), N = prod(shape)."""
    xp = array_module(buf)
    r, c = buf.strides
    strides, step = [], c
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return xp.lib.stride_tricks.as_strided(buf, shape=(buf.shape[0],) + tuple(shape),
                                           strides=(r,) + tuple(reversed(strides)))


def supports(block: Block) -> bool:
    """True when the block has the structure the fast path needs (see module docstring)."""
    if block.F.param_index != 0 or not block.feedback_is_affine:
        return False
    L0, LG = block.F.ops[0], block.G.param_op
    if block.G.param_index != len(block.G.ops) - 1:
        return False
    if isinstance(L0, Conv2d) and isinstance(LG, ConvTranspose2d):
        c = LG.conv
        return (c.in_shape, c.c_out, c.k, c.stride, c.padding) == (
            L0.in_shape, L0.c_out, L0.k, L0.stride, L0.padding)
    return isinstance(L0, Linear) and isinstance(LG, Linear) and (LG.n_in, LG.n_out) == (L0.n_out, L0.n_in)


class LDRLPlan:
    """Block n's L-DRL gradient on one batch.

    Args:
        block: a block with :func:`supports` true.
        W: the block's forward parameters (frozen for the batch).
        x: (B, *in_shape) block input s_{n-1}; y: (B, *out_shape) output s_n.
        route: the clean pass's pool indices (``block.route(trace)``).
    """

    def __init__(self, block: Block, W: dict, x, y, route):
        if not supports(block):
            raise ValueError(f"{block.name}: the fast L-DRL path needs F = weight layer first and "
                             f"G ending with its transpose; use ldrl_grads_fused")
        self.block, self.W, self.y, self.route = block, W, y, route
        self.B = x.shape[0]
        self.L0, self.LG = block.F.ops[0], block.G.param_op
        self.a_clean, _ = self.L0.forward(W, x)  # L0(x) with its bias, once per batch
        self.conv = isinstance(self.L0, Conv2d)
        self._allocate(x)

    def _allocate(self, x):
        """Per-batch constants and workspaces: u_c = pre(y; r) and the stacked buffers."""
        xp, B = array_module(x), self.B
        self.u_clean = self.block.feedback_features(self.y, self.route)  # pre(y; r), once per batch
        if self.conv:
            c_in, k = self.L0.c_in, self.L0.k
            _, Ho, Wo = self.L0.out_shape
            self.N = B * Ho * Wo
            self.cols = xp.empty((c_in * k * k, 2 * self.N), dtype=x.dtype)
            self.feats = xp.empty((self.L0.c_out, 2 * self.N), dtype=x.dtype)
        else:
            self.cols = xp.empty((2 * B, self.L0.n_in), dtype=x.dtype)
            self.feats = xp.empty((2 * B, self.L0.n_out), dtype=x.dtype)

    def _noisy_output(self, eps):
        """F(x + eps) = rest(L0(x) + L0_W(eps)) and its route; fills cols(eps)."""
        L0, B = self.L0, self.B
        if self.conv:
            col = im2col(eps, L0.k, L0.stride, L0.padding, out=self.cols[:, :self.N])
            _, Ho, Wo = L0.out_shape
            a = _channels_first(self.W["weight"].reshape(L0.c_out, -1) @ col, B, Ho, Wo)
        else:
            self.cols[:B] = eps
            a = eps @ self.W["weight"].T
        a += self.a_clean
        caches = [None]
        for op in self.block.F.ops[1:]:
            a, cache = op.forward({}, a)
            caches.append(cache)
        return a, self.block.route(tuple(caches))

    def _put_features(self, half: int, du, scale: float):
        """Write scale * du into the stacked feature buffer (transposed to rows for conv)."""
        xp = array_module(du)
        if self.conv:
            dest = self.feats[:, half * self.N:(half + 1) * self.N]
            xp.multiply(du.transpose(1, 0, 2, 3), scale, out=_columns_view(dest, (self.B,) + du.shape[2:]))
        else:
            xp.multiply(du, scale, out=self.feats[half * self.B:(half + 1) * self.B])

    def grads(self, omega: dict, eps, eta, with_loss: bool = False):
        """dL-DRL/d omega for one noise draw (eps like x, eta like y). Returns (grads, loss or None)."""
        xp, B, block = array_module(eps), self.B, self.block
        y_noisy, route_noisy = self._noisy_output(eps)
        du_noisy = block.feedback_features(y_noisy, route_noisy) - self.u_clean
        du_eta = block.feedback_features(self.y + eta, self.route) - self.u_clean
        d_eta = block.feedback_linear(omega, du_eta)  # G(y + eta) - G(y)
        self._put_features(0, du_noisy, -2.0 / B)
        self._put_features(1, du_eta, 2.0 / B)
        if self.conv:
            L0 = self.L0
            im2col(d_eta, L0.k, L0.stride, L0.padding, out=self.cols[:, self.N:])
            grad_w = (self.feats @ self.cols.T).reshape(omega["weight"].shape)
        else:
            self.cols[B:] = d_eta
            grad_w = self.cols.T @ self.feats
        grads = {"weight": grad_w}
        if "bias" in omega:
            grads["bias"] = xp.zeros_like(omega["bias"])  # the bias cancels in every difference
        loss = None
        if with_loss:
            d_noisy = block.feedback_linear(omega, du_noisy)
            loss = (-2 * (eps * d_noisy).sum() + (d_eta * d_eta).sum()) / B
        return grads, loss


def _pool_block_parts(block: Block):
    """(conv, act, pool, unpool, feedback act) if the block is conv -> act -> max-pool with
    feedback unpool -> act' -> conv-transpose, non-overlapping pool and act'(0) = 0; else None."""
    F, G = block.F.ops, block.G.ops
    if len(F) != 3 or len(G) != 3 or not supports(block):
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


class ConvPoolPlan(LDRLPlan):
    """:class:`LDRLPlan` for the paper's conv block (stride-1 conv -> ELU -> max-pool,
    feedback unpool -> ELU -> conv-transpose) with no un-pooled features and two
    im2col per iteration.

    With non-overlapping windows and act'(0) = 0, act'(unpool(z; r)) = unpool(act'(z); r)
    exactly, so the feature differences are formed at the pooled size and
    scattered into their buffers:

        du~    = unpool(act'(F(x+eps)); r~) - unpool(act'(y); r)
        du_eta = unpool(act'(y + eta) - act'(y); r)

    G's conv-transpose is a convolution with the flipped kernel
    Wf[c, o, i, j] = omega[o, c, k-1-i, k-1-j], so with cols_u = im2col(du_eta)
    (flipped geometry) and cols_e = im2col(eps) (forward geometry):

        d_eta = G(y+eta) - G(y) = Wf cols_u,
        dL/d omega = [-2/B du~] cols_e^T  +  flip( [2/B d_eta] cols_u^T ),

    the second term being the gradient of (1/B)||Wf cols_u||^2 with respect to
    Wf, mapped back to omega. cols_e also gives F(x+eps) = act(L0(x) + W cols_e):
    every GEMM operand is reused, four GEMMs of C_n each per iteration.
    du_eta sits at the clean positions every iteration, so its buffer needs no
    clearing; du~ clears only what the previous iteration wrote. All large
    temporaries are per-batch workspaces.
    """

    def _allocate(self, x):
        parts = _pool_block_parts(self.block)
        if parts is None:
            raise ValueError(f"{self.block.name}: not a stride-1 conv -> act -> max-pool block")
        self.conv_op, self.act, self.pool, self.unpool, self.act_g = parts
        xp, B, dt, route = array_module(x), self.B, x.dtype, self.route
        c_in, H, Wd = self.conv_op.in_shape
        c_out, Ho, Wo = self.conv_op.out_shape
        k, p = self.conv_op.k, self.conv_op.padding
        q = k - 1 - p  # padding of the flipped-kernel convolution that is G's conv-transpose
        self.N = B * Ho * Wo
        self.eps_pad = xp.zeros((B, c_in, H + 2 * p, Wd + 2 * p), dtype=dt)
        self.cols_e = xp.empty((c_in * k * k, self.N), dtype=dt)
        self.a_rows = xp.empty((c_out, self.N), dtype=dt)
        self.feats = xp.zeros((c_out, self.N), dtype=dt)  # -2/B du~, channel-major rows
        self.u_pad = xp.zeros((c_out, B, Ho + 2 * q, Wo + 2 * q), dtype=dt)  # 2/B du_eta, padded
        self.cols_u = xp.empty((c_out * k * k, B * H * Wd), dtype=dt)
        self.d_rows = xp.empty((c_in, B * H * Wd), dtype=dt)  # 2/B d_eta, channel-major rows
        # Flat offsets of the (b, c) planes in feats and in u_pad.
        c_idx = xp.arange(c_out, dtype=xp.int64).reshape(1, c_out, 1, 1)
        b_idx = xp.arange(B, dtype=xp.int64).reshape(B, 1, 1, 1)
        self.base = c_idx * self.N + b_idx * (Ho * Wo)
        plane = route[0]
        self.clean_flat = (self.base + plane).ravel()
        Hq, Wq = Ho + 2 * q, Wo + 2 * q
        self.clean_upad = (c_idx * (B * Hq * Wq) + b_idx * (Hq * Wq)
                           + (plane // Wo + q) * Wq + plane % Wo + q).ravel()
        self.last_noisy = self.clean_flat
        self.f_clean = self.act_g.act.value(self.y)  # act'(y) at the pooled size, once per batch
        self.scaled_f_clean = ((-2.0 / B) * self.f_clean).ravel()

    def _noisy_pool(self, eps):
        """F(x + eps) = pool(act(L0(x) + W cols_e)) and its indices; fills cols_e."""
        xp, conv = array_module(eps), self.conv_op
        _, Ho, Wo = conv.out_shape
        pad2d(eps, conv.padding, out=self.eps_pad)
        im2col_padded(self.eps_pad, conv.k, conv.stride, out=self.cols_e)
        xp.matmul(self.W["weight"].reshape(conv.c_out, -1), self.cols_e, out=self.a_rows)
        a = _channels_first(self.a_rows, self.B, Ho, Wo)
        a += self.a_clean
        return self.pool.forward({}, self.act.act.value(a))

    def _scatter_features(self, y_noisy, idx_noisy, eta):
        """-2/B du~ into feats (clearing the last iteration's entries), 2/B du_eta into u_pad."""
        flat, B = self.feats.ravel(), self.B
        flat[self.last_noisy] = 0
        flat[self.clean_flat] = 0
        self.last_noisy = (self.base + idx_noisy).ravel()
        flat[self.last_noisy] = ((-2.0 / B) * self.act_g.act.value(y_noisy)).ravel()
        flat[self.clean_flat] -= self.scaled_f_clean
        du_eta = (2.0 / B) * (self.act_g.act.value(self.y + eta) - self.f_clean)
        self.u_pad.ravel()[self.clean_upad] = du_eta.ravel()

    def _flipped(self, w):
        """(C_out, C_in, k, k) <-> (C_in, C_out, k, k) with both kernel axes reversed (an involution)."""
        return array_module(w).ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])

    def grads(self, omega: dict, eps, eta, with_loss: bool = False):
        xp, B, conv = array_module(eps), self.B, self.conv_op
        c_in, H, Wd = conv.in_shape
        y_noisy, idx_noisy = self._noisy_pool(eps)
        self._scatter_features(y_noisy, idx_noisy, eta)
        im2col_padded(self.u_pad.transpose(1, 0, 2, 3), conv.k, 1, out=self.cols_u)
        xp.matmul(self._flipped(omega["weight"]).reshape(c_in, -1), self.cols_u, out=self.d_rows)
        grad = (self.feats @ self.cols_e.T).reshape(omega["weight"].shape)
        # u_pad and d_rows both carry 2/B, the eta term wants it once: hence B/2.
        grad_f = (self.d_rows @ self.cols_u.T).reshape(c_in, conv.c_out, conv.k, conv.k)
        grad += (B / 2.0) * self._flipped(grad_f)
        grads = {"weight": grad}
        if "bias" in omega:
            grads["bias"] = xp.zeros_like(omega["bias"])  # the bias cancels in every difference
        loss = None
        if with_loss:
            feats = _columns_view(self.feats, (B,) + conv.out_shape[1:]).transpose(1, 0, 2, 3)
            d_noisy = self.LG.forward({"weight": omega["weight"]}, feats)[0]
            # feats holds -2/B du~, so <eps, G(feats)> is already -2/B <eps, G(F(x+eps)) - G(y)>;
            # d_rows holds 2/B d_eta, so ||d_eta||^2 / B = B/4 ||d_rows||^2.
            loss = (eps * d_noisy).sum() + (B / 4.0) * (self.d_rows * self.d_rows).sum()
        return grads, loss


def make_plan(block: Block, W: dict, x, y, route) -> LDRLPlan:
    """The fastest applicable plan for a block (see :func:`supports`)."""
    cls = ConvPoolPlan if _pool_block_parts(block) is not None else LDRLPlan
    return cls(block, W, x, y, route)
