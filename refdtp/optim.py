"""Optimisers and learning-rate schedules with PyTorch's semantics (docs/algorithm.md §2.4).

Optimisers are pure: ``step(params, grads, state, lr)`` returns new
parameters and a new state, over plain dicts ``{name: array}`` (nested
network dicts go through :func:`flatten` / :func:`unflatten`). The state is a
dict of arrays and integers, so it checkpoints as is.
"""
from __future__ import annotations

import math

from .backend import array_module


def flatten(nested: dict, sep: str = ".") -> dict:
    """{block: {param: a}} -> {"block.param": a}."""
    return {f"{k}{sep}{n}": a for k, sub in nested.items() for n, a in sub.items()}


def unflatten(flat: dict, sep: str = ".") -> dict:
    """Inverse of :func:`flatten` (splits at the last separator)."""
    out: dict = {}
    for key, a in flat.items():
        block, name = key.rsplit(sep, 1)
        out.setdefault(block, {})[name] = a
    return out


def _check_keys(params: dict, grads: dict, who: str) -> None:
    if params.keys() != grads.keys():
        raise ValueError(f"{who}: gradient keys {sorted(grads)} do not match parameters {sorted(params)}")


class SGD:
    """SGD with momentum and L2 weight decay, as torch.optim.SGD.

    g <- grad + wd * w;  m <- mu * m + (1 - dampening) g  (m <- g at the first step);
    d <- g + mu * m if nesterov else m;  w <- w - lr * d.
    """

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 dampening: float = 0.0, nesterov: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, "
                             f"got {lr}, {momentum}, {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening 0")
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.dampening, self.nesterov = dampening, nesterov

    def init_state(self, params: dict) -> dict:
        """{"step": 0, "momentum": {}}: buffers are created at the first step, as in PyTorch."""
        return {"step": 0, "momentum": {}}

    def step(self, params: dict, grads: dict, state: dict, lr: float | None = None) -> tuple[dict, dict]:
        """One update. Returns (new params, new state); inputs are not modified."""
        _check_keys(params, grads, "SGD")
        lr = self.lr if lr is None else lr
        new_params, buffers = {}, {}
        for k, w in params.items():
            g = grads[k] + self.weight_decay * w if self.weight_decay else grads[k]
            if self.momentum:
                old = state["momentum"].get(k)
                m = g.copy() if old is None else self.momentum * old + (1 - self.dampening) * g
                buffers[k] = m
                g = g + self.momentum * m if self.nesterov else m
            new_params[k] = w - lr * g
        return new_params, {"step": state["step"] + 1, "momentum": buffers}


class Adam:
    """Adam with L2 weight decay added to the gradient, as torch.optim.Adam.

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
    w <- w - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
    """

    def __init__(self, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if lr < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or eps < 0:
            raise ValueError(f"Adam: invalid lr {lr}, betas {betas} or eps {eps}")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay

    def init_state(self, params: dict) -> dict:
        xp = array_module(*params.values()) if params else None
        return {"step": 0,
                "exp_avg": {k: xp.zeros_like(w) for k, w in params.items()},
                "exp_avg_sq": {k: xp.zeros_like(w) for k, w in params.items()}}

    def step(self, params: dict, grads: dict, state: dict, lr: float | None = None) -> tuple[dict, dict]:
        _check_keys(params, grads, "Adam")
        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        t = state["step"] + 1
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        new_params, m_new, v_new = {}, {}, {}
        for k, w in params.items():
            xp = array_module(w)
            g = grads[k] + self.weight_decay * w if self.weight_decay else grads[k]
            m = b1 * state["exp_avg"][k] + (1 - b1) * g
            v = b2 * state["exp_avg_sq"][k] + (1 - b2) * g * g
            new_params[k] = w - (lr / c1) * m / (xp.sqrt(v) / math.sqrt(c2) + self.eps)
            m_new[k], v_new[k] = m, v
        return new_params, {"step": t, "exp_avg": m_new, "exp_avg_sq": v_new}


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(name: str, **kwargs):
    """Build an optimiser by name ("sgd" or "adam")."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](**kwargs)


# -- schedules (stepped once per epoch) -------------------------------------

class ConstantLR:
    """lr_e = lr_0."""

    def __init__(self, base_lr: float):
        self.base_lr = base_lr

    def lr_at(self, epoch: int) -> float:
        return self.base_lr


class CosineAnnealingLR:
    """torch.optim.lr_scheduler.CosineAnnealingLR in its recursive ("chainable") form.

    For e <= T_max this is eta_min + (lr_0 - eta_min)(1 + cos(pi e / T_max))/2;
    past T_max the recursion keeps following the cosine upwards, exactly as
    PyTorch does (epochs 86-89 of the paper's 90-epoch runs with T_max = 85).
    """

    def __init__(self, base_lr: float, T_max: int, eta_min: float = 0.0):
        if T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max}")
        self.base_lr, self.T_max, self.eta_min = base_lr, T_max, eta_min

    def lr_at(self, epoch: int) -> float:
        lr, T, lo = self.base_lr, self.T_max, self.eta_min
        for e in range(1, epoch + 1):
            if (e - 1 - T) % (2 * T) == 0:
                lr = lr + (self.base_lr - lo) * (1 - math.cos(math.pi / T)) / 2
            else:
                lr = (1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T)) * (lr - lo) + lo
        return lr


class StepLR:
    """lr_e = lr_0 * gamma^(e // step_size), as torch's StepLR."""

    def __init__(self, base_lr: float, step_size: int, gamma: float = 0.1):
        self.base_lr, self.step_size, self.gamma = base_lr, step_size, gamma

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


def make_schedule(name: str, base_lr: float, **kwargs):
    """"constant", "cosine" (T_max, eta_min) or "step" (step_size, gamma)."""
    table = {"constant": ConstantLR, "cosine": CosineAnnealingLR, "step": StepLR}
    if name not in table:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(table)}")
    return table[name](base_lr, **kwargs)
