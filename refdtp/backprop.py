"""Back-propagation through a network of blocks (the BP baseline).

The gradient of a loss l(s_N) with respect to every forward parameter W_n:

    delta_N = dl/ds_N,   grad W_n = (dF_n/dW_n)^T delta_n,   delta_{n-1} = J_{F_n}^T delta_n.
"""
from __future__ import annotations

from .losses import cross_entropy_grad
from .networks import Network, Trace


def backprop(net: Network, W: dict, trace: Trace, dl_ds_N) -> tuple[dict, list]:
    """Hand-written reverse pass.

    Args:
        net: the network.
        W: forward parameters.
        trace: the forward pass (``net.forward(W, x)``).
        dl_ds_N: (B, *out_shape) gradient of the loss at the output.

    Returns:
        (grads, deltas): grads[name] is the dict of dl/dW_n; deltas[n] = dl/ds_n
        for n = 1..N (deltas[0] is None: the input gets no gradient).
    """
    grads, deltas = {}, [None] * (len(net) + 1)
    delta = dl_ds_N.reshape(trace.s[-1].shape)
    deltas[-1] = delta
    for n in range(len(net), 0, -1):
        block = net.blocks[n - 1]
        grads[block.name] = block.forward_param_grads(W[block.name], trace.caches[n - 1], delta)
        if n > 1:
            delta = block.forward_vjp(W[block.name], trace.caches[n - 1], delta)
            deltas[n - 1] = delta
    return grads, deltas


def cross_entropy_gradients(net: Network, W: dict, x, labels, reduction: str = "mean") -> dict:
    """dCE/dW_n for every block (batch-mean CE by default): the BP update direction."""
    trace = net.forward(W, x)
    logits = trace.logits.reshape(x.shape[0], -1)
    grads, _ = backprop(net, W, trace, cross_entropy_grad(logits, labels, reduction))
    return grads
