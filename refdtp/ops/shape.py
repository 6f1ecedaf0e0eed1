"""Reshape (and Flatten): a per-sample change of shape, its own inverse."""
from __future__ import annotations

import math

from .base import Op, check_input


class Reshape(Op):
    """(B, *in_shape) -> (B, *out_shape) in C order (PyTorch's flatten/view order)."""
    linear = True

    def __init__(self, in_shape: tuple, out_shape: tuple):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        if math.prod(self.in_shape) != math.prod(self.out_shape):
            raise ValueError(f"Reshape: cannot reshape {self.in_shape} to {self.out_shape}")
        self.name = f"Reshape({self.in_shape}->{self.out_shape})"

    def forward(self, p, x, route=None):
        check_input(x, self.in_shape, self.name)
        return x.reshape((x.shape[0],) + self.out_shape), None

    def jvp(self, p, cache, dx):
        return dx.reshape((dx.shape[0],) + self.out_shape)

    def vjp(self, p, cache, dy):
        return dy.reshape((dy.shape[0],) + self.in_shape)

    def inverted(self) -> Reshape:
        return Reshape(self.out_shape, self.in_shape)


def Flatten(in_shape: tuple) -> Reshape:
    """(B, *in_shape) -> (B, prod(in_shape))."""
    return Reshape(in_shape, (math.prod(in_shape),))
