"""Claims: statements of the papers, each measured and judged against a threshold.

A claim is registered with :func:`claim` on a function ``run(ctx) -> Outcome``.
The function measures numbers; the claim passes only if every one of its
:class:`Check` s passes. Nothing only prints (the failure mode of
scalingDTP's `theorem_test.py`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from refdtp.backend import VERIFY_DTYPE, get_xp, host_rng, to_backend, to_host

KINDS = ("exact", "first-order", "rate", "statistical", "angle")


@dataclass(frozen=True)
class Threshold:
    """A pass condition on a measured number: "<=", ">=", "<", ">" a bound, or "in" [lo, hi]."""
    op: str
    bound: object

    def holds(self, value: float) -> bool:
        if self.op == "measurement":  # information only: never a pass condition
            return True
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.op == "in":
            lo, hi = self.bound
            return lo <= value <= hi
        return {"<=": value <= self.bound, ">=": value >= self.bound,
                "<": value < self.bound, ">": value > self.bound}[self.op]

    def __str__(self) -> str:
        if self.op == "measurement":
            return "(measurement)"
        if self.op == "in":
            return f"in [{self.bound[0]:g}, {self.bound[1]:g}]"
        return f"{self.op} {self.bound:g}"


def jsonable(x, nonfinite=str):
    """x with dicts, lists and arrays turned into JSON types; a NaN or inf float becomes ``nonfinite(x)``."""
    if isinstance(x, dict):
        return {str(k): jsonable(v, nonfinite) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v, nonfinite) for v in x]
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return nonfinite(x)
    return x


def worst(values, pick=max) -> float:
    """``pick`` (max or min) of the numbers, NaN if any is NaN or there are none.

    Python's max/min silently skip a NaN that is not first; a claim must fail
    instead (a NaN never passes a threshold).
    """
    values = [float(v) for v in values]
    if not values or any(math.isnan(v) for v in values):
        return math.nan
    return pick(values)


def le(b):
    return Threshold("<=", b)


def ge(b):
    return Threshold(">=", b)


def lt(b):
    return Threshold("<", b)


def gt(b):
    return Threshold(">", b)


def within(lo, hi):
    return Threshold("in", (lo, hi))


def measurement():
    """No threshold: the number is reported as information (kind "measurement"), never judged."""
    return Threshold("measurement", None)


@dataclass
class Check:
    """One measured number and its threshold."""
    name: str
    value: float
    threshold: Threshold
    unit: str = ""

    @property
    def passed(self) -> bool:
        return self.threshold.holds(self.value)


@dataclass
class Outcome:
    """What a claim's run returns: its checks and any extra numbers (for --json/--plots)."""
    checks: list
    data: dict = field(default_factory=dict)
    skipped: str | None = None  # reason, when the claim cannot run here

    @property
    def passed(self) -> bool:
        return self.skipped is None and bool(self.checks) and all(c.passed for c in self.checks)


@dataclass
class Context:
    """Where and how claims run.

    Attributes:
        backend: "numpy" or "cupy": where the library's maths runs. Test data
            is drawn on the host (float64) and moved there; finite
            differences always run on the host.
        seed: base seed; claims derive their streams with :meth:`rng`.
        quick: the default, fast run (fewer samples/iterations).
    """
    backend: str = "numpy"
    seed: int = 0
    quick: bool = True
    dtype: np.dtype = VERIFY_DTYPE

    @property
    def xp(self):
        return get_xp(self.backend)

    def rng(self, *keys: int) -> np.random.Generator:
        return host_rng(self.seed, *keys)

    def to(self, a):
        """Host array -> the context's backend."""
        return to_backend(np.asarray(a), self.backend)

    def tree(self, d: dict):
        return {k: (self.tree(v) if isinstance(v, dict) else self.to(v)) for k, v in d.items()}

    @staticmethod
    def host(a):
        return to_host(a)


@dataclass(frozen=True)
class Claim:
    """A registered claim.

    Attributes:
        id: short identifier, e.g. "ldrl-linear-expectation".
        statement: the claim in words.
        source: theorem/section of Ernoult et al. 2022 or Meulemans et al. 2020, or "derived".
        kind: one of KINDS.
        run: ctx -> Outcome.
        plot: optional (outcome.data, directory) -> list of written PNG paths.
    """
    id: str
    statement: str
    source: str
    kind: str
    run: Callable
    plot: Callable | None = None


CLAIMS: dict = {}


def claim(id: str, statement: str, source: str, kind: str, plot: Callable | None = None):
    """Decorator registering ``run(ctx) -> Outcome`` as a claim."""
    if kind not in KINDS:
        raise ValueError(f"claim {id}: kind must be one of {KINDS}, got {kind!r}")

    def register(run):
        if id in CLAIMS:
            raise ValueError(f"claim {id!r} registered twice")
        CLAIMS[id] = Claim(id, statement, source, kind, run, plot)
        return run
    return register
