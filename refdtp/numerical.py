"""Finite-difference derivative checks: the yardstick for every hand-written Jacobian.

All checks run in float64 on the host, on a private copy of the input (Chainer
``numerical_grad``, PyTorch ``gradcheck``). A function under test takes one
float64 host array and returns a float64 array or scalar; functions of several
arrays are checked through closures or :func:`flat_params`. Cheapest first:

* dot-product tests :func:`check_vjp`, :func:`check_jvp`, directional
  :func:`check_grad`: O(1) evaluations per random direction (CIFAR-size layers);
* full matrices :func:`check_jacobian`, :func:`check_grad`: 2 evaluations per
  input coordinate (small layers);
* the Taylor test :func:`taylor_rates` (pyadjoint): scale-free convergence rates
  for claims "exact to first order in beta".

Each check has two faces: ``*_error`` returns a :class:`CheckResult` (numbers for
the ``verify/`` tables), ``check_*`` raises ``AssertionError`` with a Chainer-style
diagnostic. Tolerance rule: ``|a - n| <= atol + rtol*|n|`` elementwise and
``|a - n| <= atol + rtol*max(|a|, |n|)`` for scalar dot products, ``rtol = 1e-5``,
``atol = 1e-7*max(1, scale of n)``, never scaled by array size. Error budget at
``eps = 1e-6``: round-off ~ ``2e-16*|f|/eps = 2e-10*|f|``, truncation ~
``eps**2/6*|f'''|``; ~100x headroom, yet a derivative off by 5e-4 relative fails.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from refdtp.backend import to_host

#: Absolute step along a unit direction: PyTorch's float64 default, within 6x of the
#: round-off/truncation optimum cbrt(2.2e-16) ~ 6e-6 of a central difference (SciPy).
EPS = 1e-6
RTOL = 1e-5  #: default relative tolerance
ATOL = 1e-7  #: default absolute tolerance per unit of scale: atol = ATOL*max(1, max|n|)
_F64 = np.dtype(np.float64)
_TINY = np.finfo(np.float64).tiny
_MACH = np.finfo(np.float64).eps
_T5 = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])  # 5-point stencil offsets, in steps
_KINK_RTOL = 1e-3  # quadratic-fit residual / spread of the 5 samples that flags a kink


class NondifferentiableError(Exception):
    """The 5-point stencil straddles a kink (or a change of finiteness) of f."""


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Agreement of an analytic derivative (a) with finite differences (n).

    ``worst`` indexes the compared array: ``(direction,)`` for dot-product tests,
    ``(direction, *out_index)`` for JVPs, ``(row, col)`` for Jacobians; ``analytic``,
    ``numeric``, ``atol`` are the values there. ``ratio`` = max ``|a - n| / tol``
    (<= 1 is within tolerance). ``problems`` lists failed structural checks;
    ``passed`` needs ``ratio <= 1`` and no problems.
    """
    check: str
    name: str
    passed: bool
    max_abs: float
    max_rel: float
    norm_rel: float
    ratio: float
    worst: tuple
    analytic: float
    numeric: float
    atol: float
    rtol: float
    shape: tuple
    symmetric: bool = False
    eps: float | None = None
    seed: int | None = None
    problems: tuple = ()

    def report(self) -> str:
        """Chainer-style diagnostic: worst index, values, tolerance terms, eps, seed."""
        ref, ref_v = (("max(|a|, |n|)", max(abs(self.analytic), abs(self.numeric)))
                      if self.symmetric else ("|n|", abs(self.numeric)))
        lines = [
            f"{self.check} check {'passed' if self.passed else 'FAILED'} for {self.name!r} "
            f"(eps={self.eps}, seed={self.seed})",
            f"  compared shape {self.shape}, dtype float64; worst index {self.worst}",
            f"  analytic: {self.analytic!r}  numeric: {self.numeric!r}",
            f"  |a - n| = {abs(self.analytic - self.numeric):.6g}  vs  atol + rtol*{ref} = "
            f"{self.atol:.6g} + {self.rtol:g}*{ref_v:.6g} = {self.atol + self.rtol * ref_v:.6g}",
            f"  max_abs={self.max_abs:.6g} max_rel={self.max_rel:.6g} "
            f"norm_rel={self.norm_rel:.6g} error/tolerance={self.ratio:.6g}"]
        return "\n".join(lines + [f"  structural: {p}" for p in self.problems])

    __str__ = report


