"""One training step of each algorithm: L-DRL (default), BP, vanilla DTP, TP, DRL.

The per-batch schedule follows the official code (docs/algorithm.md §2):

1. forward pass s_0..s_N with the current W (frozen for this batch);
2. feedback phase: for each trained block n = 2..N, K_n SGD steps on omega_n,
   each with fresh noise of scale sigma_n, one optimiser per block whose
   momentum persists across batches (BP skips this);
3. forward phase: targets from the updated feedback, one optimiser step on
   every W_n with the block-local loss (BP: the mean cross-entropy gradient).

Noise for block n at (epoch, step) comes from the stream
``Noise(seed, NOISE_KEY, epoch, step, n)``, so a resumed run draws exactly
the noise an uninterrupted one draws.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .backend import Noise, array_module, backend_name, blas_threads
from .backprop import backprop
from .config import Config
from .feedback import drl_grads, dtp_grads
from .hostsync import HostSync, Pending, host_value, require
from .ldrl import make_plan
from .losses import accuracy, cross_entropy, cross_entropy_grad
from .networks import Network, Trace
from .optim import SGD, flatten, make_optimizer, unflatten
from .targets import dtp_forward_grads, forward_loss
from .threads import current_blas_threads

NOISE_KEY = 7
#: Algorithms whose step lives in refdtp.family: FW-DTP (fixed feedback) and DDTP-linear (direct feedback).
FAMILY_ALGORITHMS = ("fwdtp", "ddtp")


class DivergenceError(FloatingPointError):
    """A NaN or Inf appeared; the message names the block and the quantity."""


@dataclass
class TrainState:
    """Everything that evolves during training (what a checkpoint holds).

    Attributes:
        W, omega: forward and feedback parameters, {block: {name: array}}.
        forward_opt: forward optimiser state (flat keys "block.param").
        feedback_opt: {block: feedback optimiser state}.
        epoch, step: position of the *next* batch (step counts within the epoch).
        global_step: batches done since the start of the run.
    """
    W: dict
    omega: dict
    forward_opt: dict
    feedback_opt: dict = field(default_factory=dict)
    epoch: int = 0
    step: int = 0
    global_step: int = 0


def forward_optimizer(cfg: Config):
    """The forward-weight optimiser of a config."""
    if cfg.optimizer == "sgd":
        return SGD(cfg.lr, cfg.momentum, cfg.weight_decay)
    if cfg.optimizer == "adam":
        return make_optimizer("adam", lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                              weight_decay=cfg.weight_decay)
    return make_optimizer(cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)


def feedback_optimizers(cfg: Config, net: Network) -> dict:
    """One SGD-momentum optimiser per trained feedback block (blocks 2..N)."""
    if cfg.algorithm == "bp":
        return {}
    return {b.name: SGD(lr, cfg.feedback_momentum, cfg.feedback_weight_decay)
            for b, lr in zip(net.blocks[1:], cfg.feedback_lr, strict=True)}


def init_state(cfg: Config, net: Network, backend: str = "numpy") -> TrainState:
    """Initial parameters (PyTorch defaults from cfg.seed) and fresh optimiser states.

    FW-DTP and DDTP (:data:`FAMILY_ALGORITHMS`) use their authors' initialisations
    (:mod:`refdtp.family`).
    """
    if cfg.algorithm in FAMILY_ALGORITHMS:
        from . import family
        return family.init_state(cfg, net, backend)
    cfg.validate(net)
    W, omega = net.init(cfg.seed, cfg.dtype, backend)
    fb = {name: opt.init_state(omega[name]) for name, opt in feedback_optimizers(cfg, net).items()}
    return TrainState(W, omega, forward_optimizer(cfg).init_state(flatten(W)), fb)


def _check_finite(tree: dict, what: str) -> None:
    """DivergenceError naming the first NaN/Inf array of ``tree``.

    One device flag for the whole tree, checked through :func:`refdtp.hostsync.require`
    (inside a training step: with the step's single host fetch); the offending
    key is looked up on the host only when the check fails.
    """
    arrays = list(tree.values())
    xp = array_module(*arrays)
    ok = xp.stack([xp.isfinite(a).all() for a in arrays]).all()

    def fail():
        bad = next(k for k, a in tree.items() if not bool(array_module(a).isfinite(a).all()))
        raise DivergenceError(f"{what}: {bad} became NaN/Inf")
    require(ok, fail)


# -- feedback phase -------------------------------------------------------

def _block_feedback_grads(cfg, net, W, omega, trace, n, noise, sigma, plan, with_loss):
    """The gradient of block n's feedback loss for one fresh noise draw (``plan``: L-DRL's per-batch plan)."""
    block = net.blocks[n - 1]
    x, y = trace.s[n - 1], trace.s[n]
    eps = noise.normal(x.shape, sigma, x.dtype)
    if cfg.algorithm == "ldrl":
        return plan.grads(omega[block.name], eps, noise.normal(y.shape, sigma, y.dtype), with_loss)
    if cfg.algorithm in ("dtp", "tp"):
        return dtp_grads(block, W[block.name], omega[block.name], x, eps, with_loss)
    return drl_grads(net, W, omega, trace, n, eps, sigma, with_loss)


def _train_block(cfg: Config, net: Network, state: TrainState, trace: Trace, omega: dict,
                 n: int, epoch: int, step: int, backend: str) -> tuple[dict, dict, float | None]:
    """K_n SGD steps on omega_n for block n. Returns (omega_n, its optimiser state, last loss)."""
    block = net.blocks[n - 1]
    K, sigma = cfg.feedback_iterations[n - 2], cfg.feedback_sigma[n - 2]
    noise = Noise(cfg.seed, NOISE_KEY, epoch, step, n, backend=backend,
                  bit_generator=cfg.noise_generator)
    plan = None
    if cfg.algorithm == "ldrl":  # the per-batch constants of block n's L-DRL gradient
        plan = make_plan(block, state.W[block.name], trace.s[n - 1], trace.s[n],
                         block.route(trace.caches[n - 1]), cfg.ldrl_routing)
    optimizer = feedback_optimizers(cfg, net)[block.name]
    om, st, loss = omega[block.name], state.feedback_opt[block.name], None
    for it in range(K):
        grads, loss = _block_feedback_grads(cfg, net, W=state.W, omega={**omega, block.name: om},
                                            trace=trace, n=n, noise=noise, sigma=sigma,
                                            plan=plan, with_loss=(it == K - 1))
        om, st = optimizer.step(om, grads, st)
    _check_finite(om, f"epoch {epoch + 1} step {step + 1}: feedback weights of block {block.name}")
    return om, st, (None if loss is None else host_value(loss))


def feedback_workers(backend: str, n_blocks: int, workers: int | None = None) -> int:
    """How many blocks train their feedback at once (None: automatic).

    On the CPU, blocks run in threads, one per BLAS thread the run may use now
    (:func:`refdtp.threads.current_blas_threads`: the run's choice from its free
    cores and load, or ``--threads``); numpy releases the GIL in BLAS and in its
    array loops, and the elementwise work is single-threaded, so sequential
    blocks would leave cores idle. On the GPU, one at a time.
    """
    if workers is not None:
        if workers < 1:
            raise ValueError(f"feedback workers must be >= 1, got {workers}")
        return min(workers, max(1, n_blocks))
    return 1 if backend != "numpy" else max(1, min(current_blas_threads(), n_blocks))


def feedback_phase(cfg: Config, net: Network, state: TrainState, trace: Trace, epoch: int,
                   step: int, backend: str, workers: int | None = None) -> tuple[dict, dict, dict]:
    """K_n feedback updates of every block n = 2..N.

    Blocks are independent given the frozen activations (each has its own
    weights, optimiser and noise stream), so they may run concurrently
    (``workers``, see :func:`feedback_workers`; each worker gets an equal share
    of the run's BLAS threads). The results do not depend on the
    order or the number of workers, only on the BLAS threads per worker
    (BLAS may round differently with another thread count). DRL is the
    exception: its loss runs through the upper feedback maps, so its blocks
    train one at a time, top-down.

    Returns:
        (omega, feedback optimiser states, {block: last feedback loss}).
    """
    cfg.validate(net)  # per-block lists must match the network, never silently cut
    omega, fb_states, losses = dict(state.omega), dict(state.feedback_opt), {}
    blocks = list(range(2, len(net) + 1))
    workers = 1 if cfg.algorithm == "drl" else feedback_workers(backend, len(blocks), workers)

    def run(n):
        return n, _train_block(cfg, net, state, trace, omega, n, epoch, step, backend)

    if workers == 1:
        results = []
        for n in (reversed(blocks) if cfg.algorithm == "drl" else blocks):
            results.append(run(n))
            omega[net.blocks[n - 1].name] = results[-1][1][0]  # DRL reads the updated upper maps
    else:
        # Longest first, so the last block to start is a short one.
        cost = {n: cfg.feedback_iterations[n - 2] * net.blocks[n - 1].F.param_op.flops_per_sample()
                for n in blocks}
        per_worker = max(1, current_blas_threads() // workers)
        with blas_threads(per_worker), ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(run, sorted(blocks, key=cost.get, reverse=True)))
    for n, (om, st, loss) in results:
        name = net.blocks[n - 1].name
        omega[name], fb_states[name] = om, st
        if loss is not None:
            losses[name] = loss
    ordered = {b.name: losses[b.name] for b in net.blocks[1:] if b.name in losses}  # block order
    return omega, fb_states, ordered


# -- one step ---------------------------------------------------------------

def forward_grads(cfg: Config, net: Network, W: dict, omega: dict, trace: Trace, labels):
    """The forward-weight update direction of the algorithm, and the forward loss.

    BP: d(mean CE)/dW. DTP family: the block-local loss gradient with
    beta-nudged, feedback-propagated targets (no 1/beta: docs/algorithm.md §3.3).
    """
    logits = trace.logits.reshape(trace.s[0].shape[0], -1)
    if cfg.algorithm == "bp":
        grads, _ = backprop(net, W, trace, cross_entropy_grad(logits, labels, "mean"))
        return grads, None
    rule = "tp" if cfg.algorithm == "tp" else "difference"
    grads, targets = dtp_forward_grads(net, W, omega, trace, labels, cfg.beta, rule)
    return grads, forward_loss(trace, targets)


def train_step(cfg: Config, net: Network, state: TrainState, x, labels, lr: float,
               workers: int | None = None) -> tuple[TrainState, dict]:
    """One batch: feedback phase, then one forward update.

    Args:
        cfg: the run's config; net: its network.
        state: current state (not modified).
        x: (B, *in_shape) float batch on the run's backend; labels: (B,) int.
        lr: forward learning rate of this epoch (from the schedule).
        workers: blocks whose feedback trains concurrently (None: automatic,
            see :func:`feedback_workers` and :func:`feedback_phase`).

    Returns:
        (new state, stats {"loss", "accuracy", "forward_loss", "feedback_loss/<block>"}).

    Raises:
        DivergenceError: a NaN/Inf in a loss or in updated weights; the old
            state stays valid.
    """
    # Overflow on the way to a NaN is reported as a DivergenceError below, not as a warning.
    with np.errstate(over="ignore", invalid="ignore"):
        if cfg.algorithm in FAMILY_ALGORITHMS:  # FW-DTP, DDTP: refdtp.family (own feedback schedule)
            from . import family
            return family.train_step(cfg, net, state, x, labels, lr)
        return _train_step(cfg, net, state, x, labels, lr, workers)


#: Batch the step's host syncs on NumPy too (tests; on NumPy a "sync" costs nothing).
DEFER_SYNCS_ON_NUMPY = False


def _train_step(cfg, net, state, x, labels, lr, workers):
    """On a device, the step with every host sync batched into one fetch (refdtp.hostsync).

    Checks then fail in the order they were recorded (input, cross-entropy, labels, feedback
    blocks, forward weights), after the step's work, and the old state stays valid. On NumPy
    (threads per block, syncs free) every check runs where it is made, as before.
    """
    if backend_name(x) == "numpy" and not DEFER_SYNCS_ON_NUMPY:
        return _step(cfg, net, state, x, labels, lr, workers)
    with HostSync() as hs:
        new, stats = _step(cfg, net, state, x, labels, lr, workers)
        hs.resolve()
    return new, {k: (v.get() if isinstance(v, Pending) else v) for k, v in stats.items()}


def _step(cfg, net, state, x, labels, lr, workers):
    backend = backend_name(x)
    trace = net.forward(state.W, x)
    logits = trace.logits.reshape(x.shape[0], -1)
    ce = cross_entropy(logits, labels, "mean")
    where = f"epoch {state.epoch + 1} step {state.step + 1}"  # 1-based, as every message

    def diverged():
        name = net.blocks[-1].name
        raise DivergenceError(f"{where}: cross-entropy of block {name}'s output is {float(ce)}")
    require(array_module(ce).isfinite(ce), diverged)
    stats = {"loss": host_value(ce), "accuracy": accuracy(logits, labels)}
    omega, fb_states = state.omega, state.feedback_opt
    if cfg.algorithm != "bp":
        omega, fb_states, fb_losses = feedback_phase(cfg, net, state, trace, state.epoch, state.step,
                                                     backend, workers)
        stats.update({f"feedback_loss/{k}": v for k, v in fb_losses.items()})
    grads, f_loss = forward_grads(cfg, net, state.W, omega, trace, labels)
    if f_loss is not None:
        stats["forward_loss"] = host_value(f_loss)
    flat_W, opt_state = forward_optimizer(cfg).step(flatten(state.W), flatten(grads), state.forward_opt, lr)
    _check_finite(flat_W, f"{where}: forward weights")
    new = TrainState(unflatten(flat_W), omega, opt_state, fb_states, state.epoch, state.step + 1,
                     state.global_step + 1)
    return new, stats
