"""Accuracy and loss of a network on a data split (plain forward passes).

Evaluation follows the official code: no augmentation, the training
normalisation, only the forward pass (docs/algorithm.md §6.7). Top-5 is reported
for datasets with at least :data:`TOP5_MIN_CLASSES` classes (ImageNet 32x32).
"""
from __future__ import annotations

import numpy as np

from data_loaders import iterate_batches

from ..losses import accuracy, cross_entropy
from ..networks import Network

#: Test and validation batch size.
EVAL_BATCH_SIZE = 500
#: Top-5 accuracy is computed when the network has at least this many classes.
TOP5_MIN_CLASSES = 100


def evaluate(net: Network, W: dict, images, labels, *, normalization, backend: str = "numpy",
             dtype: str = "float32", indices=None, batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """Mean cross-entropy and top-1 (and top-5) accuracy over a split.

    Args:
        net, W: the network and its forward parameters (on ``backend``).
        images: (N, C, H, W) uint8 host (or lazy HDF5) array; labels: (N,) int64.
        normalization: the run's input normalisation.
        backend, dtype: where and in which float type the forward passes run.
        indices: optional subset of the examples (e.g. the validation split).
        batch_size: examples per forward pass.

    Returns:
        {"loss": mean CE, "top1": fraction correct[, "top5": fraction], "n": examples}.
    """
    n = len(labels) if indices is None else len(indices)
    if n == 0:
        raise ValueError("evaluate: the split is empty")
    top5 = net.num_classes >= TOP5_MIN_CLASSES
    sums = {"loss": 0.0, "top1": 0.0, **({"top5": 0.0} if top5 else {})}
    for x, y in iterate_batches(images, labels, batch_size, seed=0, epoch=0, indices=indices,
                                shuffle=False, drop_last=False, augment=False,
                                normalization=normalization, backend=backend, dtype=np.dtype(dtype)):
        logits = net.logits(W, x)  # (B, K)
        b = x.shape[0]
        sums["loss"] += float(cross_entropy(logits, y, "sum"))
        sums["top1"] += round(accuracy(logits, y) * b)  # exact counts
        if top5:
            sums["top5"] += round(accuracy(logits, y, 5) * b)
    return {**{k: v / n for k, v in sums.items()}, "n": n}
