"""NumPy vs CuPy parity: every op, every loss and gradient, and a full L-DRL train step
give the same numbers on both backends for the same host-drawn inputs.

All tests are marked ``gpu`` and skip cleanly where CuPy or a GPU is missing. Inputs,
parameters and noise are drawn on the host and copied to the device, so both backends
compute from identical numbers. Tolerances are per dtype (CuPy's ``numpy_cupy_allclose``
idiom): cuBLAS and NumPy's BLAS sum in different orders, so float32 agreement is ~1e-6
relative, not bit-exact. On the CPU, tests/test_parity_standin.py proves them with a stand-in
(NumPy vs NumPy on inputs moved by one ulp: the train step's worst difference is 2.2e-7 of an
array's largest entry in float32 and 4e-16 in float64; it passes, and a planted error of ten
times rtol at the largest entry fails). On a GPU machine, ``pytest -m gpu`` fails loudly
(conftest.py) instead of skipping when nvidia-smi sees a GPU that CuPy cannot use.
"""
import numpy as np
import pytest

from refdtp import algorithms, backend, ldrl
from refdtp import feedback as fb
from refdtp.activations import ACTIVATIONS
from refdtp.backend import Noise as HOST_NOISE
from refdtp.backend import to_backend
from refdtp.config import Config
from refdtp.losses import cross_entropy, cross_entropy_grad
from refdtp.networks import lenet, simple_vgg
from refdtp.ops import Act, AvgPool2d, Conv2d, ConvTranspose2d, Flatten, Linear, MaxPool2d, Reshape
from refdtp.ops import winograd as wg
from refdtp.targets import dtp_forward_grads, forward_loss

DEVICE = "cupy"  # the backend compared with NumPy
TOL = {
    np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-12},
    np.dtype(np.float32): {"rtol": 1e-4, "atol": 1e-5},
}
DTYPES = [np.float32, np.float64]

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_device():
    if DEVICE == "cupy" and not backend.gpu_available():
        pytest.skip("NumPy/CuPy parity needs CuPy and an NVIDIA GPU")


