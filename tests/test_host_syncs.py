"""Host syncs of a training step, counted on the CPU with a stand-in for device arrays.

``SyncArray`` is a NumPy array subclass that counts every conversion of one of its values to a
Python number or bool (``float``, ``int``, ``bool``, ``item``): on CuPy each is a blocking
device -> host sync. Before refdtp.hostsync, a small SimpleVGG L-DRL step made 31 of them
(23 finite checks, 4 label-range ints, the losses and accuracy); now it makes none and fetches
everything in one batched transfer. Also: per-batch constants of the input normalisation are
uploaded once, not once per batch.
"""
import collections

import numpy as np
import pytest

from refdtp import algorithms, hostsync
from refdtp.config import Config
from refdtp.networks import simple_vgg

COUNT = collections.Counter()


class SyncArray(np.ndarray):
    """Stand-in for a device array: counts host conversions of its values."""

    def __float__(self):
        COUNT["float"] += 1
        return float(np.asarray(self)[()])

    def __int__(self):
        COUNT["int"] += 1
        return int(np.asarray(self)[()])

    def __bool__(self):
        COUNT["bool"] += 1
        return bool(np.asarray(self)[()])

    def item(self, *args):
        COUNT["item"] += 1
        return np.asarray(self).item(*args)


def dev(tree):
    if isinstance(tree, dict):
        return {k: dev(v) for k, v in tree.items()}
    return np.asarray(tree).view(SyncArray)


def setup(algorithm="ldrl"):
    net = simple_vgg(num_classes=10, channels=(4, 6, 8, 8, 8), in_shape=(3, 32, 32))
    cfg = Config(network="simple_vgg", channels=[4, 6, 8, 8, 8], dtype="float32", seed=3, lr=0.02,
                 algorithm=algorithm, feedback_iterations=[2] * 5, feedback_sigma=[0.1] * 5,
                 feedback_lr=[1e-2] * 5)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 4)
    s = algorithms.init_state(cfg, net)
    state = algorithms.TrainState(dev(s.W), dev(s.omega), dev(s.forward_opt), dev(s.feedback_opt))
    return net, cfg, x, y, state


@pytest.fixture
def deferred(monkeypatch):
    monkeypatch.setattr(algorithms, "DEFER_SYNCS_ON_NUMPY", True)  # as on a GPU


@pytest.mark.parametrize("algorithm", ["ldrl", "bp", "drl"])
def test_a_training_step_makes_no_scalar_sync_and_one_batched_fetch(deferred, algorithm):
    net, cfg, x, y, state = setup(algorithm)
    plain = algorithms.train_step(cfg, net, state, np.asarray(x), np.asarray(y), cfg.lr, workers=1)[1]
    COUNT.clear()
    before = hostsync.FETCHES[0]
    _, stats = algorithms.train_step(cfg, net, state, dev(x), dev(y), cfg.lr, workers=1)
    assert sum(COUNT.values()) == 0, dict(COUNT)
    assert hostsync.FETCHES[0] - before == 1
    assert stats == plain and all(type(v) is float for v in stats.values())


def test_deferred_checks_still_raise_in_order_and_keep_the_state(deferred):
    net, cfg, x, y, state = setup()
    bad_x = x.copy()
    bad_x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="input contains NaN"):
        algorithms.train_step(cfg, net, state, dev(bad_x), dev(y), cfg.lr, workers=1)
    # -1 (like CuPy's unchecked gathers, NumPy wraps it): the deferred range check reports it
    with pytest.raises(ValueError, match=r"labels: values must lie in \[0, 10\), got range \[-1, 2\]"):
        algorithms.train_step(cfg, net, state, dev(x), dev(np.array([0, 1, 2, -1])), cfg.lr, workers=1)
    state.W["conv_1"]["weight"][0, 0, 0, 0] = np.nan
    with pytest.raises(algorithms.DivergenceError, match="cross-entropy of block fc's output is nan"):
        algorithms.train_step(cfg, net, state, dev(x), dev(y), cfg.lr, workers=1)


def test_outside_a_step_values_and_checks_convert_at_once():
    assert hostsync.host_value(np.float32(1.5)) == 1.5
    with pytest.raises(RuntimeError, match="now"):
        hostsync.require(np.bool_(False), lambda: (_ for _ in ()).throw(RuntimeError("now")))
    with hostsync.HostSync() as hs:
        p = hostsync.host_value(np.float64(2.0))
        hostsync.require(np.bool_(True), lambda: None)
        with pytest.raises(RuntimeError, match="before"):
            p.get()
        hs.resolve()
    assert p.get() == 2.0


def test_normalisation_constants_are_uploaded_once(monkeypatch):
    from data_loaders import transforms
    calls = []
    real = transforms.to_backend
    monkeypatch.setattr(transforms, "to_backend", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    monkeypatch.setattr(transforms, "_PER_CHANNEL_CACHE", {})
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4)).astype(np.uint8)
    first = transforms.normalize(x, "cifar10", np.float32)
    for _ in range(3):
        np.testing.assert_array_equal(transforms.normalize(x, "cifar10", np.float32), first)
    assert len(calls) == 2  # scale and shift, once
