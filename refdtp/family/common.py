"""Shared pieces of the family's algorithms: the authors' initialisations, the per-sample output
error, per-sample Jacobians of simple blocks, and the bookkeeping of one training step.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import array_module, to_backend
from ..losses import accuracy, cross_entropy, cross_entropy_grad
from ..ops import Act, Linear, Reshape
from .standardize import BatchStandardize, batch_stats

#: Noise stream key of the family's feedback training (algorithms.NOISE_KEY is 7).
FAMILY_NOISE_KEY = 8


# -- initialisations (host arrays) ---------------------------------------------

def orthogonal(rng: np.random.Generator, shape: tuple, dtype, gain: float = 1.0) -> np.ndarray:
    """torch.nn.init.orthogonal_: QR of a standard-normal matrix, signs fixed by diag(R).

    Rows (or columns, whichever are fewer) are orthonormal times ``gain``. Used by FW-DTP's
    forward weights (authors' code `my_functions.parameterized_function`, init "orthogonal").
    """
    rows, cols = shape
    a = rng.standard_normal((rows, cols) if rows >= cols else (cols, rows))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    q = q if rows >= cols else q.T
    return (gain * q).astype(dtype)


def xavier_normal(rng: np.random.Generator, shape: tuple, dtype) -> np.ndarray:
    """torch.nn.init.xavier_normal_ on an (out, in) matrix: N(0, 2 / (fan_in + fan_out)).

    Meulemans et al.'s final configs use ``initialization='xavier_normal'`` (lib/dtp_layers.py).
    """
    std = math.sqrt(2.0 / (shape[0] + shape[1]))
    return (std * rng.standard_normal(shape)).astype(dtype)


def to_tree(tree: dict, backend: str) -> dict:
    """{block: {name: host array}} -> the same on ``backend``."""
    return {k: {n: to_backend(a, backend) for n, a in v.items()} for k, v in tree.items()}


# -- the output error --------------------------------------------------------------

def output_error(logits, labels):
    """e = dl_b/ds_N = softmax(s_N) - onehot(y) per sample (B, K): the gradient of the *sum* CE."""
    return cross_entropy_grad(logits, labels, reduction="sum")


def batch_stats_of(trace, labels) -> dict:
    """{"loss": mean CE, "accuracy"} of a forward trace."""
    logits = trace.logits.reshape(trace.s[0].shape[0], -1)
    return {"loss": float(cross_entropy(logits, labels, "mean")), "accuracy": accuracy(logits, labels)}


def start_step(net, state, x, labels) -> tuple:
    """The clean forward pass of a step, its statistics, and the step's 1-based position in messages.

    Returns:
        (trace, stats, where).

    Raises:
        DivergenceError: the cross-entropy of the output is NaN or Inf (the state is untouched).
    """
    from ..algorithms import DivergenceError
    trace = net.forward(state.W, x)
    stats = batch_stats_of(trace, labels)
    where = f"epoch {state.epoch + 1} step {state.step + 1}"
    if not math.isfinite(stats["loss"]):
        raise DivergenceError(f"{where}: cross-entropy of block {net.blocks[-1].name}'s output is "
                              f"{stats['loss']}")
    return trace, stats, where


# -- per-sample Jacobians of simple chains ------------------------------------------

def chain_sample_jacobian(chain, params: dict, caches: tuple):
    """(B, d_out, d_in) per-sample Jacobians of a chain of Reshape / Linear / Act / BatchStandardize.

    Composed op by op: Linear -> W, Act -> diag(f'(a)), BatchStandardize -> the same-sample block
    diag((1 - 1/B)/d - c_b^2/(d^2 (B-1) s)) of its batch Jacobian (the cross-sample terms, O(1/B),
    are left out: a per-sample Jacobian does not exist for a batch-coupled map).
    """
    J = None
    for i, op in enumerate(chain.ops):
        if isinstance(op, Reshape):
            continue
        if isinstance(op, Linear):
            M = params["weight"][None]
        elif isinstance(op, Act):
            M = op.derivative(caches[i])[:, :, None] * _eye_like(op.out_shape[0], caches[i][0])
        elif isinstance(op, BatchStandardize):
            M = standardize_self_derivative(caches[i])[:, :, None] * _eye_like(op.out_shape[0], caches[i][0])
        else:
            raise TypeError(f"chain_sample_jacobian: unsupported op {op!r}")
        J = M if J is None else M @ J
    return J


def standardize_self_derivative(cache):
    """d y_bj / d x_bj of batch standardisation: (1 - 1/B)/d_j - c_bj^2 / (d_j^2 (B-1) s_j), (B, n)."""
    c, s, d = cache
    xp = array_module(c)
    B = c.shape[0]
    safe = xp.where(s > 0, s, xp.ones_like(s))
    return (1 - 1 / B) / d - (s > 0).astype(c.dtype) * c * c / (d * d * max(B - 1, 1) * safe)


def _eye_like(n: int, ref):
    return array_module(ref).eye(n, dtype=ref.dtype)[None]


__all__ = ["FAMILY_NOISE_KEY", "batch_stats", "batch_stats_of", "chain_sample_jacobian", "orthogonal",
           "output_error", "standardize_self_derivative", "to_tree", "xavier_normal"]
