"""DDTP-linear: direct difference target propagation with linear direct feedback, trained with the
difference reconstruction loss (Meulemans, Carzaniga, Suykens, Sacramento, Grewe, NeurIPS 2020,
arXiv 2006.14331: DDTP-linear, its best method; section numbers are recalled, not confirmed here;
code meulemansalex/theoretical_framework_for_target_propagation,
lib/direct_feedback_layers.py `DDTPMLPLayer` with ``size_mlp_fb=None, fb_activation='linear'``,
lib/direct_feedback_networks.py `DDTPMLPNetwork`).

Network: an MLP of blocks s_n = tanh(W_n s_{n-1} + b_n), linear output s_N (:func:`refdtp.networks.mlp`).
Feedback: one matrix Q_n (d_n x d_N) per hidden block n = 1..N-1, straight from the output.

- output target (code `compute_output_target`, CrossEntropyLoss() = *mean* over the batch):
  t_N = s_N - beta * dL/ds_N = s_N - (beta/B) e,  e = softmax(s_N) - onehot(y);
- direct difference targets (g_n(s_N) = Q_n s_N in the DTP difference; code `DDTPMLPLayer.backward`):
  t_n = g_n(t_N) + s_n - g_n(s_N) = s_n + Q_n (t_N - s_N)   (the feedback bias cancels, so none is kept);
- forward gradient of block n (code `DTPLayer.compute_forward_gradients`):
  (ds_n/dW_n)^T 2 (s_n - t_n) / B, the gradient of (1/B) sum_b ||s_n - t_n||^2 (no 1/2);
- difference reconstruction loss of Q_n (DRL for a direct feedback path; code
  `DDTPMLPLayer.compute_feedback_gradients`, F.mse_loss = mean over B d_n entries):
  L_n = (1/(sigma^2 B d_n)) sum_b ||Q_n (F_{n+1..N}(s_n + eps_b) - s_N) - eps_b||^2,  eps ~ N(0, sigma^2 I);
  dL_n/dQ_n = 2 r u^T / (sigma^2 B d_n) with u = F_{n+1..N}(s_n + eps) - s_N, r = Q_n u - eps.

Its minimiser for small sigma with L2 decay wd (Adam's weight_decay adds wd Q to the gradient) solves
Q (J J^T + lambda I) = J^T with J = ds_N/ds_n and lambda = wd d_n / 2: the damped Gauss-Newton
feedback J^T (J J^T + lambda I)^{-1} of the paper's theory (GN targets, DRL theorem);
:mod:`verify.claims.family` checks it.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import Noise, host_rng
from ..losses import cross_entropy_grad
from ..networks import INIT_FEEDBACK, INIT_FORWARD, Network, Trace
from .common import FAMILY_NOISE_KEY, start_step, to_tree, xavier_normal


def feedback_blocks(net: Network) -> list:
    """The blocks with a direct feedback matrix: the hidden blocks 1..N-1."""
    return list(net.blocks[:-1])


def init_params(net: Network, seed: int, dtype, backend: str) -> tuple[dict, dict]:
    """(W, omega): xavier-normal weights, zero biases (code ``initialization='xavier_normal'``,
    `DTPLayer.__init__`), Q_n xavier-normal of shape (d_n, d_N). Host draws from
    host_rng(seed, INIT_FORWARD / INIT_FEEDBACK, block index)."""
    d_N = math.prod(net.blocks[-1].out_shape)
    W, omega = {}, {}
    for i, b in enumerate(net.blocks):
        shapes = b.F.param_op.param_shapes()
        W[b.name] = {"weight": xavier_normal(host_rng(seed, INIT_FORWARD, i), shapes["weight"], dtype)}
        if "bias" in shapes:
            W[b.name]["bias"] = np.zeros(shapes["bias"], dtype=dtype)
    for i, b in enumerate(feedback_blocks(net)):
        d_n = math.prod(b.out_shape)
        omega[b.name] = {"weight": xavier_normal(host_rng(seed, INIT_FEEDBACK, i), (d_n, d_N), dtype)}
    return to_tree(W, backend), to_tree(omega, backend)


# -- targets and the forward update ---------------------------------------------------------

def output_delta(logits, labels, beta: float):
    """t_N - s_N = -beta dL/ds_N for the mean cross-entropy L: -(beta/B)(softmax - onehot), (B, K)."""
    return -beta * cross_entropy_grad(logits, labels, reduction="mean")


def deltas(net: Network, omega: dict, trace: Trace, delta_N) -> list:
    """[None, t_1 - s_1, ..., t_N - s_N] with t_n - s_n = Q_n (t_N - s_N) (n < N), per sample rows.

    Differences, not targets, are formed: no cancellation in float32.
    """
    N = len(net)
    out = [None] * (N + 1)
    out[N] = delta_N.reshape(trace.s[N].shape)
    flat = delta_N.reshape(delta_N.shape[0], -1)
    for n, b in enumerate(feedback_blocks(net), start=1):
        out[n] = (flat @ omega[b.name]["weight"].T).reshape(trace.s[n].shape)
    return out


def local_grads(net: Network, W: dict, trace: Trace, delta: list) -> dict:
    """d/dW_n (1/B) sum_b ||s_n - t_n||^2 = (ds_n/dW_n)^T 2 (s_n - t_n)/B with s_n - t_n = -delta_n."""
    B = trace.s[0].shape[0]
    return {b.name: b.forward_param_grads(W[b.name], trace.caches[n - 1], -2 * delta[n] / B)
            for n, b in enumerate(net.blocks, start=1)}


def forward_grads(net: Network, W: dict, omega: dict, trace: Trace, labels, beta: float,
                  delta_N=None) -> tuple[dict, list]:
    """DDTP's forward-weight gradients. Returns (grads, deltas). ``delta_N`` overrides the output
    nudge (the verification feeds -beta e for a regression error e)."""
    logits = trace.logits.reshape(trace.s[0].shape[0], -1)
    d_N = output_delta(logits, labels, beta) if delta_N is None else delta_N
    delta = deltas(net, omega, trace, d_N)
    return local_grads(net, W, trace, delta), delta


def local_loss(trace: Trace, delta: list):
    """sum_n (1/B) sum_b ||s_n - t_n||^2 (0-d array)."""
    return sum((d ** 2).sum() for d in delta[1:]) / trace.s[0].shape[0]


# -- the difference reconstruction loss ---------------------------------------------------

def upper_forward(net: Network, W: dict, h, n: int):
    """F_N(...F_{n+1}(h)): the output when block n's output is h (B, *shape_n) -> (B, d_N)."""
    for b in net.blocks[n:]:
        h = b.forward(W[b.name], h)[0]
    return h.reshape(h.shape[0], -1)


