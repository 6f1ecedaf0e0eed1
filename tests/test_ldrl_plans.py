"""The training path's L-DRL gradient: every plan (refdtp.ldrl) equals the three-evaluation
reference, gradient and loss, to float64 round-off, on every block kind of mlp, simple_vgg and
lenet (overlapping pools) and on hypothesis-drawn conv and linear blocks, with both routings; and
meta-tests showing that the comparison fails on a planted bug."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdtp import ldrl
from refdtp.blocks import Block
from refdtp.ldrl import ConvPoolPlan, FirstLayerPlan, FusedPlan, ReferencePlan, WinogradConvPoolPlan
from refdtp.networks import conv_block, lenet, linear_block, mlp, simple_vgg
from refdtp.ops import Act, Linear
from refdtp.ops import winograd as wg
from verify.claims.ldrl import plan_errors
from verify.registry import Context

CTX = Context()
TOL = 1e-12  # observed <= 2e-15: every plan is an exact rewrite, only the summation order differs


def assert_plans_match(block, seed, routing, B=2, plans=None):
    rng = np.random.default_rng(seed)
    W, omega = block.init_forward(rng, np.float64), block.init_feedback(rng, np.float64)
    x = rng.standard_normal((B, *block.in_shape))
    errors = plan_errors(CTX, block, W, omega, x, routing, rng, plans=plans)
    for name, e in errors.items():
        assert e["grads"] <= TOL and e["loss"] <= TOL, f"{block.name} {routing} {name}: {e}"
    return errors


NETWORKS = {"simple_vgg": lambda: simple_vgg(channels=(3, 4, 4, 5, 5)),
            "lenet": lambda: lenet(in_shape=(2, 12, 12)),
            "mlp": lambda: mlp((7, 6, 5, 4), activation="elu")}


@pytest.mark.parametrize("routing", ldrl.ROUTINGS)
@pytest.mark.parametrize("key", sorted(NETWORKS))
def test_every_plan_of_every_block_matches_the_reference(key, routing):
    net = NETWORKS[key]()
    for n, block in enumerate(net.blocks[1:], start=2):
        assert_plans_match(block, seed=n, routing=routing)


def test_make_plan_picks_the_fastest_plan_per_block_kind():
    vgg, le, m = (NETWORKS[k]() for k in ("simple_vgg", "lenet", "mlp"))
    assert ldrl.applicable_plans(vgg.blocks[1]) == [WinogradConvPoolPlan, ConvPoolPlan, FirstLayerPlan,
                                                    FusedPlan, ReferencePlan]
    five = conv_block("k5", (2, 8, 8), 3, k=5, padding=2, activation="elu", pool="max")
    assert ldrl.applicable_plans(five)[0] is ConvPoolPlan  # Winograd F(2x2, 3x3) is for 3x3 kernels
    assert ldrl.applicable_plans(le.blocks[1])[0] is FirstLayerPlan  # overlapping pools: no ConvPoolPlan
    assert ldrl.applicable_plans(m.blocks[1])[0] is FirstLayerPlan
    lin = linear_block("l", (3,), 3, "tanh")
    outer = Block("outer", lin.F.ops, list(reversed(lin.G.ops)))  # G = tanh(V y + c): not affine in V
    assert ldrl.applicable_plans(outer) == [ReferencePlan]
    act_first = Block("act_first", [Act((3,), "tanh"), Linear(3, 2)],  # F does not start with its weights
                      [Act((2,), "tanh"), Linear(2, 3)])
    assert ldrl.applicable_plans(act_first) == [FusedPlan, ReferencePlan]
    rng = np.random.default_rng(0)
    W = vgg.blocks[1].init_forward(rng, np.float64)
    x = rng.standard_normal((2, *vgg.blocks[1].in_shape))
    y, cache = vgg.blocks[1].forward(W, x)
    chosen = ldrl.make_plan(vgg.blocks[1], W, x, y, vgg.blocks[1].route(cache))
    assert type(chosen) is ConvPoolPlan  # 4 channels: below the Winograd plan's MIN_CHANNELS
    wide = conv_block("wide", (64, 4, 4), 64, k=3, padding=1, activation="elu", pool="max")
    W = wide.init_forward(rng, np.float32)
    x = rng.standard_normal((2, *wide.in_shape)).astype(np.float32)
    y, cache = wide.forward(W, x)
    assert type(ldrl.make_plan(wide, W, x, y, wide.route(cache))) is WinogradConvPoolPlan


@given(seed=st.integers(0, 2 ** 32 - 1), c_in=st.integers(1, 3), c_out=st.integers(1, 4),
       hw=st.sampled_from([2, 3, 4, 5, 6, 7]), kp=st.sampled_from([(1, 0), (3, 0), (3, 1), (3, 2), (5, 2)]),
       pool=st.sampled_from(["max2", "max3-overlap", "avg2", "none"]),
       activation=st.sampled_from(["elu", "tanh", "leaky_relu"]), B=st.integers(1, 3),
       routing=st.sampled_from(ldrl.ROUTINGS))
def test_plans_match_the_reference_on_drawn_conv_blocks(seed, c_in, c_out, hw, kp, pool, activation, B,
                                                        routing):
    k, padding = kp
    if hw + 2 * padding - k + 1 < (3 if pool == "max3-overlap" else 2):
        return  # too small for the pool
    pool_args = {"max2": dict(pool="max"), "max3-overlap": dict(pool="max", pool_k=3, pool_stride=2,
                                                                 pool_padding=1),
                 "avg2": dict(pool="avg"), "none": dict(pool=None)}[pool]
    block = conv_block("drawn", (c_in, hw, hw), c_out, k=k, padding=padding, activation=activation,
                       **pool_args)
    assert_plans_match(block, seed, routing, B)


@given(seed=st.integers(0, 2 ** 32 - 1), n_in=st.integers(1, 8), n_out=st.integers(1, 8),
       activation=st.sampled_from([None, "elu", "tanh"]), B=st.integers(1, 4))
def test_plans_match_the_reference_on_drawn_linear_blocks(seed, n_in, n_out, activation, B):
    assert_plans_match(linear_block("drawn", (n_in,), n_out, activation), seed, "noisy", B)


# -- meta-tests: the comparison fails on a planted bug --------------------------------------

class StaleFeaturesPlan(ConvPoolPlan):
    """Forgets to clear the last iteration's noisy positions: right on the first draw only."""

    def _scatter_features(self, y_noisy, idx_noisy, eta):
        self.last_noisy = self.clean_flat[:0]
        super()._scatter_features(y_noisy, idx_noisy, eta)


