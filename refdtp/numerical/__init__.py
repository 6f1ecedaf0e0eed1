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
from .checks import (
    check_grad,
    check_jacobian,
    check_jvp,
    check_vjp,
    grad_error,
    jacobian_error,
    jvp_error,
    vjp_error,
)
from .core import (
    ATOL,
    EPS,
    RTOL,
    CheckResult,
    NondifferentiableError,
    as_float64_host,
    assert_allclose,
    flat_params,
    host64,
    relative_error,
    unit_vector,
)
from .differences import numerical_grad, numerical_jacobian, numerical_jvp
from .rates import TaylorResult, check_taylor, fitted_slope, taylor_rates

__all__ = [
    "ATOL", "EPS", "RTOL", "CheckResult", "NondifferentiableError", "TaylorResult",
    "as_float64_host", "assert_allclose", "check_grad", "check_jacobian", "check_jvp",
    "check_taylor", "check_vjp", "fitted_slope", "flat_params", "grad_error", "host64", "jacobian_error",
    "jvp_error", "numerical_grad", "numerical_jacobian", "numerical_jvp", "relative_error",
    "taylor_rates", "unit_vector", "vjp_error",
]