def dev(tree, dtype=None):
    """Host arrays (or a nested dict / tuple of them) copied to the device backend."""
    if isinstance(tree, dict):
        return {k: dev(v, dtype) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(dev(v, dtype) for v in tree)
    if tree is None:
        return None
    return backend.to_backend(tree, DEVICE, dtype)


def assert_parity(host, device, dtype, what):
    """Same structure, and every array equal within the dtype's tolerance."""
    if isinstance(host, dict):
        assert host.keys() == device.keys(), f"{what}: keys differ"
        for k in host:
            assert_parity(host[k], device[k], dtype, f"{what}.{k}")
        return
    if isinstance(host, (tuple, list)):
        assert len(host) == len(device), f"{what}: lengths differ"
        for i, (h, d) in enumerate(zip(host, device, strict=True)):
            assert_parity(h, d, dtype, f"{what}[{i}]")
        return
    if host is None:
        assert device is None, what
        return
    h, d = np.asarray(backend.to_host(host)), backend.to_host(device)
    assert h.shape == d.shape and h.dtype == d.dtype, f"{what}: {h.shape} {h.dtype} vs {d.shape} {d.dtype}"
    if h.dtype.kind in "iub":
        np.testing.assert_array_equal(d, h, err_msg=what)
    else:
        np.testing.assert_allclose(d, h, err_msg=what, **TOL[np.dtype(dtype)])


def spaced(rng, shape, gap=2e-3):
    """Distinct values with gaps >= gap: max-pool windows have no ties on either backend."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * gap - 0.5 * n * gap).reshape(shape)


# -- ops --------------------------------------------------------------------------------------

def op_cases():
    conv_geoms = [(3, 1, 1), (3, 2, 1), (5, 1, 2), (2, 2, 0), (4, 3, 1)]
    cases = [("linear", Linear(6, 5))]
    cases += [(f"conv{k}{s}{p}", Conv2d((3, 7, 6), 4, k, s, p)) for k, s, p in conv_geoms]
    cases += [(f"convT{k}{s}{p}", ConvTranspose2d((3, 7, 6), 4, k, s, p)) for k, s, p in conv_geoms]
    for k, s, p in [(2, 2, 0), (3, 2, 1)]:
        pool = MaxPool2d((3, 8, 8), k, s, p)
        cases += [(f"maxpool{k}{s}{p}", pool), (f"maxunpool{k}{s}{p}", pool.inverted())]
        avg = AvgPool2d((3, 8, 8), k, s, p)
        cases += [(f"avgpool{k}{s}{p}", avg), (f"avgunpool{k}{s}{p}", avg.inverted())]
    cases += [("reshape", Reshape((3, 4, 2), (4, 6))), ("flatten", Flatten((3, 4, 2)))]
    cases += [(f"act_{name}", Act((3, 4), name)) for name in sorted(ACTIVATIONS)]
    return cases


OP_CASES = op_cases()


def op_outputs(op, p, x, route, dx, dy, dp):
    """forward, jvp, vjp, param grads and param jvp of one op on one backend."""
    y, cache = op.forward(p, x, route)
    out = {"y": y, "jvp": op.jvp(p, cache, dx), "vjp": op.vjp(p, cache, dy)}
    if isinstance(op, MaxPool2d):
        out["indices"] = cache
    if op.has_params:
        out["param_grads"] = op.param_grads(p, cache, dy)
        out["param_jvp"] = op.param_jvp(p, cache, dp)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, op", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_op_forward_jvp_vjp_and_param_grads_match_numpy(name, op, dtype):
    rng = np.random.default_rng(0)
    B = 2
    x = spaced(rng, (B, *op.in_shape)).astype(dtype)
    if name.startswith("act_"):
        x = (np.where(x < 0, -1, 1) * (np.abs(x) + 0.1)).astype(dtype)  # away from the kinks at 0
    p = {k: v.astype(dtype) for k, v in op.init_params(rng, dtype).items()}
    dp = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in p.items()}
    route = route_dev = None
    if op.needs_route:
        pool_x = spaced(rng, (B, *op.pool.in_shape)).astype(dtype)
        route = op.pool.forward({}, pool_x)[1]
        route_dev = op.pool.forward({}, dev(pool_x))[1]
        assert_parity(route, route_dev, dtype, f"{name} route indices")
    y_shape = (B, *op.out_shape)
    dx = rng.standard_normal(x.shape).astype(dtype)
    dy = rng.standard_normal(y_shape).astype(dtype)
    host = op_outputs(op, p, x, route, dx, dy, dp)
    device = op_outputs(op, dev(p), dev(x), route_dev, dev(dx), dev(dy), dev(dp))
    assert_parity(host, device, dtype, name)


# -- losses and gradients -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_and_gradient_match_numpy(dtype, reduction):
    rng = np.random.default_rng(1)
    z = (5 * rng.standard_normal((6, 10))).astype(dtype)
    z[0, 0] = 1e4  # the stable log-softmax on both backends
    y = rng.integers(0, 10, 6)
    host = {"loss": cross_entropy(z, y, reduction), "grad": cross_entropy_grad(z, y, reduction)}
    device = {"loss": cross_entropy(dev(z), dev(y), reduction),
              "grad": cross_entropy_grad(dev(z), dev(y), reduction)}
    assert_parity(host, device, dtype, f"cross_entropy({reduction})")


def network_case(make, dtype, seed=0, B=3):
    net = make()
    rng = np.random.default_rng(seed)
    W, omega = net.init(seed, dtype)
    x = rng.standard_normal((B, *net.in_shape)).astype(dtype)
    y = rng.integers(0, net.num_classes, B)
    return net, W, omega, x, y, rng


NETS = {"simple_vgg": lambda: simple_vgg(channels=(4, 4, 6, 6, 8)),
        "lenet": lambda: lenet(in_shape=(3, 12, 12))}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("net_name", sorted(NETS))
def test_forward_pass_targets_and_forward_loss_grads_match_numpy(net_name, dtype):
    net, W, omega, x, y, _ = network_case(NETS[net_name], dtype)

    def outputs(W, omega, x, y):
        trace = net.forward(W, x)
        grads, targets = dtp_forward_grads(net, W, omega, trace, y, beta=0.7)
        return {"s": trace.s, "targets": targets[1:], "grads": grads, "loss": forward_loss(trace, targets)}

    assert_parity(outputs(W, omega, x, y), outputs(dev(W), dev(omega), dev(x), dev(y)), dtype, net_name)


def feedback_outputs(net, W, omega, x, n, eps, eta, sigma):
    """Every feedback loss and gradient of block n on one backend, for given noise."""
    trace = net.forward(W, x)
    block = net.blocks[n - 1]
    name = block.name
    xs, ys = trace.s[n - 1], trace.s[n]
    route = block.route(trace.caches[n - 1])
    u = ldrl.ldrl_constants(block, ys, route)
    fused, fused_loss = ldrl.ldrl_grads_fused(block, W[name], omega[name], xs, ys, route, u, eps, eta, True)
    dtp, dtp_loss = fb.dtp_grads(block, W[name], omega[name], xs, eps, True)
    drl, drl_loss = fb.drl_grads(net, W, omega, trace, n, eps, sigma, True)
    return {"ldrl_loss": ldrl.ldrl_loss(block, W[name], omega[name], xs, ys, route, eps, eta),
            "ldrl_naive": ldrl.ldrl_grads_naive(block, W[name], omega[name], xs, ys, route, eps, eta),
            "ldrl_fused": fused, "ldrl_fused_loss": fused_loss,
            "dtp": dtp, "dtp_loss": dtp_loss, "drl": drl, "drl_loss": drl_loss}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("net_name, n", [("simple_vgg", 2), ("simple_vgg", 6), ("lenet", 2), ("lenet", 3)])
def test_feedback_losses_and_gradients_match_numpy(net_name, n, dtype):
    net, W, omega, x, _, rng = network_case(NETS[net_name], dtype)
    sigma = 0.1
    shapes = net.forward(W, x).s
    eps = (sigma * rng.standard_normal(shapes[n - 1].shape)).astype(dtype)  # noise drawn on the host
    eta = (sigma * rng.standard_normal(shapes[n].shape)).astype(dtype)
    host = feedback_outputs(net, W, omega, x, n, eps, eta, sigma)
    device = feedback_outputs(net, dev(W), dev(omega), dev(x), n, dev(eps), dev(eta), sigma)
    assert_parity(host, device, dtype, f"{net_name} block {n}")


# -- a full L-DRL training step -------------------------------------------------------------------

class HostNoise:
    """Drop-in for :class:`refdtp.backend.Noise` that draws on the host, then copies.

    ``train_step`` draws its noise inside, on the array's own backend, and CuPy's
    generator gives different numbers from NumPy's for the same seed. Comparing
    statistics of two runs would be weak (a wrong device-side formula could hide in
    the noise), so both runs get this class instead: the same host stream, copied to
    whichever backend the step runs on, and the step is compared number for number.
    The device generator itself is checked separately (seeding, dtype, statistics)
    in :func:`test_device_noise_is_seeded_and_has_the_requested_scale`.
    """

    def __init__(self, seed, *keys, backend="numpy", bit_generator="pcg64"):
        self.target = backend
        self._host = HOST_NOISE(seed, *keys, backend="numpy", bit_generator=bit_generator)

    def normal(self, shape, scale, dtype):
        return to_backend(self._host.normal(shape, scale, dtype), self.target)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_full_ldrl_train_step_matches_numpy_with_host_drawn_noise(dtype, monkeypatch):
    monkeypatch.setattr(algorithms, "Noise", HostNoise)
    net = simple_vgg(num_classes=10, channels=(4, 6, 8), in_shape=(3, 16, 16))
    cfg = Config(network="simple_vgg", channels=[4, 6, 8], dtype=dtype, seed=3, lr=0.02,
                 feedback_iterations=[3, 3, 3], feedback_sigma=[0.1, 0.1, 0.08],
                 feedback_lr=[1e-2, 1e-2, 0.1])
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 3, 16, 16)).astype(dtype)
    y = rng.integers(0, 10, 8)
    results = {}
    for name, to in (("numpy", lambda a: a), (DEVICE, dev)):
        state = algorithms.init_state(cfg, net, backend=name)
        for _ in range(2):  # the second step uses the carried momentum buffers
            state, stats = algorithms.train_step(cfg, net, state, to(x), to(y), cfg.lr)
        results[name] = {"W": state.W, "omega": state.omega, "forward_opt": state.forward_opt["momentum"],
                         "feedback_opt": {k: v["momentum"] for k, v in state.feedback_opt.items()},
                         "stats": {k: np.asarray(v, dtype=dtype) for k, v in stats.items()}}
    assert_parity(results["numpy"], results[DEVICE], np.dtype(dtype), "train_step")


@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_transforms_match_numpy(dtype):
    """F(2x2, 3x3) convolution and weight gradient (odd sides, every padding) on the device."""
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((3, 4, 7, 6)).astype(dtype), rng.standard_normal((5, 4, 3, 3)).astype(dtype)
    for p in (0, 1, 2):
        dy = rng.standard_normal((3, 5, 5 + 2 * p, 4 + 2 * p)).astype(dtype)
        host = (wg.conv2d(x, w, None, p), wg.conv2d_weight_grad(x, dy, p))
        device = (wg.conv2d(dev(x), dev(w), None, p), wg.conv2d_weight_grad(dev(x), dev(dy), p))
        assert_parity(host, device, np.dtype(dtype), f"winograd padding {p}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_noise_is_seeded_and_has_the_requested_scale(dtype):
    a = backend.Noise(4, 7, 0, 1, backend=DEVICE).normal((200_000,), 0.3, dtype)
    b = backend.Noise(4, 7, 0, 1, backend=DEVICE).normal((200_000,), 0.3, dtype)
    c = backend.Noise(4, 7, 0, 2, backend=DEVICE).normal((200_000,), 0.3, dtype)
    assert backend.backend_name(a) == DEVICE and a.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(backend.to_host(a), backend.to_host(b))
    assert not np.array_equal(backend.to_host(a), backend.to_host(c))
    h = backend.to_host(a).astype(np.float64)
    # 200k draws: the mean's standard error is 0.3/447 ~ 7e-4, the std's ~ 5e-4 (5 sigma below).
    assert abs(h.mean()) < 4e-3 and abs(h.std() - 0.3) < 3e-3, (h.mean(), h.std())
