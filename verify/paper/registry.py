"""Experiments: published numbers, our measurement beside them, and a verdict per row.

An experiment is registered with :func:`experiment` on ``run(ctx) -> Result``.
A :class:`Row` holds our per-seed values of one quantity and the published
mean ± sd; its verdict is *within published spread*, *better* or *worse*. A
:class:`Finding` is a qualitative claim of the paper, measured: its verdict
says what was found ("holds" / "does not hold"), it is never a pass condition.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

VERDICTS = ("within published spread", "better", "worse", "no published value", "not measured")


def mean_sd(values) -> tuple:
    """(mean, sample sd, n) of the finite values; sd is NaN for n < 2."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return math.nan, math.nan, 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else math.nan), len(v)


def fmt(mean: float, sd: float = math.nan, digits: int = 1) -> str:
    """'mean ± sd' ('mean' when sd is NaN, 'n/a' when mean is)."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if sd is None or not math.isfinite(sd) else f" ± {sd:.{digits}f}")


@dataclass
class Row:
    """One quantity: our values over seeds beside the published mean ± sd.

    Attributes:
        quantity: what is compared, e.g. "L-DRL, conv_1 weight angle".
        ours: our value per seed.
        published: (mean, sd) or None; sd may be NaN when the paper gives none.
        lower_is_better: True for angles and losses, False for accuracies.
        floor: smallest tolerance (same unit), e.g. round-off of angles near 0.
        unit: printed after the numbers.
    """
    quantity: str
    ours: list
    published: tuple | None = None
    lower_is_better: bool = True
    floor: float = 0.0
    unit: str = ""
    digits: int = 1

    @property
    def verdict(self) -> str:
        """Within 2 combined sd (or ``floor``) of the published mean, else better / worse."""
        m, s, n = mean_sd(self.ours)
        if n == 0:
            return "not measured"
        if self.published is None:
            return "no published value"
        pm, ps = self.published
        spread = 2 * math.sqrt(sum(v * v for v in (ps, s) if v is not None and math.isfinite(v)))
        if abs(m - pm) <= max(spread, self.floor):
            return "within published spread"
        return "better" if (m < pm) == self.lower_is_better else "worse"

    def cells(self) -> tuple:
        m, s, n, digits = *mean_sd(self.ours), self.digits
        pub = "-" if self.published is None else fmt(*self.published, digits)
        ours = f"{fmt(m, s, digits)}{self.unit} (n={n})"
        return self.quantity, ours, pub + ("" if pub == "-" else self.unit), self.verdict


@dataclass
class Finding:
    """A qualitative claim of the paper and what we measured (never a pass condition)."""
    claim: str
    measured: str
    holds: bool | None

    @property
    def verdict(self) -> str:
        return {True: "holds", False: "does not hold", None: "undecided"}[self.holds]


@dataclass
class Result:
    """What an experiment returns: rows, findings, notes, and raw data for --json and plots."""
    rows: list = field(default_factory=list)
    findings: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    data: dict = field(default_factory=dict)


@dataclass
class Context:
    """How an experiment runs.

    Attributes:
        quick: the reduced CI protocol (labelled as such in every output).
        seeds: seeds (None: the protocol's).
        out: directory for runs, figures and JSON.
        address: Ray cluster address (None: $RAY_ADDRESS or a local Ray).
        data_dir: dataset folder.
        params: experiment options from ``--set KEY=VALUE`` (strings).
        download: allow dataset downloads.
    """
    quick: bool = False
    seeds: list | None = None
    out: str = "paper-results"
    address: str | None = None
    data_dir: str | None = None
    params: dict = field(default_factory=dict)
    download: bool = True

    def param(self, key: str, default, cast=None):
        """An option from --set, cast to the default's type (bool: true/false)."""
        if key not in self.params:
            return default
        raw = self.params[key]
        cast = cast or type(default)
        if cast is bool:
            return raw.lower() in ("1", "true", "yes")
        return cast(raw)


@dataclass(frozen=True)
class Experiment:
    """A registered experiment.

    Attributes:
        id: e.g. "lenet-angles".
        title: what it reproduces, in one line.
        source: paper section / figure / official code location.
        protocol: the published protocol, in words.
        quick_protocol: what --quick changes.
        params: {option: description} accepted with --set.
        run: ctx -> Result.
        plot: optional (result, directory) -> list of written paths.
    """
    id: str
    title: str
    source: str
    protocol: str
    quick_protocol: str
    params: dict
    run: Callable
    plot: Callable | None = None


EXPERIMENTS: dict = {}


def experiment(id: str, title: str, source: str, protocol: str, quick_protocol: str,
               params: dict | None = None, plot: Callable | None = None):
    """Decorator registering ``run(ctx) -> Result`` as an experiment."""
    def register(run):
        if id in EXPERIMENTS:
            raise ValueError(f"experiment {id!r} registered twice")
        EXPERIMENTS[id] = Experiment(id, title, source, protocol, quick_protocol, params or {}, run, plot)
        return run
    return register
