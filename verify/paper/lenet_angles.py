"""``lenet-angles``: the official code's "figure 4.3" (DTP vs BP angle per layer, LeNet, CIFAR-10).

Protocol (docs/algorithm.md §7.2; scalingDTP ``target_prop/theorem_test.py``):
LeNet without biases, pool kernel 3 / stride 2 / padding 0 (the variant that
produced the published csv; ``--set pool_padding=1`` for the later one), one
CIFAR-10 training batch of 256 per seed (seeds 123-127), beta = 0.4655. Three
feedback settings: random init, symmetric init (omega = W^T), and L-DRL
training from the random init (5000 iterations per layer, sigma [0.2, 0.2,
0.1], lr [1e-4, 2.5e-3, 1e-2] for conv_1, fc1, fc2, SGD momentum 0.9), run
with refdtp's own feedback phase (:func:`refdtp.algorithms.feedback_phase`).
The angle is between the raw DTP update and the BP gradient of each weight.

Each (seed, layer) L-DRL training is one Ray task. Differences from the
official code that remain: refdtp's un-pooling is the exact (summing) adjoint
of the overlapping max-pool, and the batch comes from refdtp's own seeded
shuffle and augmentation (random crop + flip), not PyTorch's.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from data_loaders import iterate_batches, load_dataset
from refdtp import metrics
from refdtp.algorithms import feedback_phase, init_state
from refdtp.backend import blas_threads
from refdtp.config import Config
from refdtp.networks import Network, conv_block, linear_block

from .registry import Result, Row, experiment

BETA = 0.4655
LAYERS = ("conv_0", "conv_1", "fc1", "fc2")
#: Published angles (degrees, mean ± sd over seeds 123-127; data/angle_data.csv at commit 7d73e5b).
PUBLISHED = {"random": [(86.5, 5.6), (93.2, 2.4), (90.3, 0.8), (0.03, float("nan"))],
             "symmetric": [(21.7, 1.6), (2.4, 0.3), (0.02, 0.01), (0.03, float("nan"))],
             "L-DRL": [(32.5, 4.4), (6.9, 0.6), (2.6, 0.1), (0.03, float("nan"))]}
SIGMA, LR = [0.2, 0.2, 0.1], [1e-4, 2.5e-3, 1e-2]
FULL = {"seeds": [123, 124, 125, 126, 127], "iterations": [5000, 5000, 5000]}
QUICK = {"seeds": [123, 124, 125], "iterations": [200, 1000, 1000]}


def lenet(pool_padding: int = 0) -> Network:
    """The paper's LeNet (docs/algorithm.md §5.3) with max-pool 3/2/``pool_padding``."""
    b1 = conv_block("conv_0", (3, 32, 32), 32, k=5, padding=2, pool_k=3, pool_stride=2,
                    pool_padding=pool_padding)
    b2 = conv_block("conv_1", b1.out_shape, 64, k=5, padding=2, pool_k=3, pool_stride=2,
                    pool_padding=pool_padding)
    b3 = linear_block("fc1", b2.out_shape, 512, activation="elu")
    return Network([b1, b2, b3, linear_block("fc2", b3.out_shape, 10)], "lenet")


def _config(seed: int, iterations: list, routing: str) -> Config:
    return Config(algorithm="ldrl", network="lenet", dataset="cifar10", normalization="cifar10",
                  batch_size=256, beta=BETA, seed=seed, dtype="float32", feedback_iterations=list(iterations),
                  feedback_sigma=list(SIGMA), feedback_lr=list(LR), feedback_momentum=0.9,
                  ldrl_routing=routing)


def setup(seed: int, opts: dict) -> tuple:
    """(net, W, omega, x, y) of one seed: no biases, random feedback, one augmented training batch."""
    net = lenet(opts["pool_padding"])
    data = load_dataset("cifar10", opts["data_dir"], download=opts["download"])
    try:
        x, y = next(iterate_batches(data.train_images, data.train_labels, opts["batch_size"], seed=seed,
                                    epoch=0, augment=True, normalization="cifar10"))
    finally:
        data.close()
    state = init_state(_config(seed, [0, 0, 0], opts["routing"]), net)
    return net, _no_bias(state.W), _no_bias(state.omega), x, y


def _no_bias(params: dict) -> dict:
    """Every bias zeroed (the official test's network has none)."""
    return {b: {k: (np.zeros_like(v) if k == "bias" else v) for k, v in d.items()} for b, d in params.items()}


def train_layer(seed: int, layer: int, opts: dict) -> dict:
    """L-DRL training of one layer's feedback (``layer`` 0, 1, 2 = conv_1, fc1, fc2); host arrays."""
    net, W, omega, x, _ = setup(seed, opts)
    iters = [0, 0, 0]
    iters[layer] = opts["iterations"][layer]
    cfg = _config(seed, iters, opts["routing"])
    state = dataclasses.replace(init_state(cfg, net), W=W, omega=omega)
    with blas_threads(1):
        new, _, _ = feedback_phase(cfg, net, state, net.forward(W, x), 0, 0, "numpy", workers=1)
    return {k: np.asarray(v) for k, v in new[LAYERS[layer + 1]].items()}