def drl_terms(net: Network, W: dict, Q, trace: Trace, n: int, eps):
    """(u, r): u = F_{n+1..N}(s_n + eps) - s_N (B, d_N); r = u Q^T - eps (B, d_n)."""
    s_N = trace.s[-1].reshape(eps.shape[0], -1)
    u = upper_forward(net, W, trace.s[n] + eps.reshape(trace.s[n].shape), n) - s_N
    return u, u @ Q.T - eps.reshape(eps.shape[0], -1)


def drl_loss(net: Network, W: dict, Q, trace: Trace, n: int, eps, sigma: float):
    """L_n = (1/(sigma^2 B d_n)) sum_b ||r_b||^2 (module docstring)."""
    _, r = drl_terms(net, W, Q, trace, n, eps)
    return (r ** 2).sum() / (sigma ** 2 * r.size)


def drl_grads(net: Network, W: dict, Q, trace: Trace, n: int, eps, sigma: float, with_loss: bool = False):
    """dL_n/dQ_n = 2 r^T u / (sigma^2 B d_n), (d_n, d_N). Returns ({"weight": grad}, loss or None)."""
    u, r = drl_terms(net, W, Q, trace, n, eps)
    scale = 2.0 / (sigma ** 2 * r.size)
    loss = (r ** 2).sum() / (sigma ** 2 * r.size) if with_loss else None
    return {"weight": scale * (r.T @ u)}, loss


# -- one training step ------------------------------------------------------------------------

def feedback_optimizer(cfg, lr: float):
    """The optimiser of one Q_n: Adam(betas, eps, wd) or SGD(momentum, wd) per ``cfg.feedback_optimizer``."""
    from ..optim import SGD, Adam
    if cfg.feedback_optimizer == "adam":
        return Adam(lr, (cfg.feedback_beta1, cfg.feedback_beta2), cfg.feedback_eps, cfg.feedback_weight_decay)
    return SGD(lr, cfg.feedback_momentum, cfg.feedback_weight_decay)


