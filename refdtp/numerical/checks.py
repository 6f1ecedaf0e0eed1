"""The two faces of every check: ``*_error`` returns numbers, ``check_*`` raises."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from refdtp.backend import to_host

from .core import (
    _F64,
    ATOL,
    EPS,
    RTOL,
    CheckResult,
    _compare,
    _Evaluator,
    _name,
    _raise_if_failed,
    _readonly,
    as_float64_host,
    unit_vector,
)
from .differences import _directional, numerical_grad, numerical_jacobian


def _analytic(value, shape, what, allow, problems, reshape=False) -> np.ndarray:
    """Host float64 copy of an analytic result; shape/dtype faults go to ``problems``."""
    raw = to_host(value)
    if raw.dtype != _F64 and not allow:
        problems.append(f"{what} has dtype {raw.dtype}, expected float64")
    out = np.array(raw, dtype=np.float64, copy=True)
    if out.shape != tuple(shape):
        if not reshape or out.size != math.prod(shape):
            problems.append(f"{what} has shape {out.shape}, expected {tuple(shape)}")
            return np.full(shape, np.nan)
        out = out.reshape(shape)
    return out


def _structural(fn, x, vec, first, what, problems) -> None:
    """PyTorch gradcheck extras: re-entrant (bit-identical), and linear (zero -> zero)."""
    again = to_host(fn(_readonly(x), _readonly(vec)))
    if again.shape != first.shape or not np.array_equal(again, first):
        problems.append(f"{what} is not deterministic: two calls differ")
    zero = to_host(fn(_readonly(x), _readonly(np.zeros_like(vec))))
    if np.any(zero != 0):
        problems.append(f"{what} of a zero vector is not exactly zero "
                        f"(max |.| = {float(np.max(np.abs(zero))):.3g})")


def vjp_error(f, vjp, x, *, eps: float = EPS, seed: int = 0, n_directions: int = 3,
              rtol: float = RTOL, atol: float | None = None, stencil: int = 3,
              allow_lower_precision: bool = False, name: str | None = None) -> CheckResult:
    """Dot-product (adjoint) test: ``<w, J_num u>`` vs ``<vjp(x, w), u>``.

    ``n_directions`` pairs of unit ``u`` (input space) and ``w`` (output space) come
    from ``default_rng(seed)`` with Chainer's floor. Scalar rule ``|a - n| <= atol +
    rtol*max(|a|, |n|)``; the default atol ``1e-7*max(1, ||J_num u||)`` is the scale
    the dot product may cancel from. Structural checks (PyTorch gradcheck):
    ``vjp(x, 0) == 0`` exactly, two calls identical, result shape/dtype those of x.

    Args:
        f: float64 array of shape ``in`` -> float64 array (or scalar) of shape ``out``.
        vjp: ``vjp(x, w) -> J(x)^T w``, shape ``in``; gets read-only float64 arrays.
        x: the point, shape ``in`` (NumPy or CuPy, any float dtype; copied to float64).
        eps: base step (see :func:`_directional`); seed: of the directions.
        rtol, atol: tolerances (atol None: the default above).
        stencil: 3 (central difference) or 5 (higher order + kink detection).
        allow_lower_precision: accept and cast non-float64 results of f.
        name: shown in reports (default: the qualified name of ``vjp``).

    Returns:
        :class:`CheckResult`; ``worst`` is ``(direction,)``.

    Raises:
        TypeError: f returns a non-float64 result. ValueError: non-finite x or f(x).
        NondifferentiableError: stencil=5 straddles a kink.
    """
    x = as_float64_host(x)
    ev, problems, rng = _Evaluator(f, allow_lower_precision), [], np.random.default_rng(seed)
    y0 = ev(x)
    num, ana, scale = [], [], []
    for k in range(n_directions):
        u, w = unit_vector(rng, x.shape), unit_vector(rng, y0.shape)
        ju = _directional(ev, x, u, eps, stencil, y0, f"direction {k}")
        first = np.array(to_host(vjp(_readonly(x), _readonly(w))), copy=True)
        if k == 0:
            _structural(vjp, x, w, first, "vjp", problems)
        g = _analytic(first, x.shape, "vjp(x, w)", allow_lower_precision, problems)
        num.append(np.vdot(w, ju))
        ana.append(np.vdot(g, u))
        scale.append(np.linalg.norm(ju.ravel()))
    atol = ATOL * np.maximum(1.0, np.array(scale)) if atol is None else atol
    return _compare("vjp", name or _name(vjp), ana, num, rtol=rtol, atol=atol,
                    symmetric=True, eps=eps, seed=seed, problems=problems)


def jvp_error(f, jvp, x, *, eps: float = EPS, seed: int = 0, n_directions: int = 3,
              rtol: float = RTOL, atol: float | None = None, stencil: int = 3,
              allow_lower_precision: bool = False, name: str | None = None) -> CheckResult:
    """``jvp(x, u)`` vs ``J_num u``, elementwise, for ``n_directions`` seeded unit ``u``.

    Comparing the whole output costs no more than ``<w, .>`` would, so ``worst``
    is ``(direction, *out_index)``. ``jvp(x, u) -> J(x) u`` has shape ``out``; other
    arguments, structural checks and errors as in :func:`vjp_error`.
    """
    x = as_float64_host(x)
    ev, problems, rng = _Evaluator(f, allow_lower_precision), [], np.random.default_rng(seed)
    y0 = ev(x)
    num, ana = [], []
    for k in range(n_directions):
        u = unit_vector(rng, x.shape)
        unit_vector(rng, y0.shape)  # keep the stream aligned with vjp_error's (u, w) pairs
        num.append(_directional(ev, x, u, eps, stencil, y0, f"direction {k}"))
        first = np.array(to_host(jvp(_readonly(x), _readonly(u))), copy=True)
        if k == 0:
            _structural(jvp, x, u, first, "jvp", problems)
        ana.append(_analytic(first, y0.shape, "jvp(x, u)", allow_lower_precision, problems))
    return _compare("jvp", name or _name(jvp), np.stack(ana), np.stack(num), rtol=rtol,
                    atol=atol, eps=eps, seed=seed, problems=problems)


def grad_error(f_scalar, grad, x, *, directional: bool = False, eps: float = EPS,
               seed: int = 0, n_directions: int = 3, rtol: float = RTOL,
               atol: float | None = None, stencil: int = 3,
               allow_lower_precision: bool = False, name: str | None = None) -> CheckResult:
    """Gradient of a scalar function (``grad(x)`` or an array) vs :func:`numerical_grad`.

    ``directional=True`` (big inputs): compare ``<grad, u>`` with the numerical
    derivative along ``n_directions`` seeded unit ``u`` (the dot-product test
    with ``w = +-1``) instead of every coordinate.
    """
    x = as_float64_host(x)
    grad_fn = grad if callable(grad) else (lambda _x: grad)
    label = name or _name(grad if callable(grad) else f_scalar)
    if directional:
        # w = +-1; a Python float keeps the dtype of grad, so its dtype check still bites.
        r = vjp_error(f_scalar, lambda xx, w: np.asarray(w).item() * to_host(grad_fn(xx)), x,
                      eps=eps, seed=seed, n_directions=n_directions, rtol=rtol, atol=atol,
                      stencil=stencil, allow_lower_precision=allow_lower_precision, name=label)
        return dataclasses.replace(r, check="grad (directional)")
    problems = []
    num = numerical_grad(f_scalar, x, eps, stencil=stencil,
                         allow_lower_precision=allow_lower_precision)
    ana = _analytic(grad_fn(_readonly(x)), x.shape, "grad(x)", allow_lower_precision, problems)
    return _compare("grad", label, ana, num, rtol=rtol, atol=atol, eps=eps, problems=problems)


def jacobian_error(jac, f, x, *, eps: float = EPS, rtol: float = RTOL,
                   atol: float | None = None, stencil: int = 3,
                   allow_lower_precision: bool = False, name: str | None = None) -> CheckResult:
    """Analytic Jacobian (``jac(x)`` or an array) vs :func:`numerical_jacobian`, elementwise.

    Any analytic shape with ``out_size*in_size`` elements (e.g. ``out + in`` shapes)
    is read as ``(out_size, in_size)``.
    """
    x = as_float64_host(x)
    problems = []
    num = numerical_jacobian(f, x, eps, stencil=stencil,
                             allow_lower_precision=allow_lower_precision)
    value = jac(_readonly(x)) if callable(jac) else jac
    ana = _analytic(value, num.shape, "jac(x)", allow_lower_precision, problems, reshape=True)
    return _compare("jacobian", name or _name(jac if callable(jac) else f), ana, num,
                    rtol=rtol, atol=atol, eps=eps, problems=problems)


def check_vjp(f, vjp, x, **options) -> CheckResult:
    """:func:`vjp_error`; AssertionError with the diagnostic unless it passed."""
    return _raise_if_failed(vjp_error(f, vjp, x, **options), "check_vjp")


def check_jvp(f, jvp, x, **options) -> CheckResult:
    """:func:`jvp_error`; AssertionError with the diagnostic unless it passed."""
    return _raise_if_failed(jvp_error(f, jvp, x, **options), "check_jvp")


def check_grad(f_scalar, grad, x, **options) -> CheckResult:
    """:func:`grad_error`; AssertionError with the diagnostic unless it passed."""
    return _raise_if_failed(grad_error(f_scalar, grad, x, **options), "check_grad")


def check_jacobian(jac, f, x, **options) -> CheckResult:
    """:func:`jacobian_error`; AssertionError with the diagnostic unless it passed."""
    return _raise_if_failed(jacobian_error(jac, f, x, **options), "check_jacobian")