# ---------------------------------------------------------------- helpers

def as_float64_host(x, what: str = "x") -> np.ndarray:
    """Private finite float64 NumPy copy of ``x``; TypeError if complex, ValueError on NaN/inf."""
    host = to_host(x)
    if host.dtype.kind == "c":
        raise TypeError(f"{what}: complex input is not supported (dtype {host.dtype})")
    out = host.astype(np.float64, copy=True)
    if not np.all(np.isfinite(out)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(out))[0])
        raise ValueError(f"{what} contains NaN or inf (first at index {bad}: {out[bad]!r}); "
                         "finite differences need a finite point")
    return out


def _readonly(a: np.ndarray) -> np.ndarray:
    # Functions under test get read-only views: an in-place write would corrupt the
    # private copy the checker perturbs and restores, so it must fail loudly.
    v = a.view()
    v.flags.writeable = False
    return v


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


class _Evaluator:
    """Calls f; TypeError on a non-float64 result; f(x) finite; output shape fixed."""

    def __init__(self, f, allow_lower_precision: bool):
        self.f, self.name, self.allow, self.shape = f, _name(f), allow_lower_precision, None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = to_host(self.f(_readonly(x)))
        if y.dtype != _F64 and not self.allow:
            raise TypeError(f"f ({self.name}) returned dtype {y.dtype}; the checker needs "
                            "float64 (allow_lower_precision=True casts, loosen tolerances)")
        y = np.array(y, dtype=np.float64, copy=True)  # copy: f may reuse its buffers
        if self.shape is None:
            if not np.all(np.isfinite(y)):
                raise ValueError(f"f ({self.name}) is not finite at the checked point")
            self.shape = y.shape
        elif y.shape != self.shape:
            raise ValueError(f"f ({self.name}) changed output shape {self.shape} -> {y.shape}")
        return y


def unit_vector(rng: np.random.Generator, shape) -> np.ndarray:
    """Random unit-norm float64 array, every component >= 0.1/sqrt(n) in magnitude.

    Chainer's floor: a near-zero component would hide that coordinate's column of J
    from the dot-product test; the floor gives each coordinate at least a tenth of
    its fair share 1/sqrt(n). Clamping at ``c/sqrt(n)``, ``c = 0.1/sqrt(0.99)``,
    grows the norm by at most ``sqrt(1 + c**2)``, so the floor survives renormalising.
    """
    n = math.prod(tuple(shape))
    z = rng.standard_normal(n)
    if n:
        z /= np.linalg.norm(z)
        z = np.where(z < 0, -1.0, 1.0) * np.maximum(np.abs(z), 0.1 / math.sqrt(0.99 * n))
        z /= np.linalg.norm(z)
    return z.reshape(tuple(shape))


def flat_params(params: dict) -> tuple[np.ndarray, Callable[[np.ndarray], dict]]:
    """``(vector, unflatten)``: a dict of arrays as one float64 host vector (insertion order).

    ``unflatten(v)`` gives back a dict of float64 arrays of the original shapes
    (views of ``v``). Flatten a gradient dict with the same key order to compare.
    """
    keys = list(params)
    arrays = [as_float64_host(params[k], f"params[{k!r}]") for k in keys]
    splits = np.cumsum([a.size for a in arrays], dtype=np.int64)[:-1]
    vec = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0)

    def unflatten(v) -> dict:
        v = np.asarray(to_host(v), dtype=np.float64).reshape(-1)
        if v.size != vec.size:
            raise ValueError(f"unflatten: expected {vec.size} values, got {v.size}")
        return {k: p.reshape(a.shape) for k, p, a in zip(keys, np.split(v, splits), arrays)}

    return vec, unflatten