def init_state(cfg, net: Network, backend: str):
    """DDTP's TrainState: xavier W, Q_n and one feedback optimiser state per hidden block."""
    from ..algorithms import TrainState, forward_optimizer
    from ..optim import flatten
    W, omega = init_params(net, cfg.seed, cfg.dtype, backend)
    fb = {b.name: feedback_optimizer(cfg, lr).init_state(omega[b.name])
          for b, lr in zip(feedback_blocks(net), cfg.feedback_lr, strict=True)}
    return TrainState(W, omega, forward_optimizer(cfg).init_state(flatten(W)), fb)


def feedback_phase(cfg, net: Network, state, trace: Trace, backend: str) -> tuple[dict, dict, dict]:
    """K_n optimiser steps on every Q_n, fresh noise N(0, sigma_n^2) each (stream FAMILY_NOISE_KEY)."""
    from ..algorithms import _check_finite
    omega, fb_states, losses = dict(state.omega), dict(state.feedback_opt), {}
    for n, b in enumerate(feedback_blocks(net), start=1):
        K, sigma = cfg.feedback_iterations[n - 1], cfg.feedback_sigma[n - 1]
        opt = feedback_optimizer(cfg, cfg.feedback_lr[n - 1])
        noise = Noise(cfg.seed, FAMILY_NOISE_KEY, state.epoch, state.step, n, backend=backend,
                      bit_generator=cfg.noise_generator)
        Q, st = omega[b.name], fb_states[b.name]
        for it in range(K):
            eps = noise.normal(trace.s[n].shape, sigma, trace.s[n].dtype)
            g, loss = drl_grads(net, state.W, Q["weight"], trace, n, eps, sigma, with_loss=(it == K - 1))
            Q, st = opt.step(Q, g, st)
            if loss is not None:
                losses[b.name] = float(loss)
        _check_finite(Q, f"epoch {state.epoch + 1} step {state.step + 1}: feedback weights of block {b.name}")
        omega[b.name], fb_states[b.name] = Q, st
    return omega, fb_states, losses


def train_step(cfg, net: Network, state, x, labels, lr: float):
    """One batch in the authors' parallel order (lib/train.py `train_parallel`): targets from the
    current Q, then the feedback steps, then one forward step. During the first
    ``cfg.feedback_pretrain_epochs`` epochs only the feedback trains (the code's ``epochs_fb``)."""
    from ..algorithms import TrainState, _check_finite, forward_optimizer
    from ..backend import backend_name
    from ..optim import flatten, unflatten
    trace, stats, where = start_step(net, state, x, labels)
    pretrain = state.epoch < cfg.feedback_pretrain_epochs
    if not pretrain:
        grads, delta = forward_grads(net, state.W, state.omega, trace, labels, cfg.beta)
        stats["forward_loss"] = float(local_loss(trace, delta))
    omega, fb_states, losses = feedback_phase(cfg, net, state, trace, backend_name(x))
    stats.update({f"feedback_loss/{k}": v for k, v in losses.items()})
    W, opt_state = state.W, state.forward_opt
    if not pretrain:
        flat_W, opt_state = forward_optimizer(cfg).step(flatten(state.W), flatten(grads),
                                                        state.forward_opt, lr)
        _check_finite(flat_W, f"{where}: forward weights")
        W = unflatten(flat_W)
    new = TrainState(W, omega, opt_state, fb_states, state.epoch, state.step + 1, state.global_step + 1)
    return new, stats


def diagnostics_row(cfg, net: Network, W: dict, omega: dict, x, labels) -> dict:
    """{"ddtp_bp_angle/<block>"}: angle between the DDTP update (beta = cfg.diagnostics_beta)
    and the BP gradient of the mean cross-entropy, per block, on the batch x."""
    from ..backprop import backprop
    from ..metrics import angle
    trace = net.forward(W, x)
    logits = trace.logits.reshape(x.shape[0], -1)
    grads, _ = forward_grads(net, W, omega, trace, labels, cfg.diagnostics_beta)
    bp, _ = backprop(net, W, trace, cross_entropy_grad(logits, labels, "mean").reshape(trace.s[-1].shape))
    return {f"ddtp_bp_angle/{b.name}": angle(grads[b.name], bp[b.name]) for b in net.blocks}
