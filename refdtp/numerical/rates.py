"""The Taylor test (pyadjoint) and log-log slopes, for "first order in beta" claims."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .core import _MACH, _Evaluator, _name, as_float64_host, host64


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
                         for e, a, b in zip(r.eps, r.r0, r.r1, strict=True))
        raise AssertionError(
            f"check_taylor failed for {name or _name(f)!r}: first-order remainder rate "
            f"{r.min_rate:.3f} < {min_rate} (R1 rates {[round(v, 3) for v in r.rates1]}, "
            f"R0 rates {[round(v, 3) for v in r.rates0]}): df_h is not the derivative\n{rows}")
    return r


def fitted_slope(xs, ys) -> float:
    """Least-squares slope of ``log|ys|`` on ``log xs`` (e.g. error ~ beta**slope).

    Raises ValueError for fewer than 2 points or non-positive/non-finite values.
    """
    xs = host64(xs).ravel()
    ys = np.abs(host64(ys)).ravel()
    if xs.size != ys.size or xs.size < 2:
        raise ValueError(f"fitted_slope needs >= 2 paired points, got {xs.size} and {ys.size}")
    if not (np.all(xs > 0) and np.all(ys > 0) and np.all(np.isfinite(xs * ys))):
        raise ValueError("fitted_slope needs positive finite xs and non-zero finite ys")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])
