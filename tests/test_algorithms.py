"""refdtp.algorithms: one training step of every algorithm, reproducibility, optimiser
state, config validation, divergence handling, and end-to-end learning with L-DRL."""
import copy
import math

import numpy as np
import pytest

from refdtp.algorithms import DivergenceError, TrainState, feedback_phase, init_state, train_step
from refdtp.backend import host_rng
from refdtp.backprop import cross_entropy_gradients
from refdtp.config import ALGORITHMS, Config, build_network
from refdtp.networks import mlp, simple_vgg
from refdtp.targets import dtp_forward_grads
from refdtp.training.presets import PRESETS, get_preset

CHANNELS = [4, 6]


def small_net(num_classes=4):
    return simple_vgg(num_classes=num_classes, channels=CHANNELS, in_shape=(1, 8, 8))


def small_cfg(algorithm="ldrl", **overrides):
    """A Config for small_net(): 3 blocks, so 2 trained feedback blocks."""
    kw = dict(algorithm=algorithm, network="simple_vgg", channels=CHANNELS, lr=0.02, seed=0,
              feedback_iterations=[3, 3], feedback_sigma=[0.1, 0.08], feedback_lr=[1e-2, 0.1])
    if algorithm == "drl":
        kw.update(feedback_sigma=[0.01, 0.01], feedback_lr=[1e-4, 1e-4])
    kw.update(overrides)
    return Config(**kw)


def batch(seed=0, B=8, shape=(1, 8, 8), K=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, *shape)).astype(np.float32), rng.integers(0, K, B)


def snapshot(state: TrainState) -> TrainState:
    return copy.deepcopy(state)


def assert_trees_equal(a, b, what):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{what}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_trees_equal(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=what)
    else:
        assert a == b, f"{what}: {a} != {b}"


def trees_differ(a, b) -> bool:
    try:
        assert_trees_equal(a, b, "")
    except AssertionError:
        return True
    return False