def weight_angles(net, W, omega, x, y) -> list:
    """Angle (degrees) between the DTP update and the BP gradient of each layer's weight."""
    r = metrics.dtp_vs_bp(net, W, omega, x, y, BETA, per_param=True)
    return [r[name]["params"]["weight"]["angle"] for name in LAYERS]


def seed_angles(seed: int, trained: dict, opts: dict) -> dict:
    """{setting: [angle per layer]} of one seed, given its L-DRL-trained feedback layers."""
    net, W, omega, x, y = setup(seed, opts)
    sym = {}
    for b in net.blocks:
        w = W[b.name]["weight"]
        sym[b.name] = {k: np.zeros_like(v) for k, v in omega[b.name].items()}
        sym[b.name]["weight"] = np.array(w.T if w.ndim == 2 else w, copy=True)
    return {"random": weight_angles(net, W, omega, x, y), "symmetric": weight_angles(net, W, sym, x, y),
            "L-DRL": weight_angles(net, W, {**omega, **trained}, x, y)}


def _options(ctx) -> dict:
    proto = QUICK if ctx.quick else FULL
    iters = ctx.param("iterations", ",".join(map(str, proto["iterations"])), str)
    iterations = [int(v) for v in iters.split(",")]
    if len(iterations) != 3 or min(iterations) < 0:
        raise ValueError(f"iterations must be three counts >= 0 (conv_1, fc1, fc2), got {iters!r}")
    opts = {"pool_padding": ctx.param("pool_padding", 0), "batch_size": ctx.param("batch_size", 256),
            "routing": ctx.param("routing", "noisy"), "iterations": iterations,
            "data_dir": ctx.data_dir and str(Path(ctx.data_dir).resolve()), "download": ctx.download}
    if opts["pool_padding"] not in (0, 1) or opts["routing"] not in ("noisy", "clean"):
        raise ValueError("pool_padding must be 0 or 1 and routing 'noisy' or 'clean'")
    return opts, (ctx.seeds or proto["seeds"])


def run_tasks(ctx, seeds: list, opts: dict) -> dict:
    """{seed: {layer name: trained feedback}}: one Ray task per (seed, layer)."""
    from refdtp.sweep.engine import import_ray, init_ray
    load_dataset("cifar10", opts["data_dir"], download=opts["download"]).close()  # fail early, download once
    ray = import_ray()
    started = init_ray(ctx.address)
    try:
        task = ray.remote(num_cpus=1, max_retries=2)(train_layer)  # deterministic: a retry is exact
        refs = {(s, k): task.remote(s, k, opts) for k in (0, 1, 2) for s in seeds}
        out = {s: {} for s in seeds}
        for (s, k), ref in refs.items():
            out[s][LAYERS[k + 1]] = ray.get(ref)
        return out
    finally:
        if started:
            ray.shutdown()


def _plot(result, directory):
    from .plots import angle_bars
    return [angle_bars(directory / "lenet_angles.png", LAYERS, result.data["angles"], PUBLISHED,
                       "LeNet, CIFAR-10: angle between DTP update and BP gradient")]


@experiment(
    "lenet-angles",
    "per-layer angle between the DTP update and the BP gradient for random, symmetric and L-DRL feedback",
    "Ernoult et al. 2022, Sec. 4 / official code's 'figure 4.3' (target_prop/theorem_test.py, "
    "data/angle_data.csv @7d73e5b); docs/algorithm.md §7.2",
    "LeNet (pool 3/2/0, no biases), one CIFAR-10 train batch of 256, seeds 123-127, beta 0.4655; L-DRL "
    "5000 iterations per layer, sigma [0.2, 0.2, 0.1], lr [1e-4, 2.5e-3, 1e-2], momentum 0.9",
    "seeds 123-125, L-DRL iterations [200, 1000, 1000] (conv_1, fc1, fc2); everything else as published",
    params={"pool_padding": "max-pool padding, 0 (published csv, default) or 1 (later code)",
            "iterations": "L-DRL iterations for conv_1,fc1,fc2, e.g. 5000,5000,5000",
            "batch_size": "batch size (default 256)",
            "routing": "L-DRL un-pooling of G(F(x+eps)): noisy (paper) or clean"},
    plot=_plot)
def lenet_angles(ctx) -> Result:
    opts, seeds = _options(ctx)
    trained = run_tasks(ctx, seeds, opts)
    per_seed = {s: seed_angles(s, trained[s], opts) for s in seeds}
    angles = {k: [[per_seed[s][k][i] for s in seeds] for i in range(len(LAYERS))] for k in PUBLISHED}
    rows = [Row(f"{setting}, {name} weight", angles[setting][i], PUBLISHED[setting][i], floor=0.5,
                unit=" deg", digits=2)
            for setting in PUBLISHED for i, name in enumerate(LAYERS)]
    notes = [(f"seeds {seeds}; L-DRL iterations {opts['iterations']}; pool padding {opts['pool_padding']}; "
              f"routing {opts['routing']}; batch {opts['batch_size']}"),
             ("published numbers: the L-DRL bars of data/angle_data.csv (pool padding 0); output-layer "
              "values are ~0 for any feedback (exact first target)")]
    return Result(rows=rows, notes=notes, data={"seeds": seeds, "angles": angles, "options": {
        k: v for k, v in opts.items() if k != "download"}})
