"""An elementwise activation as an op: y = f(a), Jacobian diag(f'(a))."""
from __future__ import annotations

from ..activations import Activation, get_activation
from .base import Op


class Act(Op):
    """Applies a registered activation elementwise.

    Args:
        shape: per-sample shape (input and output).
        activation: registry name (see :mod:`refdtp.activations`) or an Activation.
        **params: parameters of the activation (e.g. alpha for ELU).

    Cache: (a, y), so the derivative f'(a) is formed without a new exponential.
    """

    def __init__(self, shape: tuple, activation, **params):
        self.act: Activation = (activation if isinstance(activation, Activation)
                                else get_activation(activation, **params))
        self.in_shape = self.out_shape = tuple(shape)
        self.linear = self.act.name == "identity"
        self.name = self.act.name

    def forward(self, p, a, route=None):
        y = self.act.value(a)
        return y, (a, y)

    def derivative(self, cache):
        """f'(a), same shape as a."""
        a, y = cache
        return self.act.derivative(a, y)

    def jvp(self, p, cache, da):
        d = self.derivative(cache)
        if d.shape == da.shape and d.dtype == da.dtype:
            d *= da  # a fresh array (the Activation contract): no second large allocation
            return d
        return d * da

    vjp = jvp  # diag(f'(a)) is symmetric.

    def inverted(self) -> Act:
        """scalingDTP maps an activation to the *same* activation (not its inverse)."""
        return Act(self.out_shape, self.act)
