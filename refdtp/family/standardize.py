"""Parameter-free batch standardisation, FW-DTP's "BN" (Shibuya et al. 2023, "-BN" variants; authors' code
`utils.batch_normalization`).

Per feature j over the batch of B samples:

    y_bj = (x_bj - mu_j) / (s_j + eps_bn),  mu_j = (1/B) sum_b x_bj,
    s_j = sqrt( sum_b (x_bj - mu_j)^2 / (B - 1) )   (unbiased, as torch.std),

with eps_bn = 1e-12 and no learned scale or shift, no running statistics: the
statistics are always those of the batch at hand (also at test time, as in the
authors' code). The samples are coupled, so the Jacobian is over the whole
batch; :meth:`BatchStandardize.jvp` / :meth:`~BatchStandardize.vjp` are exact
for that map. With B = 1 the output is 0 and so are both derivatives.
"""
from __future__ import annotations

from ..backend import array_module
from ..ops.base import Op

#: eps_bn of the authors' `batch_normalization` (added to the standard deviation).
EPS_BN = 1e-12


def batch_stats(x) -> tuple:
    """(c, s, d): centred x - mu (B, n), unbiased std s (n,), divisor d = s + eps_bn (n,)."""
    xp = array_module(x)
    B = x.shape[0]
    c = x - x.mean(axis=0, keepdims=True)
    s = xp.sqrt((c * c).sum(axis=0) / max(B - 1, 1))
    return c, s, s + EPS_BN


def standardize(x):
    """y = (x - mu) / (s + eps_bn) over the batch axis 0. x: (B, n). Returns (B, n)."""
    c, _, d = batch_stats(x)
    return c / d


def _ds_coefficient(c, s, d, B: int):
    """c / (d^2 (B-1) s), the factor of the std term in both derivatives (0 where s = 0)."""
    xp = array_module(c)
    safe = xp.where(s > 0, s, xp.ones_like(s))
    return (s > 0).astype(c.dtype) * c / (d * d * max(B - 1, 1) * safe)


def standardize_jvp(cache, dx):
    """dy = (dx - mean_b dx)/d - c/(d^2 (B-1) s) * sum_b c_b dx_b (per feature; derived from
    ds = sum_b c_b dx_b / ((B-1) s), using sum_b c_b = 0)."""
    c, s, d = cache
    B = c.shape[0]
    return (dx - dx.mean(axis=0, keepdims=True)) / d - _ds_coefficient(c, s, d, B) * (c * dx).sum(axis=0)


def standardize_vjp(cache, dy):
    """gx = (dy - mean_b dy)/d - c/(d^2 (B-1) s) * sum_b c_b dy_b: the adjoint of
    :func:`standardize_jvp` (the same symmetric form)."""
    return standardize_jvp(cache, dy)


class BatchStandardize(Op):
    """The op y = standardize(x) on (B, n) activations (parameter-free, batch-coupled).

    Args:
        shape: per-sample shape (n,).
    """

    def __init__(self, shape: tuple):
        self.in_shape = self.out_shape = tuple(shape)
        if len(self.in_shape) != 1:
            raise ValueError(f"BatchStandardize: expects flat features, got per-sample shape {shape}")
        self.name = "BatchStandardize"

    def forward(self, p, x, route=None):
        c, s, d = batch_stats(x)
        return c / d, (c, s, d)

    def jvp(self, p, cache, dx):
        return standardize_jvp(cache, dx)

    def vjp(self, p, cache, dy):
        return standardize_vjp(cache, dy)

    def inverted(self) -> BatchStandardize:
        return BatchStandardize(self.in_shape)
