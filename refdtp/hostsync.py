"""Batched host syncs: one device -> host transfer per training step.

Every ``float(device scalar)`` or ``bool(device check)`` blocks the host until
the device has caught up (on CuPy: a synchronisation and a tiny copy each; a
SimpleVGG step had ~35: the loss, the accuracy, every block's feedback loss,
a finite-check per parameter, the label range, the input's finite check).
Inside ``with HostSync() as hs:``, :func:`host_value` and :func:`require` only
record; ``hs.resolve()`` stacks everything into one float64 array, copies it
once, fills the :class:`Pending` values and calls the failure callbacks of the
failed checks, in the order they were recorded. Outside a HostSync they
convert at once, as before.
"""
from __future__ import annotations

import contextvars

from .backend import array_module, to_host

_PENDING = contextvars.ContextVar("refdtp_pending_syncs", default=None)
#: Number of batched device -> host fetches done (read by tests and the benchmark).
FETCHES = [0]


class Pending:
    """A device scalar whose host value arrives with the step's single batched fetch."""
    __slots__ = ("value",)

    def __init__(self):
        self.value = None

    def get(self) -> float:
        if self.value is None:
            raise RuntimeError("Pending value read before HostSync.resolve()")
        return self.value


class HostSync:
    """Device scalars and checks of one step, fetched together in one transfer (see the module)."""

    def __init__(self):
        self._values, self._checks, self._token = [], [], None

    def __enter__(self):
        self._token = _PENDING.set(self)
        return self

    def __exit__(self, *exc):
        _PENDING.reset(self._token)
        return False

    def value(self, x) -> Pending:
        p = Pending()
        self._values.append((x, p))
        return p

    def require(self, ok, fail) -> None:
        self._checks.append((ok, fail))

    def resolve(self) -> None:
        items = [x for x, _ in self._values] + [ok for ok, _ in self._checks]
        if not items:
            return
        xp = array_module(*[i for i in items if hasattr(i, "shape")])
        host = to_host(xp.stack([xp.asarray(i, dtype=xp.float64).reshape(()) for i in items]))
        FETCHES[0] += 1
        n = len(self._values)
        for (_, p), v in zip(self._values, host[:n], strict=True):
            p.value = float(v)
        for (_, fail), ok in zip(self._checks, host[n:], strict=True):
            if not ok:
                fail()


def host_value(x):
    """float(x) now, or a :class:`Pending` filled by the active :class:`HostSync`."""
    hs = _PENDING.get()
    return float(x) if hs is None else hs.value(x)


def require(ok, fail) -> None:
    """Call ``fail()`` (which raises) unless the device boolean ``ok`` holds; deferred inside a HostSync."""
    hs = _PENDING.get()
    if hs is not None:
        hs.require(ok, fail)
    elif not bool(ok):
        fail()


def require_finite(x, where: str) -> None:
    """ValueError "<where>: input contains NaN or Inf" unless every entry of ``x`` is finite (deferrable)."""
    def fail():
        raise ValueError(f"{where}: input contains NaN or Inf")
    require(array_module(x).isfinite(x).all(), fail)
