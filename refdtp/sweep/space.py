"""The search space of ``python -m refdtp.sweep search``: its syntax and how a sample becomes ``--set``.

A dimension is ``NAME=KIND:LOW:HIGH``:

* ``KIND`` is ``log`` (log-uniform float), ``float`` (uniform float) or ``int`` (uniform integer);
  ``LOW < HIGH`` (``LOW > 0`` for ``log``).
* ``NAME`` is a scalar numeric Config field (``lr``, ``beta``, ``feedback_init_scale``...), or
  ``FIELD_scale`` for a per-block list field (``feedback_lr_scale``, ``feedback_sigma_scale``...):
  the sampled factor multiplies every entry of the preset's list (after ``--set``), so the shape of
  the per-block schedule is kept and one number is searched.

A space file (``--space-file FILE.json``) is a JSON object ``{"NAME": "KIND:LOW:HIGH", ...}``;
``--space`` items are added to it (a name given twice is refused).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from .spec import SpecError

KINDS = ("log", "float", "int")
SCALE_SUFFIX = "_scale"
#: Config fields; a name that is one (``feedback_init_scale``) is searched directly, never as a factor.
CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(Config))


@dataclass(frozen=True)
class Dimension:
    """One searched dimension.

    Attributes:
        name: the name in the space (``lr`` or ``feedback_lr_scale``).
        kind: "log", "float" or "int".
        low, high: the bounds (inclusive).
    """
    name: str
    kind: str
    low: float
    high: float

    @property
    def field(self) -> str:
        """The Config field it sets (``feedback_lr`` for ``feedback_lr_scale``)."""
        return self.name[:-len(SCALE_SUFFIX)] if self.is_scale else self.name

    @property
    def is_scale(self) -> bool:
        """True for ``FIELD_scale`` (a factor on a list field); a Config field of that name is itself."""
        return self.name.endswith(SCALE_SUFFIX) and self.name not in CONFIG_FIELDS

    def text(self) -> str:
        """The ``KIND:LOW:HIGH`` form (as stored with the study)."""
        fmt = (lambda v: str(int(v))) if self.kind == "int" else repr
        return f"{self.kind}:{fmt(self.low)}:{fmt(self.high)}"

    def suggest(self, trial):
        """Sample this dimension from an Optuna trial."""
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "log")

    def distribution(self):
        """The Optuna distribution (for ``study.ask(fixed_distributions)``)."""
        import optuna
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high))
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.kind == "log")


def _number(text: str, where: str, integer: bool) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise SpecError(f"{where}: {text!r} is not {'an integer' if integer else 'a number'}") from None
    if not math.isfinite(value):
        raise SpecError(f"{where}: bounds must be finite, got {text!r}")
    return value


def parse_dimension(name: str, text: str) -> Dimension:
    """``("lr", "log:1e-4:1e-1")`` -> Dimension; SpecError with a one-line message otherwise."""
    name, where = name.strip(), f"--space {name.strip()}={text}"
    if not name.isidentifier():
        raise SpecError(f"{where}: expected NAME=KIND:LOW:HIGH with a Config field name")
    parts = str(text).strip().split(":")
    if len(parts) != 3:
        raise SpecError(f"{where}: expected KIND:LOW:HIGH, KIND one of {', '.join(KINDS)}")
    kind = parts[0].strip().lower()
    if kind not in KINDS:
        raise SpecError(f"{where}: unknown kind {parts[0]!r}; choose one of {', '.join(KINDS)}")
    low, high = (_number(p.strip(), where, kind == "int") for p in parts[1:])
    if not low < high:
        raise SpecError(f"{where}: LOW must be < HIGH")
    if kind == "log" and low <= 0:
        raise SpecError(f"{where}: a log range needs LOW > 0")
    return Dimension(name, kind, float(low), float(high))


def parse_space(items: list, space_file: str | None = None) -> list:
    """The dimensions of ``--space`` items and the optional JSON space file, in the given order."""
    pairs = []
    if space_file:
        try:
            data = json.loads(Path(space_file).read_text())
        except (OSError, ValueError) as exc:
            raise SpecError(f"--space-file {space_file}: unreadable ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise SpecError(f"--space-file {space_file}: expected a JSON object "
                            f"{{\"NAME\": \"KIND:LOW:HIGH\"}}")
        pairs += list(data.items())
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise SpecError(f"--space {item!r}: expected NAME=KIND:LOW:HIGH")
        pairs.append((name, text))
    dims = [parse_dimension(n, t) for n, t in pairs]
    names = [d.name for d in dims]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpecError(f"--space: {dup} given more than once")
    fields = [d.field for d in dims]
    both = sorted({f for f in fields if fields.count(f) > 1})
    if both:
        raise SpecError(f"--space: {both} searched both directly and as a _scale")
    if not dims:
        raise SpecError("no --space given: a search needs at least one dimension")
    return dims


def check_against_config(dims: list, config: dict, set_keys: list) -> None:
    """Refuse dimensions that name no numeric Config field (or a list field without ``_scale``)."""
    for d in dims:
        if d.field in set_keys:
            raise SpecError(f"conflicting options: {d.field} is searched and set by --set")
        if d.field not in config:
            raise SpecError(f"--space {d.name}: {d.field!r} is not a Config field")
        base = config[d.field]
        if d.is_scale:
            ok = isinstance(base, list) and base and all(isinstance(v, int | float) for v in base)
            if not ok:
                raise SpecError(f"--space {d.name}: {d.field} is not a non-empty list of numbers "
                                f"(it is {base!r}); search it directly as {d.field}=KIND:LOW:HIGH")
        elif isinstance(base, list):
            raise SpecError(f"--space {d.name}: {d.field} is a per-block list; search a factor on it "
                            f"as {d.field}{SCALE_SUFFIX}=KIND:LOW:HIGH")
        elif isinstance(base, bool) or not isinstance(base, int | float):
            raise SpecError(f"--space {d.name}: {d.field} is not numeric (it is {base!r})")


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def to_sets(dims: list, params: dict, config: dict) -> list:
    """The ``KEY=VALUE`` overrides of a sample (a ``_scale`` multiplies the base list)."""
    out = []
    for d in dims:
        v = params[d.name]
        if d.is_scale:
            out.append(f"{d.field}=[{','.join(_fmt(b * v) for b in config[d.field])}]")
        elif isinstance(config[d.field], int) and d.kind == "int":
            out.append(f"{d.field}={int(v)}")
        else:
            out.append(f"{d.field}={_fmt(float(v))}")
    return out


def space_dict(dims: list) -> dict:
    """{name: "KIND:LOW:HIGH"}: what the study stores and compares."""
    return {d.name: d.text() for d in dims}