def angle_degrees(a, b) -> float:
    """Angle between two arrays (robust half-angle formula, no arccos round-off)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return math.degrees(2 * math.atan2(np.linalg.norm(nb * a - na * b), np.linalg.norm(nb * a + na * b)))


# -- one step of every algorithm ------------------------------------------------------------

@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a not in ("fwdtp", "ddtp")])
def test_every_algorithm_runs_one_step_with_finite_stats(algorithm):  # fwdtp, ddtp: tests/test_family.py
    net, cfg = small_net(), small_cfg(algorithm)
    state = init_state(cfg, net)
    before = snapshot(state)
    x, y = batch()
    new, stats = train_step(cfg, net, state, x, y, cfg.lr)
    assert all(math.isfinite(v) for v in stats.values()), stats
    assert 0.0 <= stats["accuracy"] <= 1.0
    feedback_keys = {f"feedback_loss/{n}" for n in net.names[1:]}
    if algorithm == "bp":
        assert "forward_loss" not in stats and not feedback_keys & stats.keys()
        assert_trees_equal(new.omega, before.omega, "bp leaves the feedback weights alone")
    else:
        assert "forward_loss" in stats and feedback_keys <= stats.keys(), sorted(stats)
        assert trees_differ(new.omega, before.omega), "feedback weights were not trained"
    assert trees_differ(new.W, before.W), "forward weights did not move"
    assert (new.epoch, new.step, new.global_step) == (0, 1, 1)
    for params in (new.W, new.omega):
        for block in params.values():
            assert all(a.dtype == np.float32 for a in block.values()), "training dtype must stay float32"
    assert_trees_equal(state.W, before.W, "train_step must not modify its input state")
    assert_trees_equal(state.omega, before.omega, "train_step must not modify its input state")


@pytest.mark.parametrize("algorithm", ["ldrl", "drl", "bp"])
def test_same_seed_gives_bit_identical_parameters_and_different_seeds_differ(algorithm):
    net = small_net()
    x, y = batch()

    def run(seed):
        cfg = small_cfg(algorithm, seed=seed)
        state = init_state(cfg, net)
        for _ in range(3):
            state, _ = train_step(cfg, net, state, x, y, cfg.lr)
        return state

    a, b, c = run(5), run(5), run(6)
    assert_trees_equal(a.W, b.W, "W")
    assert_trees_equal(a.omega, b.omega, "omega")
    assert_trees_equal(a.forward_opt, b.forward_opt, "forward optimiser")
    assert_trees_equal(a.feedback_opt, b.feedback_opt, "feedback optimisers")
    assert trees_differ(a.W, c.W), "a different seed must give different parameters"


def test_feedback_noise_depends_on_seed_epoch_and_step():
    """Same initial state, different noise streams -> different feedback updates."""
    net, cfg = small_net(), small_cfg()
    state = init_state(cfg, net)
    x, y = batch()
    base, _ = train_step(cfg, net, state, x, y, cfg.lr)
    for moved in (TrainState(state.W, state.omega, state.forward_opt, state.feedback_opt, epoch=1),
                  TrainState(state.W, state.omega, state.forward_opt, state.feedback_opt, step=1)):
        other, _ = train_step(cfg, net, moved, x, y, cfg.lr)
        assert trees_differ(base.omega, other.omega)
    again, _ = train_step(cfg, net, state, x, y, cfg.lr)
    assert_trees_equal(base.omega, again.omega, "same (seed, epoch, step) -> same noise")


def test_feedback_noise_follows_the_configured_bit_generator():
    """noise_generator picks the stream: SFC64 (default) and PCG64 give different feedback updates;
    a config saved before the field existed reads back as PCG64, the generator it ran with."""
    net, x, y = small_net(), *batch()
    fast, legacy = small_cfg(), small_cfg(noise_generator="pcg64")
    assert fast.noise_generator == "sfc64"
    state = init_state(fast, net)
    a, _ = train_step(fast, net, state, x, y, fast.lr)
    b, _ = train_step(legacy, net, state, x, y, legacy.lr)
    assert trees_differ(a.omega, b.omega)
    saved = {k: v for k, v in legacy.to_dict().items() if k != "noise_generator"}
    assert Config.from_saved(saved) == legacy
    assert Config.from_saved(fast.to_dict()) == fast
    with pytest.raises(ValueError, match="noise_generator"):
        small_cfg(noise_generator="mt19937").validate()


def test_feedback_optimizer_momentum_persists_across_batches():
    net, cfg = small_net(), small_cfg()
    x, y = batch()
    s1, _ = train_step(cfg, net, init_state(cfg, net), x, y, cfg.lr)
    for name, K in zip(net.names[1:], cfg.feedback_iterations, strict=True):
        st = s1.feedback_opt[name]
        assert st["step"] == K and np.any(st["momentum"]["weight"] != 0), f"{name}: {st['step']}"
    assert "conv_0" not in s1.feedback_opt, "G_1 is never trained"
    s2, _ = train_step(cfg, net, s1, x, y, cfg.lr)
    assert s2.feedback_opt["conv_1"]["step"] == 2 * cfg.feedback_iterations[0]
    fresh = init_state(cfg, net).feedback_opt
    reset = TrainState(s1.W, s1.omega, s1.forward_opt, fresh, s1.epoch, s1.step, s1.global_step)
    s2_reset, _ = train_step(cfg, net, reset, x, y, cfg.lr)
    assert trees_differ(s2.omega, s2_reset.omega), "the carried momentum buffer must change the update"
    assert s2.forward_opt["step"] == 2 and "conv_0.weight" in s2.forward_opt["momentum"]


def test_bp_step_is_sgd_on_the_mean_cross_entropy_gradient():
    net = small_net()
    cfg = small_cfg("bp", momentum=0.0, weight_decay=0.0)
    state = init_state(cfg, net)
    x, y = batch()
    new, _ = train_step(cfg, net, state, x, y, 0.1)
    grads = cross_entropy_gradients(net, state.W, x, y)
    for name in net.names:
        for k in state.W[name]:
            np.testing.assert_allclose(new.W[name][k], state.W[name][k] - 0.1 * grads[name][k],
                                       rtol=1e-6, atol=1e-7, err_msg=f"{name}.{k}")


# -- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["feedback_iterations", "feedback_sigma", "feedback_lr"])
@pytest.mark.parametrize("length", [1, 3])
def test_per_block_lists_of_the_wrong_length_raise_naming_key_and_expected_count(key, length):
    net = small_net()
    cfg = small_cfg(**{key: [1] * length})
    with pytest.raises(ValueError, match=rf"{key} has {length} entries but .* has 2 trained feedback blocks"):
        init_state(cfg, net)
    init_state(small_cfg("bp", **{key: [1] * length}), net)  # BP trains no feedback: lists ignored


def test_config_rejects_bad_values_and_unknown_keys():
    for kw, pattern in [({"algorithm": "sgd"}, "algorithm"), ({"dtype": "float16"}, "dtype"),
                        ({"beta": 0.0}, "beta"), ({"batch_size": 0}, "batch_size"),
                        ({"feedback_lr": [-1.0, 0.1]}, "non-negative")]:
        with pytest.raises(ValueError, match=pattern):
            small_cfg(**kw).validate(small_net())
    with pytest.raises(ValueError, match="unknown config keys"):
        Config.from_dict({"learning_rate": 0.1})


PRESET_INPUTS = {"cifar10": ((3, 32, 32), 10), "imagenet32": ((3, 32, 32), 1000), "mnist": ((1, 28, 28), 10),
                 "fmnist": ((1, 28, 28), 10), "digits": ((1, 8, 8), 10)}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates_against_its_network(name):
    cfg = get_preset(name)
    in_shape, classes = PRESET_INPUTS[cfg.dataset]
    net = build_network(cfg, in_shape, classes)
    cfg.validate(net)
    assert net.num_classes == classes
    assert get_preset(name) is not get_preset(name), "presets must be fresh objects"


# -- divergence ------------------------------------------------------------------------------

# Overflow to inf is the point of these tests; the warnings would otherwise be errors.
ignore_overflow_warnings = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                                                 "ignore:invalid value encountered:RuntimeWarning")


def assert_state_intact(state, before):
    assert_trees_equal(state.W, before.W, "W after a failed step")
    assert_trees_equal(state.omega, before.omega, "omega after a failed step")
    assert_trees_equal(state.forward_opt, before.forward_opt, "forward optimiser after a failed step")
    assert_trees_equal(state.feedback_opt, before.feedback_opt, "feedback optimisers after a failed step")


@ignore_overflow_warnings
def test_huge_feedback_lr_raises_divergence_error_naming_block_and_leaves_state_intact():
    net = small_net()
    cfg = small_cfg(feedback_lr=[1e30, 0.1], feedback_iterations=[4, 1])
    x, y = batch()
    sane = small_cfg()
    state, _ = train_step(sane, net, init_state(sane, net), x, y, sane.lr)  # a state with momentum
    before = snapshot(state)
    with pytest.raises(DivergenceError, match=r"feedback weights of block conv_1: weight became NaN/Inf"):
        train_step(cfg, net, state, x, y, cfg.lr)
    assert_state_intact(state, before)


@ignore_overflow_warnings
def test_infinite_forward_lr_raises_divergence_error_naming_the_parameter():
    net, cfg = small_net(), small_cfg()
    state = init_state(cfg, net)
    before = snapshot(state)
    x, y = batch()
    with pytest.raises(DivergenceError, match=r"forward weights: \w+\.(weight|bias) became NaN/Inf"):
        train_step(cfg, net, state, x, y, float("inf"))
    assert_state_intact(state, before)


def test_nan_forward_weight_raises_divergence_error_naming_the_output_block():
    net, cfg = small_net(), small_cfg()
    state = init_state(cfg, net)
    state.W["conv_1"]["weight"][0, 0, 0, 0] = np.nan
    before = snapshot(state)
    x, y = batch()
    with pytest.raises(DivergenceError, match=r"cross-entropy of block fc's output is nan"):
        train_step(cfg, net, state, x, y, cfg.lr)
    assert_state_intact(state, before)


def test_nan_feedback_weight_raises_divergence_error_naming_the_block():
    net, cfg = small_net(), small_cfg()
    state = init_state(cfg, net)
    state.omega["fc"]["weight"][0, 0] = np.nan
    before = snapshot(state)
    x, y = batch()
    with pytest.raises(DivergenceError, match=r"feedback weights of block fc"):
        train_step(cfg, net, state, x, y, cfg.lr)
    assert_state_intact(state, before)


def test_nan_input_is_rejected_before_any_update():
    net, cfg = small_net(), small_cfg()
    state = init_state(cfg, net)
    x, y = batch()
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="input contains NaN"):
        train_step(cfg, net, state, x, y, cfg.lr)
    with pytest.raises(ValueError, match="labels"):
        train_step(cfg, net, state, batch()[0], y[:5], cfg.lr)


# -- learning end to end ------------------------------------------------------------------------

def class_mean_task(seed, n, shape, K=4, noise=1.0):
    """Learnable synthetic task: x = mu_y + noise, with fixed random class-mean images mu_k."""
    rng = host_rng(seed, 99)
    means = rng.standard_normal((K, *shape))
    labels = rng.integers(0, K, n)
    x = means[labels] + noise * rng.standard_normal((n, *shape))
    return x.astype(np.float32), labels


def train_accuracy(net, cfg, x, y, epochs, batch_size=32):
    state = init_state(cfg, net)
    for epoch in range(epochs):
        state = TrainState(state.W, state.omega, state.forward_opt, state.feedback_opt, epoch, 0,
                           state.global_step)
        for i in range(0, len(y), batch_size):
            state, _ = train_step(cfg, net, state, x[i:i + batch_size], y[i:i + batch_size], cfg.lr)
    return float((net.logits(state.W, x).argmax(axis=1) == y).mean())


def test_ldrl_trains_a_small_mlp_to_high_accuracy():
    x, y = class_mean_task(1, 256, (10,))
    net = mlp((10, 16, 4), activation="elu")
    cfg = Config(network="mlp", hidden=[16], lr=0.05, seed=0, feedback_iterations=[5], feedback_sigma=[0.1],
                 feedback_lr=[0.1])
    acc = train_accuracy(net, cfg, x, y, epochs=6)
    assert acc >= 0.9, f"L-DRL mlp train accuracy {acc:.3f} (chance 0.25)"


def test_ldrl_trains_a_small_convnet_to_high_accuracy():
    x, y = class_mean_task(0, 256, (1, 8, 8))
    net = simple_vgg(num_classes=4, channels=(8, 16), in_shape=(1, 8, 8))
    cfg = Config(network="simple_vgg", channels=[8, 16], lr=0.02, seed=0, feedback_iterations=[10, 10],
                 feedback_sigma=[0.1, 0.08], feedback_lr=[1e-2, 0.1])
    acc = train_accuracy(net, cfg, x, y, epochs=5)
    assert acc >= 0.9, f"L-DRL conv net train accuracy {acc:.3f} (chance 0.25)"


def hidden_angles(net, W, omega, x, y, beta=0.005):
    """DTP (1/beta) update vs BP gradient, per hidden block, in float64."""
    def to64(p):
        return {k: {n: a.astype(np.float64) for n, a in v.items()} for k, v in p.items()}

    W64, om64, x64 = to64(W), to64(omega), x.astype(np.float64)
    dtp, _ = dtp_forward_grads(net, W64, om64, net.forward(W64, x64), y, beta)
    bp = cross_entropy_gradients(net, W64, x64, y)
    return {n: angle_degrees(dtp[n]["weight"], bp[n]["weight"]) for n in net.names[:-1]}


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_ldrl_feedback_training_aligns_dtp_updates_with_bp(kind):
    if kind == "mlp":
        net, shape = mlp((10, 16, 12, 4), activation="elu"), (10,)
        cfg = Config(network="mlp", hidden=[16, 12], seed=0, feedback_iterations=[300, 300],
                     feedback_sigma=[0.1, 0.08], feedback_lr=[0.1, 0.1])
    else:
        net, shape = simple_vgg(num_classes=4, channels=(8, 16), in_shape=(1, 8, 8)), (1, 8, 8)
        cfg = Config(network="simple_vgg", channels=[8, 16], seed=0, feedback_iterations=[300, 300],
                     feedback_sigma=[0.1, 0.08], feedback_lr=[0.1, 0.1])
    x, y = class_mean_task(0, 32, shape)
    state = init_state(cfg, net)
    random_fb = hidden_angles(net, state.W, state.omega, x, y)
    omega, _, _ = feedback_phase(cfg, net, state, net.forward(state.W, x), 0, 0, "numpy")
    trained = hidden_angles(net, state.W, omega, x, y)
    for name in random_fb:
        assert random_fb[name] > 60, f"random feedback {name}: {random_fb[name]:.1f} deg (expected ~90)"
        assert trained[name] < 45 and trained[name] < 0.5 * random_fb[name], \
            f"{name}: {trained[name]:.1f} deg after L-DRL vs {random_fb[name]:.1f} deg random"
