"""Elementwise nonlinearities: value, derivative and inverse, in a registry.

Each activation is an :class:`Activation` record of pure functions of the
backend arrays (NumPy or CuPy). ``derivative(a, y)`` takes both the input and
the output so that activations whose derivative is cheap from the output
(ELU, tanh, sigmoid) never recompute an exponential.

Besides the usual functions, the registry holds the "phi" feedback
nonlinearities of docs/theory.md §3.4: for a forward activation s they
satisfy phi'(s(a)) = s'(a), so a feedback G(y) = V phi(y) has the Jacobian
V diag(s'(a)) and can match J_F^T = W^T diag(s'(a)) exactly, sample by sample.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .backend import array_module


@dataclass(frozen=True)
class Activation:
    """An elementwise function y = f(a).

    Attributes:
        name: registry name, with parameters, e.g. "elu(alpha=1.0)".
        value: a -> f(a), any shape, dtype preserved.
        derivative: (a, y) -> f'(a), with y = f(a) given to save work; a fresh array of a's
            shape and dtype, which callers may overwrite (Act.jvp multiplies into it).
        inverse: y -> f^{-1}(y), or None when f is not invertible.
        smooth: False when f' has a kink (ReLU at 0): finite differences must
            keep away from it.
    """
    name: str
    value: Callable
    derivative: Callable
    inverse: Callable | None = None
    smooth: bool = True

    def __repr__(self) -> str:
        return f"Activation({self.name})"


def _elu(alpha: float = 1.0) -> Activation:
    """ELU(a) = a for a > 0, alpha (e^a - 1) otherwise; ELU'(a) = 1 or ELU(a) + alpha."""
    def expm1_nonpositive(a):
        """alpha (e^min(a,0) - 1), one fresh array.

        float64 uses expm1 (accurate near 0, for verification); float32 uses
        exp - 1, 4x faster here, whose absolute error (< 6e-8) is below the
        float32 resolution of the activations it feeds.
        """
        xp = array_module(a)
        out = xp.minimum(a, 0)
        if out.dtype == xp.float64:
            xp.expm1(out, out=out)
        else:
            xp.exp(out, out=out)
            out -= 1
        if alpha != 1.0:
            out *= alpha
        return out

    def value(a):
        xp = array_module(a)
        out = expm1_nonpositive(a)
        if alpha <= 1.0:
            # alpha (e^a - 1) >= a for a <= 0 when alpha <= 1, and is 0 for a > 0,
            # so the maximum picks the right branch without a where().
            return xp.maximum(a, out, out=out)
        return xp.where(a > 0, a, out)

    def derivative(a, y):
        xp = array_module(a)
        if alpha <= 1.0:
            # y + alpha = alpha e^a <= 1 for a <= 0, and a + alpha > 1 for a > 0 (alpha = 1);
            # for alpha < 1 and 0 < a < 1 - alpha the minimum would be wrong, so only alpha = 1.
            if alpha == 1.0:
                d = y + 1
                return xp.minimum(d, 1, out=d)
        return xp.where(a > 0, a.dtype.type(1), y + alpha)

    def inverse(y):
        xp = array_module(y)
        return xp.where(y > 0, y, xp.log1p(xp.minimum(y, 0) / alpha))

    # ELU is C^1 for alpha = 1 (both one-sided slopes are 1 at 0), else C^0.
    return Activation(f"elu(alpha={alpha})", value, derivative, inverse, smooth=(alpha == 1.0))


def _tanh() -> Activation:
    """tanh(a); tanh'(a) = 1 - tanh(a)^2; inverse artanh."""
    def value(a):
        return array_module(a).tanh(a)

    def derivative(a, y):
        return 1 - y * y

    def inverse(y):
        return array_module(y).arctanh(y)

    return Activation("tanh", value, derivative, inverse)


def _relu() -> Activation:
    """ReLU(a) = max(a, 0); ReLU'(a) = [a > 0]; not invertible."""
    def value(a):
        return array_module(a).maximum(a, 0)

    def derivative(a, y):
        return (a > 0).astype(a.dtype)

    return Activation("relu", value, derivative, None, smooth=False)


def _leaky_relu(negative_slope: float = 0.01) -> Activation:
    """LeakyReLU(a) = a for a > 0, slope * a otherwise; inverse divides by slope."""
    if negative_slope <= 0:
        raise ValueError(f"leaky_relu: negative_slope must be > 0, got {negative_slope}")

    def value(a):
        return array_module(a).where(a > 0, a, negative_slope * a)

    def derivative(a, y):
        return array_module(a).where(a > 0, a.dtype.type(1), a.dtype.type(negative_slope))

    def inverse(y):
        return array_module(y).where(y > 0, y, y / negative_slope)

    return Activation(f"leaky_relu(negative_slope={negative_slope})",
                      value, derivative, inverse, smooth=False)


def _sigmoid() -> Activation:
    """sigmoid(a) = 1 / (1 + e^-a); sigmoid' = y (1 - y); inverse logit."""
    def value(a):
        xp = array_module(a)
        # Two branches so that exp never overflows.
        e = xp.exp(-xp.abs(a))
        return xp.where(a >= 0, 1 / (1 + e), e / (1 + e))

    def derivative(a, y):
        return y * (1 - y)

    def inverse(y):
        xp = array_module(y)
        return xp.log(y) - xp.log1p(-y)

    return Activation("sigmoid", value, derivative, inverse)


def _identity() -> Activation:
    """identity(a) = a."""
    return Activation("identity", lambda a: a, lambda a, y: array_module(a).ones_like(a),
                      lambda y: y)


# -- phi functions for exact Jacobian matching (docs/theory.md §3.4) -------

def _phi_tanh() -> Activation:
    """phi(y) = y - y^3/3, so phi'(y) = 1 - y^2 = tanh'(a) at y = tanh(a)."""
    return Activation("phi_tanh", lambda y: y - y * y * y / 3,
                      lambda y, _: 1 - y * y)


def _phi_sigmoid() -> Activation:
    """phi(y) = y^2/2 - y^3/3, so phi'(y) = y (1 - y) = sigmoid'(a) at y = sigmoid(a)."""
    return Activation("phi_sigmoid", lambda y: y * y / 2 - y * y * y / 3,
                      lambda y, _: y * (1 - y))


def _phi_elu() -> Activation:
    """phi(y) = y (y >= 0), y + y^2/2 (y < 0): phi'(y) = ELU'(a) at y = ELU(a), alpha = 1."""
    def value(y):
        return array_module(y).where(y >= 0, y, y + y * y / 2)

    def derivative(y, _):
        return array_module(y).where(y >= 0, y.dtype.type(1), 1 + y)

    return Activation("phi_elu", value, derivative)


ACTIVATIONS = {
    "elu": _elu,
    "tanh": _tanh,
    "relu": _relu,
    "leaky_relu": _leaky_relu,
    "sigmoid": _sigmoid,
    "identity": _identity,
    "phi_tanh": _phi_tanh,
    "phi_sigmoid": _phi_sigmoid,
    "phi_elu": _phi_elu,
}

#: forward activation -> the phi whose derivative matches it (docs/theory.md §3.4).
JMC_PHI = {"tanh": "phi_tanh", "sigmoid": "phi_sigmoid", "elu": "phi_elu", "identity": "identity"}


def get_activation(name: str, **params) -> Activation:
    """Build a registered activation, e.g. ``get_activation("elu", alpha=1.0)``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    try:
        factory = ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None
    return factory(**params)
