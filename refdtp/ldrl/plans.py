"""L-DRL gradient plans: per-batch constants hoisted out of the K_n feedback iterations.

The feedback phase of block n runs K_n SGD iterations on omega_n with the
block's input x, output y and clean route r frozen. A *plan* is built once per
batch from (block, W, x, y, r) and then answers, for each fresh noise draw,

    plan.grads(omega, eps, eta, with_loss) -> (dL/d omega, loss or None),

equal to :func:`refdtp.ldrl.reference.ldrl_grads_naive` to round-off (tests
check every plan on every block kind). :func:`refdtp.ldrl.selection.make_plan`
picks the fastest plan a block admits.

- :class:`ReferencePlan`: the three-evaluation formula (any block).
- :class:`FusedPlan`: :func:`refdtp.ldrl.fused.ldrl_grads_fused` with u_c = pre(y; r)
  computed once (blocks whose feedback is affine in its weights).
- :class:`FirstLayerPlan`: F starts with its weight layer L0 and G ends with
  the transposed layer, so F(x + eps) = rest(L0(x) + L0_W(eps)) reuses L0(x),
  and the columns of eps serve both L0_W(eps) and the weight gradient:
  dL/d omega = [-2/B du~ | 2/B du_eta]_rows @ [cols(eps) | cols(d_eta)]^T,
  one GEMM of twice the width on per-batch workspaces.
- :class:`refdtp.ldrl.conv_pool.ConvPoolPlan`: the paper's conv block.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from ..backend import array_module
from ..blocks import Block
from ..ops import Conv2d, ConvTranspose2d, Linear
from ..ops.conv import channels_first, im2col
from .fused import ldrl_constants, ldrl_grads_fused
from .reference import ROUTINGS, check_routing, ldrl_grads_naive, ldrl_loss

__all__ = ["ROUTINGS", "Plan", "ReferencePlan", "FusedPlan", "HoistedPlan", "FirstLayerPlan",
           "columns_view", "first_layer_supported"]


class Plan(ABC):
    """Block n's L-DRL gradient on one batch (x, y, r frozen).

    Args:
        block: the block.
        W: its forward parameters (frozen for the batch).
        x: (B, *in_shape) block input s_{n-1}; y: (B, *out_shape) its output s_n.
        route: the clean pass's pool indices (``block.route(trace)``).
        routing: "noisy" (the paper's rule for G(F(x + eps))) or "clean".
    """

    def __init__(self, block: Block, W: dict, x, y, route, routing: str = "noisy"):
        self.block, self.W, self.x, self.y, self.route = block, W, x, y, route
        self.routing = check_routing(routing)
        self.B = x.shape[0]

    @classmethod
    def supports(cls, block: Block) -> bool:
        """True when this plan applies to the block."""
        return True

    @classmethod
    def pays_off(cls, block: Block) -> bool:
        """True when this plan, where it applies, is expected faster than the next one (make_plan)."""
        return True

    @abstractmethod
    def grads(self, omega: dict, eps, eta, with_loss: bool = False):
        """dL-DRL/d omega for one noise draw (eps like x, eta like y). Returns (grads, loss or None)."""


class ReferencePlan(Plan):
    """The three-evaluation formula, nothing hoisted (any block)."""

    def grads(self, omega: dict, eps, eta, with_loss: bool = False):
        args = (self.block, self.W, omega, self.x, self.y, self.route, eps, eta, self.routing)
        return ldrl_grads_naive(*args), (ldrl_loss(*args) if with_loss else None)


class FusedPlan(Plan):
    """The fused formula with u_c = pre(y; r) computed once per batch."""

    @classmethod
    def supports(cls, block: Block) -> bool:
        return block.feedback_is_affine

    def __init__(self, block: Block, W: dict, x, y, route, routing: str = "noisy"):
        super().__init__(block, W, x, y, route, routing)
        self.u_clean = ldrl_constants(block, y, route)

    def grads(self, omega: dict, eps, eta, with_loss: bool = False):
        return ldrl_grads_fused(self.block, self.W, omega, self.x, self.y, self.route, self.u_clean,
                                eps, eta, with_loss, self.routing)


def first_layer_supported(block: Block) -> bool:
    """F = weight layer L0 first (conv or linear), G = ... -> the transpose of L0 last, G affine."""
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


def columns_view(buf, shape: tuple):
    """View a (rows, N) slice with unit column stride as (rows, *shape), N = prod(shape)."""
    xp = array_module(buf)
    r, c = buf.strides
    strides, step = [], c
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return xp.lib.stride_tricks.as_strided(buf, shape=(buf.shape[0],) + tuple(shape),
                                           strides=(r,) + tuple(reversed(strides)))


class HoistedPlan(Plan):
    """Base of the plans that reuse L0(x): F = L0 -> rest, G = ... -> L0^T (:func:`first_layer_supported`).

    Holds a_clean = L0(x) (with its bias), computed once per batch; a subclass
    allocates its workspaces in :meth:`_allocate`.
    """

    @classmethod
    def supports(cls, block: Block) -> bool:
        return first_layer_supported(block)

    def __init__(self, block: Block, W: dict, x, y, route, routing: str = "noisy"):
        if not self.supports(block):
            raise ValueError(f"{block.name}: {type(self).__name__} does not apply to this block; "
                             f"use make_plan, which picks a plan that does")
        super().__init__(block, W, x, y, route, routing)
        self.L0, self.LG = block.F.ops[0], block.G.param_op
        self.a_clean, _ = self.L0.forward(W, x)  # L0(x) with its bias: (B, *L0.out_shape)
        self._allocate(x)

    @abstractmethod
    def _allocate(self, x):
        """Per-batch constants and workspaces."""


class FirstLayerPlan(HoistedPlan):
    """L0(x) and cols(eps) reused; one weight-gradient GEMM on stacked buffers (module docstring)."""

    def _allocate(self, x):
        xp, B = array_module(x), self.B
        self.conv = isinstance(self.L0, Conv2d)
        self.u_clean = ldrl_constants(self.block, self.y, self.route)  # pre(y; r), once per batch
        if self.conv:
            c_in, k = self.L0.c_in, self.L0.k
            _, Ho, Wo = self.L0.out_shape
            self.N = B * Ho * Wo
            self.cols = xp.empty((c_in * k * k, 2 * self.N), dtype=x.dtype)  # [cols(eps) | cols(d_eta)]
            self.feats = xp.empty((self.L0.c_out, 2 * self.N), dtype=x.dtype)  # [-2/B du~ | 2/B du_eta]
        else:
            self.cols = xp.empty((2 * B, self.L0.n_in), dtype=x.dtype)  # rows [eps ; d_eta]
            self.feats = xp.empty((2 * B, self.L0.n_out), dtype=x.dtype)  # rows [-2/B du~ ; 2/B du_eta]

    def _noisy_output(self, eps):
        """F(x + eps) = rest(L0(x) + L0_W(eps)) and the route G uses on it; fills cols(eps)."""
        L0, B = self.L0, self.B
        if self.conv:
            col = im2col(eps, L0.k, L0.stride, L0.padding, out=self.cols[:, :self.N])
            _, Ho, Wo = L0.out_shape
            a = channels_first(self.W["weight"].reshape(L0.c_out, -1) @ col, B, Ho, Wo)
        else:
            self.cols[:B] = eps
            a = eps @ self.W["weight"].T
        a += self.a_clean
        caches = [None]
        for op in self.block.F.ops[1:]:
            a, cache = op.forward({}, a)
            caches.append(cache)
        return a, (self.block.route(tuple(caches)) if self.routing == "noisy" else self.route)

    def _put_features(self, half: int, du, scale: float):
        """Write scale * du into half 0 or 1 of the stacked feature buffer (channel-major rows for conv)."""
        xp = array_module(du)
        if self.conv:
            dest = self.feats[:, half * self.N:(half + 1) * self.N]
            xp.multiply(du.transpose(1, 0, 2, 3), scale, out=columns_view(dest, (self.B,) + du.shape[2:]))
        else:
            xp.multiply(du, scale, out=self.feats[half * self.B:(half + 1) * self.B])

    def grads(self, omega: dict, eps, eta, with_loss: bool = False):
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
