"""FW-DTP: Fixed-Weight Difference Target Propagation (Shibuya, Inoue, Kawakami, Sato, AAAI 2023,
arXiv 2212.10352; authors' code TatsukichiShibuya/Fixed-Weight-Difference-Target-Propagation).

Blocks n = 1..N as in :mod:`refdtp.targets` (s_0 = x, s_N = logits):

- forward  F_n(h) = tanh(W_n h) [-> S], no bias; the output block is linear [-> S]
  (code: `tp_layer` with ff1 identity, ff2 "parameterized" tanh / tanh-BN, last "linear" / "linear-BN");
- feedback G_n(y) = tanh(B_n y) [-> S] with B_n fixed random, never trained (bf1 "random");
- S = parameter-free batch standardisation (:mod:`refdtp.family.standardize`), only in the BN variant;
- output target t_N = s_N - gamma dl/ds_N, l the *sum* cross-entropy (code: `compute_target`,
  CrossEntropyLoss(reduction="sum")); gamma is ``cfg.beta`` (the code's ``stepsize``);
- difference targets (DTP's rule; code `difference_function`, bf2 "difference"):
  t_{n-1} = [S]( G_n(t_n) + s_{n-1} - G_n(F_n(s_{n-1})) ),  with F_n(s_{n-1}) = s_n;
- every block minimises (1/B) sum_b ||F_n(s_{n-1}) - t_n||^2 with s_{n-1} detached (code:
  `update_weights`, MSELoss(reduction="sum") and the step lr/B, i.e. no 1/2), all blocks at once.

The paper's analysis (conditions on the feedback function; section number not confirmed here;
the code logs the ratio of eigenvalues of J_f J_g with positive real part, "the strict condition",
and its trace, "the weak condition"): with Delta = t_n - s_n, F_n(t_{n-1}) - s_n ~ A_n Delta with
A_n = J_{F_n} J_{G_n} (d_n x d_n). Moving the lower layer to its target moves s_n towards t_n for
every Delta when A_n is positive definite, and on average over isotropic Delta when tr(A_n) > 0.
:func:`jacobian_products` and :func:`condition_stats` measure both.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import host_rng, to_host
from ..blocks import Block
from ..networks import INIT_FEEDBACK, INIT_FORWARD, Network, Trace
from ..ops import Act, Flatten, Linear
from ..targets import first_target, propagate_targets
from .common import chain_sample_jacobian, orthogonal, start_step, to_tree
from .standardize import BatchStandardize, standardize

# -- the network ----------------------------------------------------------------------

def fwdtp_block(name: str, in_shape: tuple, n_out: int, activation: str | None, bn: bool) -> Block:
    """F = [flatten ->] Linear(no bias) [-> activation] [-> S]; G = Linear(no bias) -> tanh [-> S].

    G maps the block's output back to its input space; G_1 exists (it maps to the input) but is
    never used, as in the authors' code.
    """
    n_in = math.prod(in_shape)
    forward: list = [Flatten(in_shape)] if len(in_shape) > 1 else []
    forward.append(Linear(n_in, n_out, bias=False))
    if activation is not None:
        forward.append(Act((n_out,), activation))
    if bn:
        forward.append(BatchStandardize((n_out,)))
    feedback: list = [Linear(n_out, n_in, bias=False), Act((n_in,), "tanh")]
    if bn:
        feedback.append(BatchStandardize((n_in,)))
    if len(in_shape) > 1:
        feedback.append(Flatten(in_shape).inverted())
    return Block(name, forward, feedback)


def fwdtp_mlp(widths, batch_standardize: bool = False, in_shape: tuple | None = None,
              activation: str = "tanh") -> Network:
    """The FW-DTP MLP widths[0] -> ... -> widths[-1] (paper's MNIST net: 784-256x5-10, depth 6).

    Args:
        widths: layer sizes, input first.
        batch_standardize: the "-BN" variant: S after every block, the output one included
            (the README's MNIST command, ``--forward_last_activation=linear-BN``).
        in_shape: per-sample input shape when the inputs are images (flattened by block 1).
        activation: hidden activation (tanh in the paper).
    """
    blocks = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:], strict=False)):
        shape = tuple(in_shape) if (i == 0 and in_shape is not None) else (n_in,)
        if math.prod(shape) != n_in:
            raise ValueError(f"fwdtp_mlp: in_shape {shape} does not have widths[0] = {n_in} entries")
        act = activation if i < len(widths) - 2 else None
        blocks.append(fwdtp_block(f"fc_{i}", shape, n_out, act, batch_standardize))
    return Network(blocks, "fwdtp_mlp_bn" if batch_standardize else "fwdtp_mlp")


def is_standardized(net: Network) -> bool:
    """True for the BN variant (a BatchStandardize in the feedback chains)."""
    return any(isinstance(op, BatchStandardize) for b in net.blocks for op in b.G.ops)


def init_params(net: Network, seed: int, dtype, backend: str, scale: float) -> tuple[dict, dict]:
    """(W, omega): W_n orthogonal (code default ``ff2_init="orthogonal"``), B_n ~ U(-scale, scale)
    (code default ``bf1_init="uniform"``, `random_function`: scale 1e-3). Drawn on the host from
    host_rng(seed, INIT_FORWARD / INIT_FEEDBACK, block index)."""
    W, omega = {}, {}
    for i, b in enumerate(net.blocks):
        w_shape = b.F.param_op.param_shapes()["weight"]
        W[b.name] = {"weight": orthogonal(host_rng(seed, INIT_FORWARD, i), w_shape, dtype)}
        g_shape = b.G.param_op.param_shapes()["weight"]
        B = host_rng(seed, INIT_FEEDBACK, i).uniform(-scale, scale, g_shape)
        omega[b.name] = {"weight": B.astype(dtype)}
    return to_tree(W, backend), to_tree(omega, backend)


# -- targets and the forward update ---------------------------------------------------------

def propagate(net: Network, omega: dict, trace: Trace, t_N, bn: bool) -> list:
    """[None, t_1, ..., t_N] with t_{n-1} = [S](s_{n-1} + G_n(t_n) - G_n(s_n)) (module docstring).

    G_n is not affine in its input (tanh(B y), and S uses each batch's own statistics), so
    :meth:`refdtp.blocks.Block.feedback_difference` evaluates G_n(t_n) and G_n(s_n) separately.
    """
    return propagate_targets(net, omega, trace, t_N, "difference", post=standardize if bn else None)


def local_loss(trace: Trace, targets: list):
    """sum_n (1/B) sum_b ||s_n - t_n||^2 over blocks 1..N (the authors' MSE, no 1/2); a 0-d array."""
    B = trace.s[0].shape[0]
    return sum(((trace.s[n] - targets[n]) ** 2).sum() for n in range(1, len(targets))) / B


def local_grads(net: Network, W: dict, trace: Trace, targets: list) -> dict:
    """d/dW_n of (1/B) sum_b ||F_n(s_{n-1}; W_n) - t_n||^2 with s_{n-1} and t_n fixed:
    (dF_n/dW_n)^T 2 (s_n - t_n) / B (through S too in the BN variant: the batch is coupled)."""
    B = trace.s[0].shape[0]
    return {b.name: b.forward_param_grads(W[b.name], trace.caches[n - 1], 2 * (trace.s[n] - targets[n]) / B)
            for n, b in enumerate(net.blocks, start=1)}


def forward_grads(net: Network, W: dict, omega: dict, trace: Trace, labels, gamma: float,
                  targets_fn=None) -> tuple[dict, list]:
    """FW-DTP's forward-weight gradients of one batch. Returns (grads, targets).

    ``targets_fn(net, omega, trace, t_N, bn)`` defaults to :func:`propagate` (a test may plant another).
    """
    logits = trace.logits.reshape(trace.s[0].shape[0], -1)
    t_N = first_target(logits, labels, gamma)
    targets = (targets_fn or propagate)(net, omega, trace, t_N, is_standardized(net))
    return local_grads(net, W, trace, targets), targets


# -- the strict and weak conditions ---------------------------------------------------------

def jacobian_products(net: Network, W: dict, omega: dict, trace: Trace) -> dict:
    """{block n >= 2: A_n = J_{F_n}(s_{n-1}) J_{G_n}(s_n)} per sample, (B, d_n, d_n) host float64.

    J_{G_n} is taken at s_n = F_n(s_{n-1}), where the difference correction linearises G_n.
    """
    out = {}
    for n in range(2, len(net) + 1):
        block = net.blocks[n - 1]
        J_F = chain_sample_jacobian(block.F, W[block.name], trace.caches[n - 1])
        _, gcache = block.feedback(omega[block.name], trace.s[n], block.route(trace.caches[n - 1]))
        J_G = chain_sample_jacobian(block.G, omega[block.name], gcache)
        out[block.name] = np.asarray(to_host(J_F @ J_G), dtype=np.float64)
    return out


def condition_stats(A) -> dict:
    """Strict/weak condition numbers of per-sample matrices A (B, d, d), averaged over the batch.

    Returns:
        {"positive_ratio": mean fraction of eigenvalues with positive real part (the code's
         "eigenvalue ratio"), "trace": mean tr(A) (the code's "eigenvalue trace"),
         "trace_per_dim": mean tr(A)/d, "min_sym_eig": min over samples of the smallest eigenvalue
         of (A + A^T)/2 (> 0 iff every A_b is positive definite as a quadratic form)}.
    """
    A = np.asarray(A, dtype=np.float64)
    eig = np.linalg.eigvals(A)
    sym = np.linalg.eigvalsh(0.5 * (A + np.swapaxes(A, -1, -2)))
    tr = np.trace(A, axis1=-2, axis2=-1)
    return {"positive_ratio": float(np.mean(eig.real > 0)), "trace": float(np.mean(tr)),
            "trace_per_dim": float(np.mean(tr) / A.shape[-1]), "min_sym_eig": float(sym.min())}


def condition_row(net: Network, W: dict, omega: dict, x) -> dict:
    """Diagnostic columns {"fwdtp_eig_ratio/<block>", "fwdtp_trace/<block>"} on the batch x."""
    row = {}
    for name, A in jacobian_products(net, W, omega, net.forward(W, x)).items():
        st = condition_stats(A)
        row[f"fwdtp_eig_ratio/{name}"] = st["positive_ratio"]
        row[f"fwdtp_trace/{name}"] = st["trace"]
    return row


# -- one training step ------------------------------------------------------------------------

def init_state(cfg, net: Network, backend: str):
    """FW-DTP's TrainState: orthogonal W, fixed random omega, no feedback optimisers."""
    from ..algorithms import TrainState, forward_optimizer
    from ..optim import flatten
    W, omega = init_params(net, cfg.seed, cfg.dtype, backend, cfg.feedback_init_scale)
    return TrainState(W, omega, forward_optimizer(cfg).init_state(flatten(W)), {})


def train_step(cfg, net: Network, state, x, labels, lr: float):
    """One batch: targets through the fixed feedback, one optimiser step on every W_n."""
    from ..algorithms import TrainState, _check_finite, forward_optimizer
    from ..optim import flatten, unflatten
    trace, stats, where = start_step(net, state, x, labels)
    grads, targets = forward_grads(net, state.W, state.omega, trace, labels, cfg.beta)
    stats["forward_loss"] = float(local_loss(trace, targets))
    flat_W, opt_state = forward_optimizer(cfg).step(flatten(state.W), flatten(grads), state.forward_opt, lr)
    _check_finite(flat_W, f"{where}: forward weights")
    return TrainState(unflatten(flat_W), state.omega, opt_state, state.feedback_opt, state.epoch,
                      state.step + 1, state.global_step + 1), stats
