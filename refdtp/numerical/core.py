"""Shared pieces of the checker: results, float64 host copies, comparison and messages."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

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

def host64(x) -> np.ndarray:
    """A float64 NumPy array of ``x`` (from either backend); NaN and inf pass through."""
    return np.asarray(to_host(x), dtype=np.float64)


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
        v = host64(v).reshape(-1)
        if v.size != vec.size:
            raise ValueError(f"unflatten: expected {vec.size} values, got {v.size}")
        if not keys:  # np.split of an empty vector still gives one (empty) piece
            return {}
        return {k: p.reshape(a.shape) for k, p, a in zip(keys, np.split(v, splits), arrays, strict=True)}

    return vec, unflatten


def relative_error(a, b) -> float:
    """Norm-wise relative error ``||a - b|| / max(||a||, ||b||, tiny)``, in float64."""
    a = host64(a).ravel()
    b = host64(b).ravel()
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
