"""Floating-point operation counts of one training step, from the layer shapes.

A multiply-add counts 2 FLOPs. For block n, let C_n be the FLOPs of its weight
layer on a batch of B samples:

    conv:   C_n = 2 B C_out C_in k^2 Ho Wo          linear: C_n = 2 B n_in n_out

A conv-transpose with the same weights, a conv weight gradient and a conv
input gradient each cost C_n too. Elementwise work (activations, pooling,
noise) is not counted: it is O(1/k^2 C_in) of the GEMM work.

BP step:     forward sum_n C_n + weight gradients sum_n C_n + input gradients sum_{n>=2} C_n.
L-DRL step (refdtp's fused form, refdtp.ldrl.ldrl_grads_fused):
    forward pass sum_n C_n;
    per feedback iteration of block n >= 2: F(x+eps) C_n, G's weight layer on
    du_eta C_n, one weight gradient on the stacked pair 2 C_n -> 4 C_n, plus
    one C_n for the loss value at the last iteration;
    targets: one feedback weight-layer evaluation per block n >= 2 (C_n);
    forward-loss weight gradients sum_n C_n.
    Total 2 sum_n C_n + sum_{n>=2} (4 K_n + 2) C_n.
L-DRL step as the official PyTorch code runs it (the peer): per iteration
    F(x+eps), F(x) again (to restore the pool indices), three G evaluations and
    three weight gradients: 8 C_n; targets 2 C_n per block; forward pass,
    local-loss forward and weight gradients 3 sum_n C_n.
"""
from __future__ import annotations

import math

from ..networks import Network


def weight_layer_flops(net: Network, batch: int) -> list[int]:
    """C_n for every block (its forward weight layer on ``batch`` samples), in block order."""
    return [batch * block.F.param_op.flops_per_sample() for block in net.blocks]


def bp_step_flops(net: Network, batch: int) -> int:
    C = weight_layer_flops(net, batch)
    return 2 * sum(C) + sum(C[1:])


def ldrl_step_flops(net: Network, batch: int, iterations: list[int]) -> int:
    C = weight_layer_flops(net, batch)
    return 2 * sum(C) + sum((4 * k + 2) * c for k, c in zip(iterations, C[1:], strict=True))


def ldrl_peer_step_flops(net: Network, batch: int, iterations: list[int]) -> int:
    C = weight_layer_flops(net, batch)
    return 3 * sum(C) + sum((8 * k + 2) * c for k, c in zip(iterations, C[1:], strict=True))


def gemm_flops(n: int) -> int:
    """FLOPs of an n x n by n x n matrix product."""
    return 2 * n ** 3


def scaled_channels(channels, width_scale: float) -> list[int]:
    """Channel counts scaled by ``width_scale`` (at least 1 each)."""
    return [max(1, int(round(c * width_scale))) for c in channels]


def scaled_iterations(iterations, iter_scale: float) -> list[int]:
    """Feedback iterations scaled by ``iter_scale`` (at least 1 each)."""
    return [max(1, int(math.ceil(k * iter_scale))) for k in iterations]
