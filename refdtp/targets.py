"""DTP targets and the forward-weight loss (docs/algorithm.md §3).

Block indices follow the paper: blocks n = 1..N, activations s_0 = x, ...,
s_N = logits; in code ``net.blocks[n - 1]`` is block n and ``trace.s[n]`` is s_n.
"""
from __future__ import annotations

from .losses import cross_entropy_grad
from .networks import Network, Trace

TARGET_RULES = ("difference", "tp")


def first_target(logits, labels, beta: float):
    """t_N = s_N - beta * dl/ds_N with l the *sum*-reduced cross-entropy.

    Per sample, dl/ds_N = softmax(s_N) - onehot(y): no 1/B here (docs/algorithm.md §3.1).

    Args:
        logits: (B, K) output s_N.
        labels: (B,) integer classes.
        beta: nudging strength (0.7 in the paper's runs).
    """
    return logits - beta * cross_entropy_grad(logits, labels, reduction="sum")


def propagate_targets(net: Network, omega: dict, trace: Trace, t_N, rule: str = "difference",
                      post=None) -> list:
    """Targets for s_{N-1}, ..., s_1 by the feedback maps.

    difference (DTP, Lee et al. 2015):  t_{n-1} = s_{n-1} + G_n(t_n) - G_n(s_n)
    tp (plain target propagation):     t_{n-1} = G_n(t_n)

    Both G_n evaluations use the routing (pool indices) of the clean forward
    pass, so they share one linearisation point and the biases cancel.

    Args:
        net, omega, trace: network, feedback parameters, clean forward pass.
        t_N: (B, *shape_N) output target.
        rule: "difference" or "tp".
        post: optional map applied to every propagated target t_{n-1} (FW-DTP's parameter-free
            batch standardisation, :mod:`refdtp.family.fwdtp`); None leaves them as they are.

    Returns:
        [None, t_1, ..., t_N] (index n holds the target of s_n).
    """
    if rule not in TARGET_RULES:
        raise ValueError(f"unknown target rule {rule!r}; choose one of {TARGET_RULES}")
    N = len(net)
    t = [None] * (N + 1)
    t[N] = t_N.reshape(trace.s[N].shape)
    for n in range(N, 1, -1):
        block = net.blocks[n - 1]
        route = block.route(trace.caches[n - 1])
        if rule == "difference":
            t[n - 1] = trace.s[n - 1] + block.feedback_difference(omega[block.name], t[n], trace.s[n], route)
        else:
            t[n - 1] = block.feedback(omega[block.name], t[n], route)[0]
        if post is not None:
            t[n - 1] = post(t[n - 1])
    return t


def forward_loss(trace: Trace, targets: list):
    """L_F = sum_n (1/B) sum_b 1/2 ||s_n - t_n||^2 over blocks n = 1..N (a 0-d array)."""
    B = trace.s[0].shape[0]
    return sum(0.5 * ((trace.s[n] - targets[n]) ** 2).sum() for n in range(1, len(targets))) / B


def forward_loss_grads(net: Network, W: dict, trace: Trace, targets: list) -> dict:
    """dL_F/dW_n = (dF_n/dW_n)^T (s_n - t_n)/B with each block's input detached.

    Block losses are independent: W_n only gets the gradient of its own term.
    """
    B = trace.s[0].shape[0]
    grads = {}
    for n, block in enumerate(net.blocks, start=1):
        e_n = (trace.s[n] - targets[n]) / B
        grads[block.name] = block.forward_param_grads(W[block.name], trace.caches[n - 1], e_n)
    return grads


def dtp_forward_grads(net: Network, W: dict, omega: dict, trace: Trace, labels, beta: float,
                      rule: str = "difference") -> tuple[dict, list]:
    """The DTP forward-weight gradient of one batch.

    At block N this is exactly beta * d(mean CE)/dW_N; (1/beta) * grads -> BP
    gradients as beta -> 0 when the feedback satisfies the JMC (Theorem 4.3).

    Returns:
        (grads, targets).
    """
    logits = trace.logits.reshape(trace.s[0].shape[0], -1)
    targets = propagate_targets(net, omega, trace, first_target(logits, labels, beta), rule)
    return forward_loss_grads(net, W, trace, targets), targets
