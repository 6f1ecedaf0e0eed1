"""Central (3-point) and 5-point finite differences, with a kink detector."""
from __future__ import annotations

import numpy as np

from refdtp.backend import to_host

from .core import _KINK_RTOL, _MACH, _T5, EPS, NondifferentiableError, _Evaluator, as_float64_host


def _detect_kink(ys: list, where: str, step: float) -> None:
    """Chainer's ``detect_nondifferentiable``: fit a quadratic to the 5 samples.

    Smooth f leaves a fit residual ~ step**3*|f'''|, far below 1e-3 of the samples'
    spread (~ step*|f'|); a kink inside the stencil leaves ~1-15% of the spread.
    The ``1e3*eps_mach*max|y|`` term (over all outputs: round-off follows the scale
    of the intermediates, not of one small output) absorbs noise, e.g. at an extremum.
    """
    y = np.stack([v.reshape(-1) for v in ys])  # (5, out_size)
    fin = np.isfinite(y)
    if np.any(fin != fin[2]):
        raise NondifferentiableError(f"{where}: f changes finiteness within +-{step:g}")
    y = y[:, fin.all(axis=0)]
    v = np.vander(_T5, 3)
    rms = np.sqrt(np.mean((y - v @ np.linalg.lstsq(v, y, rcond=None)[0]) ** 2, axis=0))
    spread = y.max(axis=0) - y.min(axis=0)
    limit = 1e3 * _MACH * np.max(np.abs(y), initial=0.0) + _KINK_RTOL * spread
    bad = (rms > limit) & (spread > 0)
    if bad.any():
        j = int(np.argmax(np.where(bad, rms - limit, -np.inf)))
        raise NondifferentiableError(
            f"{where}: kink within +-{step:g} at output element {j}; samples at offsets "
            f"{(_T5 * step).tolist()}: {y[:, j].tolist()}; quadratic-fit residual "
            f"{rms[j]:.3g} > {limit[j]:.3g}")


def _derivative(at, step: float, stencil: int, y0: np.ndarray, where: str) -> np.ndarray:
    """d/ds F(s) at 0; ``at(s)`` returns ``(F(s), offset actually applied)``."""
    if stencil == 3:
        (yp, sp), (ym, sm) = at(step), at(-step)
        return (yp - ym) / (sp - sm)
    if stencil != 5:
        raise ValueError(f"stencil must be 3 or 5, got {stencil}")
    ys = [at(c * step)[0] if c else y0 for c in _T5]
    _detect_kink(ys, where, step)
    return (ys[0] - 8.0 * ys[1] + 8.0 * ys[3] - ys[4]) / (6.0 * step)  # O(step**4) error


def _directional(ev, x, d, eps, stencil, y0, where) -> np.ndarray:
    """Derivative of f along the unit direction ``d``.

    The step is ``eps*||d * max(1, |x|)||``: exactly ``eps`` when all ``|x_i| <= 1``,
    and otherwise the per-coordinate rule max(1, |x_i|) averaged with weights
    d_i**2, so large inputs (and so large |f|) do not drown the difference in
    round-off. Rounding x + s*d moves each coordinate by <= ulp(x_i)/2, ~1e-10
    relative to the step: far below rtol, so the nominal offset s is used.
    """
    step = eps * float(np.linalg.norm((d * np.maximum(1.0, np.abs(x))).ravel()))
    return _derivative(lambda s: (ev(x + s * d), s), step, stencil, y0, where)


def _columns(ev, x, eps, stencil, y0):
    """Yield ``(i, df/dx_i)`` for every flat input coordinate, perturbing in place."""
    work = x.copy()
    flat = work.reshape(-1)  # a view: writes show in `work`
    for i in range(flat.size):
        orig = flat[i]
        # SciPy's _compute_absolute_step: the step grows with |x_i| so x_i +- h keeps
        # about the same number of significant bits whatever the scale of x_i.
        h = eps * max(1.0, abs(orig))

        def at(s, i=i, orig=orig):
            flat[i] = orig + s
            try:
                return ev(work), flat[i] - orig  # the exact offset applied (SciPy)
            finally:
                flat[i] = orig
        yield i, _derivative(at, h, stencil, y0, f"coordinate {i}")


def numerical_jvp(f, x, v, eps: float = EPS, *, stencil: int = 3,
                  allow_lower_precision: bool = False) -> np.ndarray:
    """``J(x) v`` by central differences along ``v/||v||``, times ``||v||``.

    For unit ``v`` and ``|x_i| <= 1`` this is ``(f(x + eps v) - f(x - eps v))/(2 eps)``;
    the step grows with large ``|x_i|`` as in :func:`_directional`.

    Args:
        f: float64 host array of shape ``in`` -> float64 array of shape ``out``.
        x, v: arrays of shape ``in``.

    Returns:
        float64 array of shape ``out``.
    """
    x, v = as_float64_host(x), as_float64_host(v, "v")
    if v.shape != x.shape:
        raise ValueError(f"v has shape {v.shape}, x has shape {x.shape}")
    ev = _Evaluator(f, allow_lower_precision)
    y0, nv = ev(x), float(np.linalg.norm(v.ravel()))
    if nv == 0:
        return np.zeros_like(y0)
    return _directional(ev, x, v / nv, eps, stencil, y0, "direction v") * nv


def numerical_jacobian(f, x, eps: float = EPS, *, stencil: int = 3,
                       allow_lower_precision: bool = False) -> np.ndarray:
    """Full Jacobian, column by column (2 or 4 evaluations of f per input coordinate).

    Args:
        f: float64 array of shape ``in`` -> float64 array of shape ``out``.
        x: shape ``in``; coordinate i is perturbed by ``eps*max(1, |x_i|)``.

    Returns:
        float64 array ``(out_size, in_size)`` over the C-order ravels of out and in.
    """
    x = as_float64_host(x)
    ev = _Evaluator(f, allow_lower_precision)
    y0 = ev(x)
    jac = np.empty((y0.size, x.size))
    for i, col in _columns(ev, x, eps, stencil, y0):
        jac[:, i] = col.reshape(-1)
    return jac


def numerical_grad(f_scalar, x, eps: float = EPS, *, stencil: int = 3,
                   allow_lower_precision: bool = False) -> np.ndarray:
    """Gradient of a scalar function: float64 array shaped like ``x``."""
    jac = numerical_jacobian(f_scalar, x, eps, stencil=stencil,
                             allow_lower_precision=allow_lower_precision)
    if jac.shape[0] != 1:
        raise ValueError(f"numerical_grad: f returned {jac.shape[0]} values, not a scalar")
    return jac.reshape(np.shape(to_host(x)))