def relative_error(a, b) -> float:
    """Norm-wise relative error ``||a - b|| / max(||a||, ||b||, tiny)``, in float64."""
    a = np.asarray(to_host(a), dtype=np.float64).ravel()
    b = np.asarray(to_host(b), dtype=np.float64).ravel()
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, reported as such
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), _TINY))


def _compare(check, name, a, n, *, rtol, atol, symmetric=False, eps=None, seed=None,
             problems=()) -> CheckResult:
    """Apply the tolerance rule elementwise (see module docstring) and summarise."""
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if atol is None:
        atol = ATOL * max(1.0, float(np.max(np.abs(n), initial=0.0)))
    atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), n.shape)
    ref = np.maximum(np.abs(a), np.abs(n)) if symmetric else np.abs(n)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        err = np.abs(a - n)
        ratio = np.where(a == n, 0.0, err / (atol + rtol * ref))  # a == n: equal infinities
        rel = np.where(a == n, 0.0, err / np.maximum(ref, _TINY))
    ratio = np.where(np.isnan(ratio), np.inf, ratio)  # NaN never passes
    k = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), n.shape)) if n.size else ()
    at = (lambda v: float(v[k])) if n.size else (lambda v: 0.0)
    return CheckResult(
        check=check, name=name, passed=bool(np.all(ratio <= 1.0)) and not problems,
        max_abs=float(np.max(err, initial=0.0)), max_rel=float(np.max(rel, initial=0.0)),
        norm_rel=relative_error(a, n), ratio=float(np.max(ratio, initial=0.0)), worst=k,
        analytic=at(a), numeric=at(n), atol=at(atol), rtol=rtol, shape=n.shape,
        symmetric=symmetric, eps=eps, seed=seed, problems=tuple(dict.fromkeys(problems)))


def _raise_if_failed(result: CheckResult, face: str) -> CheckResult:
    if not result.passed:
        raise AssertionError(f"{face} failed\n{result.report()}")
    return result


