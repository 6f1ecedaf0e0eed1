"""ConvPoolPlan's workspaces (out= writes, fused channels-first add) give bitwise the results of the
straightforward allocating code over several iterations, both routings, float64 and float32, with an
identity feedback activation too (whose value returns its argument: no workspace may alias it)."""
import numpy as np
import pytest

from refdtp import ldrl
from refdtp.backend import array_module
from refdtp.blocks import Block
from refdtp.ldrl import ConvPoolPlan
from refdtp.networks import conv_block
from refdtp.ops import Act
from refdtp.ops.conv import channels_first, im2col_padded, pad2d


class AllocatingPlan(ConvPoolPlan):
    """The straightforward version: a fresh array for every intermediate."""

    def _noisy_pool(self, eps):
        xp, conv = array_module(eps), self.conv_op
        _, Ho, Wo = conv.out_shape
        pad2d(eps, conv.padding, out=self.eps_pad)
        im2col_padded(self.eps_pad, conv.k, conv.stride, out=self.cols_e)
        xp.matmul(self.W["weight"].reshape(conv.c_out, -1), self.cols_e, out=self.a_rows)
        a = channels_first(self.a_rows, self.B, Ho, Wo)
        a += self.a_clean
        y_noisy, idx_noisy = self.pool.forward({}, self.act.act.value(a))
        return y_noisy, (idx_noisy if self.routing == "noisy" else self.route[0])

    def _scatter_features(self, y_noisy, idx_noisy, eta):
        flat, B = self.feats.ravel(), self.B
        flat[self.last_noisy] = 0
        flat[self.clean_flat] = 0
        self.last_noisy = (self.base + idx_noisy).ravel()
        flat[self.last_noisy] = ((-2.0 / B) * self.act_g.act.value(y_noisy)).ravel()
        flat[self.clean_flat] -= self.scaled_f_clean
        du_eta = (2.0 / B) * (self.act_g.act.value(self.y + eta) - self.f_clean)
        self.u_pad.ravel()[self.clean_upad] = du_eta.ravel()


def _identity_feedback(block):
    conv, act, pool = block.F.ops
    unpool, _, convt = block.G.ops
    return Block("id_feedback", [conv, act, pool], [unpool, Act(act.in_shape, "identity"), convt])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("routing", ldrl.ROUTINGS)
@pytest.mark.parametrize("feedback", ["elu", "identity"])
def test_workspaces_change_no_bit(dtype, routing, feedback):
    block = conv_block("b", (3, 8, 8), 4, k=3, padding=1, activation="elu", pool="max")
    if feedback == "identity":
        block = _identity_feedback(block)
    rng = np.random.default_rng(0)
    W, omega = block.init_forward(rng, dtype), block.init_feedback(rng, dtype)
    x = rng.standard_normal((5, *block.in_shape)).astype(dtype)
    y, cache = block.forward(W, x)
    plans = [P(block, W, x, y, block.route(cache), routing) for P in (ConvPoolPlan, AllocatingPlan)]
    for _ in range(4):
        eps = rng.standard_normal(x.shape).astype(dtype)
        eta = rng.standard_normal(y.shape).astype(dtype)
        (g1, l1), (g2, l2) = (p.grads(omega, eps, eta, with_loss=True) for p in plans)
        np.testing.assert_array_equal(g1["weight"], g2["weight"])
        assert l1 == l2