class SlightlyScaledPlan(FirstLayerPlan):
    """A gradient off by 1e-9 relative: far below any training effect, far above round-off."""

    def grads(self, omega, eps, eta, with_loss=False):
        g, loss = super().grads(omega, eps, eta, with_loss)
        return {k: v * (1 + 1e-9) for k, v in g.items()}, loss


class TransposedNoisePlan(ConvPoolPlan):
    """Routes G(F(x + eps)) by the clean indices while claiming the noisy routing."""

    def _noisy_pool(self, eps):
        y_noisy, _ = super()._noisy_pool(eps)
        return y_noisy, self.route[0]


class EvenShortcutPlan(WinogradConvPoolPlan):
    """Takes the even-sided shortcut KA^T d = (KA^T KA) M on odd sides too (the last tile row is not zero)."""

    def _allocate_operands(self, x):
        super()._allocate_operands(x)
        self.even_g, self.KAtKA = True, wg.KA.T @ wg.KA


# padding 2: G's output (5 x 5) is odd and its last row reads un-pooled features (conv output 7 x 7)
ODD = conv_block("odd", (3, 5, 5), 4, k=3, padding=2, activation="elu", pool="max")


@pytest.mark.parametrize("bug, block", [(StaleFeaturesPlan, None), (SlightlyScaledPlan, None),
                                        (TransposedNoisePlan, None), (EvenShortcutPlan, ODD)])
def test_a_wrong_plan_fails_the_comparison(bug, block):
    block = block or simple_vgg(channels=(3, 4, 4, 5, 5)).blocks[1]
    with pytest.raises(AssertionError):
        assert_plans_match(block, seed=5, routing="noisy", B=3, plans=[bug])
    assert_plans_match(block, seed=5, routing="noisy", B=3, plans=[bug.__mro__[1]])  # the parent is right


def test_unknown_routing_is_refused():
    block = linear_block("l", (3,), 2)
    rng = np.random.default_rng(0)
    W = block.init_forward(rng, np.float64)
    x = rng.standard_normal((2, 3))
    y, cache = block.forward(W, x)
    with pytest.raises(ValueError, match="unknown L-DRL routing 'loud'.*noisy, clean"):
        ldrl.make_plan(block, W, x, y, block.route(cache), routing="loud")


def test_refdtp_winograd_0_selects_the_im2col_plan(monkeypatch):
    block = conv_block("wide", (64, 4, 4), 64, k=3, padding=1, activation="elu", pool="max")
    rng = np.random.default_rng(0)
    W = block.init_forward(rng, np.float64)
    x = rng.standard_normal((2, *block.in_shape))
    y, cache = block.forward(W, x)
    monkeypatch.setenv("REFDTP_WINOGRAD", "0")
    assert type(ldrl.make_plan(block, W, x, y, block.route(cache))) is ConvPoolPlan
