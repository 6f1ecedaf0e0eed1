"""The primitive-op protocol and the chain that composes ops.

An op is a differentiable map y = f(x; p) written as pure functions of its
parameters ``p`` (a dict of arrays, empty for parameter-free ops) and its
inputs. ``forward`` returns the output and a *cache*: whatever the derivative
rules need (the input, a pre-activation, pool indices). Nothing is stored on
the op itself, so every method can be checked by finite differences.

Shapes: ``x`` is (B, *in_shape), ``y`` is (B, *out_shape); ``in_shape`` is
fixed when the op is built, so a wrong input raises an error that names the
op and the expected shape.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backend import array_module, check_float_dtype


def check_input(x, in_shape: tuple, where: str, check_finite: bool = False) -> None:
    """Raise a clear error unless ``x`` is a float batch of shape (B, *in_shape).

    Args:
        x: array to check.
        in_shape: expected per-sample shape.
        where: name of the layer, used in the message.
        check_finite: also reject NaN/Inf (costs one pass over ``x``).

    Raises:
        TypeError: not a float32/float64 array.
        ValueError: wrong rank or shape, or non-finite values.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{where}: expected an array of shape (B, {_fmt(in_shape)}), got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{where}: expected a float32/float64 array, got dtype {x.dtype}")
    check_float_dtype(x.dtype, where)
    if x.ndim != len(in_shape) + 1 or tuple(x.shape[1:]) != tuple(in_shape):
        raise ValueError(f"{where}: expected input of shape (B, {_fmt(in_shape)}), got {tuple(x.shape)}")
    if check_finite and not bool(array_module(x).isfinite(x).all()):
        raise ValueError(f"{where}: input contains NaN or Inf")


def _fmt(shape: tuple) -> str:
    return ", ".join(str(s) for s in shape)


class Op(abc.ABC):
    """Base class of primitive ops (see the module docstring).

    Subclasses set ``in_shape``/``out_shape`` (per sample) in ``__init__`` and
    implement ``forward``, ``jvp`` and ``vjp``; parameterised ops also
    implement ``init_params``, ``param_grads`` and ``param_jvp``.
    """
    #: True for ops whose forward needs routing (max-unpool indices).
    needs_route = False
    #: True for ops that are linear in their input (x -> f(x) - f(0) linear).
    linear = False
    name = "op"
    in_shape: tuple = ()
    out_shape: tuple = ()

    @property
    def has_params(self) -> bool:
        return bool(self.param_shapes())

    def param_shapes(self) -> dict:
        """{parameter name: shape}; empty for parameter-free ops."""
        return {}

    def init_params(self, rng: np.random.Generator, dtype) -> dict:
        """PyTorch-default initial parameters as host arrays."""
        return {}

    @abc.abstractmethod
    def forward(self, p: dict, x, route=None) -> tuple[Any, Any]:
        """y = f(x; p). Returns (y, cache)."""

    @abc.abstractmethod
    def jvp(self, p: dict, cache, dx):
        """J_x dx, the derivative along an input direction, shape of y."""

    @abc.abstractmethod
    def vjp(self, p: dict, cache, dy):
        """J_x^T dy, the adjoint of :meth:`jvp`, shape of x."""

    def param_grads(self, p: dict, cache, dy) -> dict:
        """{name: d<dy, f(x; p)>/dp}, the parameter gradient of <dy, y>."""
        return {}

    def param_jvp(self, p: dict, cache, dp: dict):
        """J_p dp, the derivative along a parameter direction, shape of y."""
        raise TypeError(f"{self.name} has no parameters")

    def inverted(self) -> Op:
        """The paper's feedback counterpart (scalingDTP `invert`), mapping y-space to x-space."""
        raise TypeError(f"{self.name} has no feedback counterpart")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_fmt(self.in_shape)} -> {_fmt(self.out_shape)})"


class Chain:
    """Ops applied in sequence: y = f_k(... f_1(x)).

    At most one op of a chain may hold parameters (the paper's blocks have one
    weight layer each: W_n forward, omega_n feedback); its dict is the chain's
    parameter dict.

    Args:
        ops: the ops, in application order; shapes must connect.
        where: a name for error messages (e.g. "conv_1 forward").
    """

    def __init__(self, ops: Sequence[Op], where: str):
        self.ops = tuple(ops)
        self.where = where
        for a, b in zip(self.ops, self.ops[1:], strict=False):  # consecutive pairs: one shorter
            if tuple(a.out_shape) != tuple(b.in_shape):
                raise ValueError(f"{where}: {a!r} does not connect to {b!r}")
        owners = [i for i, op in enumerate(self.ops) if op.has_params]
        if len(owners) > 1:
            raise ValueError(f"{where}: at most one parameterised op per chain, got {len(owners)}")
        self.param_index = owners[0] if owners else None
        self.in_shape = self.ops[0].in_shape
        self.out_shape = self.ops[-1].out_shape

    @property
    def param_op(self):
        return None if self.param_index is None else self.ops[self.param_index]

    def _params(self, i: int, p: dict) -> dict:
        return p if i == self.param_index else {}

    def init_params(self, rng, dtype) -> dict:
        return {} if self.param_op is None else self.param_op.init_params(rng, dtype)

    def forward(self, p: dict, x, routes: Sequence | None = None) -> tuple[Any, tuple]:
        """Returns (y, caches) with one cache per op. ``routes[i]`` feeds op i."""
        check_input(x, self.in_shape, self.where)
        caches = []
        for i, op in enumerate(self.ops):
            route = routes[i] if op.needs_route else None
            if op.needs_route and route is None:
                raise ValueError(f"{self.where}: {op!r} needs pool indices (a route)")
            x, cache = op.forward(self._params(i, p), x, route)
            caches.append(cache)
        return x, tuple(caches)

    def jvp(self, p: dict, caches: tuple, dx):
        for i, op in enumerate(self.ops):
            dx = op.jvp(self._params(i, p), caches[i], dx)
        return dx

    def vjp(self, p: dict, caches: tuple, dy, stop: int = 0):
        """J^T dy, back-propagated down to the input of op ``stop``."""
        for i in range(len(self.ops) - 1, stop - 1, -1):
            dy = self.ops[i].vjp(self._params(i, p), caches[i], dy)
        return dy

    def param_grads(self, p: dict, caches: tuple, dy) -> dict:
        """Gradient of <dy, chain(x; p)> with respect to p (x fixed)."""
        if self.param_index is None:
            return {}
        k = self.param_index
        signal = self.vjp(p, caches, dy, stop=k + 1)
        return self.ops[k].param_grads(p, caches[k], signal)

    def param_jvp(self, p: dict, caches: tuple, dp: dict):
        """Derivative of the chain output along a parameter direction dp."""
        k = self.param_index
        dy = self.ops[k].param_jvp(p, caches[k], dp)
        for i in range(k + 1, len(self.ops)):
            dy = self.ops[i].jvp(self._params(i, p), caches[i], dy)
        return dy

    def __repr__(self) -> str:
        return " -> ".join(repr(op) for op in self.ops)