def assert_allclose(actual, expected, *, rtol: float = RTOL, atol: float | None = None,
                    name: str = "array") -> None:
    """Chainer-style ``|actual - expected| <= atol + rtol*|expected|`` on host float64 copies.

    ``atol`` defaults to ``1e-7*max(1, max|expected|)``. The AssertionError names
    ``name``, the shapes and dtypes, the worst index, both values there, the
    absolute/relative error and each tolerance term.
    """
    a, e = to_host(actual), to_host(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape mismatch, actual {a.shape} vs expected {e.shape}")
    r = _compare("allclose", name, a, e, rtol=rtol, atol=atol)
    if not r.passed:
        d = abs(r.analytic - r.numeric)
        raise AssertionError(
            f"{name}: not close (shape {a.shape}, dtype {a.dtype} vs {e.dtype})\n"
            f"  worst index {r.worst}: actual {r.analytic!r}, expected {r.numeric!r}\n"
            f"  abs error {d:.6g}, rel error {d / max(abs(r.numeric), _TINY):.6g}\n"
            f"  tolerance atol + rtol*|expected| = {r.atol:.6g} + {rtol:g}*"
            f"{abs(r.numeric):.6g} = {r.atol + rtol * abs(r.numeric):.6g}\n"
            f"  max_abs={r.max_abs:.6g} norm_rel={r.norm_rel:.6g}")


# ---------------------------------------------------------------- finite differences

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


# ---------------------------------------------------------------- checks

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


# ---------------------------------------------------------------- Taylor test, rates

@dataclasses.dataclass(frozen=True)
class TaylorResult:
    """Taylor-test remainders and rates ``log(R[k]/R[k+1]) / log(eps[k]/eps[k+1])``.

    ``min_rate``: smallest R1 rate over pairs whose smaller remainder is above the
    round-off ``floor``; ``at_noise_floor``: every R1 below it (f linear along h).
    """
    eps: tuple
    r0: tuple
    r1: tuple
    rates0: tuple
    rates1: tuple
    min_rate: float
    floor: float
    at_noise_floor: bool


def taylor_rates(f, x, h, df_h, eps_list=None, *,
                 allow_lower_precision: bool = False) -> TaylorResult:
    """pyadjoint Taylor test: R0 = ||f(x+e h) - f(x)|| (rate 1), R1 = ||... - e df_h|| (rate 2).

    ``h`` has the shape of ``x``; ``df_h`` (the derivative under test applied to h)
    that of ``f(x)``, scalar or array. ``eps_list`` defaults to ``0.01/2**k``, k < 5.
    """
    x, h, df_h = as_float64_host(x), as_float64_host(h, "h"), as_float64_host(df_h, "df_h")
    eps_list = [0.01 / 2 ** k for k in range(5)] if eps_list is None else list(eps_list)
    ev = _Evaluator(f, allow_lower_precision)
    y0 = ev(x)
    r0, r1 = [], []
    for e in eps_list:
        d = ev(x + e * h) - y0
        r0.append(float(np.linalg.norm(d.ravel())))
        r1.append(float(np.linalg.norm((d - e * df_h).ravel())))
    with np.errstate(divide="ignore", invalid="ignore"):
        e_ = np.asarray(eps_list)
        rates0 = np.log(np.divide(r0[:-1], r0[1:])) / np.log(e_[:-1] / e_[1:])
        rates1 = np.log(np.divide(r1[:-1], r1[1:])) / np.log(e_[:-1] / e_[1:])
    # Remainders below the round-off of f itself are noise: their rates mean nothing.
    floor = float(1e3 * _MACH * max(1.0, float(np.linalg.norm(y0.ravel()))))
    valid = np.asarray(r1[1:]) > floor
    return TaylorResult(
        eps=tuple(eps_list), r0=tuple(r0), r1=tuple(r1), rates0=tuple(rates0.tolist()),
        rates1=tuple(rates1.tolist()),
        min_rate=float(rates1[valid].min()) if valid.any() else math.inf,
        floor=floor, at_noise_floor=bool(max(r1) <= floor))


def check_taylor(f, x, h, df_h, eps_list=None, *, min_rate: float = 1.9,
                 name: str | None = None, **options) -> TaylorResult:
    """:func:`taylor_rates`; AssertionError if the R1 rate is below ``min_rate``."""
    r = taylor_rates(f, x, h, df_h, eps_list, **options)
    if not (r.at_noise_floor or r.min_rate >= min_rate):
        rows = "\n".join(f"  eps={e:.4g}  R0={a:.4g}  R1={b:.4g}"
                         for e, a, b in zip(r.eps, r.r0, r.r1))
        raise AssertionError(
            f"check_taylor failed for {name or _name(f)!r}: first-order remainder rate "
            f"{r.min_rate:.3f} < {min_rate} (R1 rates {[round(v, 3) for v in r.rates1]}, "
            f"R0 rates {[round(v, 3) for v in r.rates0]}): df_h is not the derivative\n{rows}")
    return r


def fitted_slope(xs, ys) -> float:
    """Least-squares slope of ``log|ys|`` on ``log xs`` (e.g. error ~ beta**slope).

    Raises ValueError for fewer than 2 points or non-positive/non-finite values.
    """
    xs = np.asarray(to_host(xs), dtype=np.float64).ravel()
    ys = np.abs(np.asarray(to_host(ys), dtype=np.float64)).ravel()
    if xs.size != ys.size or xs.size < 2:
        raise ValueError(f"fitted_slope needs >= 2 paired points, got {xs.size} and {ys.size}")
    if not (np.all(xs > 0) and np.all(ys > 0) and np.all(np.isfinite(xs * ys))):
        raise ValueError("fitted_slope needs positive finite xs and non-zero finite ys")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])
