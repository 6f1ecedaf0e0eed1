"""Output losses and their hand-derived gradients.

Cross-entropy on logits with a numerically stable log-softmax, and the
half squared error. ``reduction`` is "mean" (over the batch) or "sum"; the
DTP first target uses the per-sample (sum-reduced) gradient, while BP and
the forward loss use batch means (docs/conventions.md §1).
"""
from __future__ import annotations

from .backend import array_module
from .hostsync import host_value, require

REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")


def check_labels(labels, logits) -> None:
    """Raise ValueError unless labels are B integer classes in [0, num_classes)."""
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels: expected shape ({logits.shape[0]},) to match the logits "
                         f"{tuple(logits.shape)}, got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels: expected an integer array, got dtype {labels.dtype}")
    k = logits.shape[1]
    if not labels.size:
        return

    def fail():
        raise ValueError(f"labels: values must lie in [0, {k}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    require((labels.min() >= 0) & (labels.max() < k), fail)  # no host sync inside a training step


def log_softmax(z):
    """log softmax over axis 1: z - logsumexp(z), shifted by the max for stability."""
    xp = array_module(z)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def softmax(z):
    """softmax over axis 1, (B, K)."""
    return array_module(z).exp(log_softmax(z))


def cross_entropy(logits, labels, reduction: str = "mean"):
    """l = -sum_b log softmax(z_b)[y_b], divided by B for "mean". Returns a 0-d array."""
    _check_reduction(reduction)
    check_labels(labels, logits)
    xp = array_module(logits)
    picked = xp.take_along_axis(log_softmax(logits), labels.reshape(-1, 1), axis=1)
    total = -picked.sum()
    return total / logits.shape[0] if reduction == "mean" else total


def cross_entropy_grad(logits, labels, reduction: str = "mean"):
    """dl/dz = softmax(z) - onehot(y) per sample, divided by B for "mean". (B, K)."""
    _check_reduction(reduction)
    check_labels(labels, logits)
    xp = array_module(logits)
    g = softmax(logits)
    g[xp.arange(logits.shape[0]), labels] -= 1
    return g / logits.shape[0] if reduction == "mean" else g


def half_mse(y, t, reduction: str = "mean"):
    """l = sum_b 1/2 ||y_b - t_b||^2 (summed over features), divided by B for "mean"."""
    _check_reduction(reduction)
    if y.shape != t.shape:
        raise ValueError(f"half_mse: shapes {tuple(y.shape)} and {tuple(t.shape)} differ")
    total = 0.5 * ((y - t) ** 2).sum()
    return total / y.shape[0] if reduction == "mean" else total


def half_mse_grad(y, t, reduction: str = "mean"):
    """dl/dy = (y - t), divided by B for "mean"."""
    _check_reduction(reduction)
    return (y - t) / y.shape[0] if reduction == "mean" else (y - t)


def accuracy(logits, labels, k: int = 1) -> float:
    """Fraction of samples whose label is among the k largest logits (a float; inside a
    :class:`refdtp.hostsync.HostSync`, a Pending filled by its single fetch)."""
    xp = array_module(logits)
    if k == 1:
        return host_value((logits.argmax(axis=1) == labels).mean())
    top = xp.argpartition(-logits, k - 1, axis=1)[:, :k]
    return host_value((top == labels.reshape(-1, 1)).any(axis=1).mean())


LOSSES = {"cross_entropy": (cross_entropy, cross_entropy_grad), "half_mse": (half_mse, half_mse_grad)}
