"""Fully connected layer y = x W^T + b (PyTorch layout: W is (out, in))."""
from __future__ import annotations

import math

import numpy as np

from .base import Op, check_input


def uniform_init(rng: np.random.Generator, shape: tuple, fan_in: int, dtype) -> np.ndarray:
    """PyTorch's default init U(-1/sqrt(fan_in), +1/sqrt(fan_in)).

    Kaiming-uniform with a = sqrt(5) gives the bound gain*sqrt(3/fan_in) with
    gain = sqrt(2/(1+5)), i.e. exactly 1/sqrt(fan_in); biases use the same bound.
    """
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Linear(Op):
    """y = x W^T + b.

    Args:
        n_in: input features.
        n_out: output features.
        bias: whether the layer has a bias b of shape (n_out,).

    Parameters: ``weight`` (n_out, n_in), ``bias`` (n_out,).
    """
    linear = True

    def __init__(self, n_in: int, n_out: int, bias: bool = True):
        self.n_in, self.n_out, self.bias = int(n_in), int(n_out), bias
        self.in_shape, self.out_shape = (self.n_in,), (self.n_out,)
        self.name = f"Linear({n_in}->{n_out})"

    def flops_per_sample(self) -> int:
        """2 n_in n_out multiply-adds."""
        return 2 * self.n_in * self.n_out

    def param_shapes(self) -> dict:
        shapes = {"weight": (self.n_out, self.n_in)}
        if self.bias:
            shapes["bias"] = (self.n_out,)
        return shapes

    def init_params(self, rng, dtype) -> dict:
        return {k: uniform_init(rng, s, self.n_in, dtype) for k, s in self.param_shapes().items()}

    def forward(self, p, x, route=None):
        """x: (B, n_in) -> y: (B, n_out). Cache: x."""
        check_input(x, self.in_shape, self.name)
        y = x @ p["weight"].T
        if p.get("bias") is not None:
            y += p["bias"]
        return y, x

    def jvp(self, p, x, dx):
        return dx @ p["weight"].T

    def vjp(self, p, x, dy):
        return dy @ p["weight"]

    def param_grads(self, p, x, dy) -> dict:
        """dW = dy^T x (n_out, n_in); db = sum_b dy (n_out,)."""
        grads = {"weight": dy.T @ x}
        if "bias" in p:
            grads["bias"] = dy.sum(axis=0)
        return grads

    def param_jvp(self, p, x, dp):
        dy = x @ dp["weight"].T
        if dp.get("bias") is not None:
            dy = dy + dp["bias"]
        return dy

    def inverted(self) -> Linear:
        """Feedback Linear(n_out -> n_in) with its own weights V of shape (n_in, n_out)."""
        return Linear(self.n_out, self.n_in, bias=self.bias)
