"""What a sweep is: the spec, its grid of points, and the resolved config of each point.

A spec is presets x algorithms x grid values x seeds. Each point becomes the
argument list of ``python -m refdtp.train`` (``--preset P --set k=v ...
--seed S --out SWEEP_DIR/runs/<name>``), so a sweep run is exactly what that
command makes; the config of a point is resolved by the training CLI's own
parser (:func:`refdtp.training.cli.resolve`), so unknown keys and wrong types
are refused before anything runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..training import cli as train_cli

#: Spec fields that define the runs; changing any of them under an existing SWEEP_DIR is refused.
TRAJECTORY_FIELDS = ("presets", "algorithms", "seeds", "grid", "sets", "epochs", "steps", "backend",
                     "source")


class SpecError(ValueError):
    """A sweep spec that cannot run (the message names the problem)."""


@dataclass
class SweepSpec:
    """A sweep: every field that defines its runs.

    Attributes:
        presets: training presets (``--preset``), at least one.
        algorithms: algorithms to set on every preset (empty: each preset's own).
        seeds: seeds (empty: each preset's own seed).
        grid: [(key, [value strings])], the Cartesian product is swept.
        sets: fixed ``key=value`` overrides applied to every run.
        epochs, steps: ``--epochs`` / ``--steps`` of every run (None: the preset's).
        backend: "numpy" or "cupy".
        source: dataset source file passed as ``--source`` (None: none).
    """
    presets: list
    algorithms: list = field(default_factory=list)
    seeds: list = field(default_factory=list)
    grid: list = field(default_factory=list)
    sets: list = field(default_factory=list)
    epochs: int | None = None
    steps: int | None = None
    backend: str = "numpy"
    source: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["grid"] = [[k, list(v)] for k, v in self.grid]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SweepSpec:
        d = {k: d[k] for k in TRAJECTORY_FIELDS if k in d}
        d["grid"] = [(k, list(v)) for k, v in d.get("grid", [])]
        return cls(**d)


@dataclass
class Point:
    """One run of the sweep.

    Attributes:
        name: run directory name under ``SWEEP_DIR/runs``.
        group: the configuration label (the name without the seed).
        preset, algorithm, seed, values: what defines the point.
        argv: the ``refdtp.train`` arguments, without ``--out``/``--resume``/``--quiet``.
        config: the resolved Config as a dict.
        config_hash: its trajectory hash.
    """
    name: str
    group: str
    preset: str
    algorithm: str | None
    seed: int | None
    values: dict
    argv: list
    config: dict = field(default_factory=dict)
    config_hash: str = ""


def split_values(text: str) -> list:
    """``"a,b,[1,2]"`` -> ["a", "b", "[1,2]"]: commas inside brackets do not split."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch in "[(") - (ch in "])")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def parse_grid(items: list) -> list:
    """``["lr=0.01,0.02", "beta=0.5"]`` -> [("lr", ["0.01", "0.02"]), ("beta", ["0.5"])]."""
    grid, seen = [], set()
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"--grid {item!r}: expected KEY=V1,V2,...")
        values = [v for v in split_values(text) if v]
        if not values:
            raise SpecError(f"--grid {key}: empty list of values")
        if len(set(values)) != len(values):
            raise SpecError(f"--grid {key}: repeated value in {values}")
        if key in seen:
            raise SpecError(f"--grid {key} given twice")
        seen.add(key)
        grid.append((key, values))
    return grid


def check_conflicts(spec: SweepSpec) -> None:
    """Refuse options that set the same thing twice."""
    set_keys = [s.partition("=")[0].strip() for s in spec.sets]
    for s in spec.sets:
        if "=" not in s or not s.partition("=")[0].strip():
            raise SpecError(f"--set {s!r}: expected KEY=VALUE")
    grid_keys = [k for k, _ in spec.grid]
    owners = {"algorithm": ("--algorithms", bool(spec.algorithms)), "seed": ("--seeds", bool(spec.seeds)),
              "epochs": ("--epochs", spec.epochs is not None),
              "max_steps_per_epoch": ("--steps", spec.steps is not None)}
    for key in set_keys + grid_keys:
        flag, given = owners.get(key, (None, False))
        if given:
            raise SpecError(f"conflicting options: {key} is set by {flag} and by --set/--grid")
    both = sorted(set(set_keys) & set(grid_keys))
    if both:
        raise SpecError(f"conflicting options: {both} both in --set and --grid")
    dup = sorted({k for k in set_keys if set_keys.count(k) > 1})
    if dup:
        raise SpecError(f"conflicting options: --set {dup} given more than once")
    for name, values in (("--presets", spec.presets), ("--algorithms", spec.algorithms),
                         ("--seeds", spec.seeds)):
        if len(set(values)) != len(values):
            raise SpecError(f"{name}: repeated value in {values}")
    if not spec.presets:
        raise SpecError("no --preset given: a sweep needs at least one")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", str(text)).strip("_") or "x"


def point_argv(spec: SweepSpec, preset: str, algorithm, seed, values: dict) -> list:
    """The ``refdtp.train`` arguments of one point (no --out)."""
    sets = list(spec.sets) + [f"{k}={v}" for k, v in values.items()]
    if algorithm is not None:
        sets.append(f"algorithm={algorithm}")
    argv = ["--preset", preset, "--backend", spec.backend]
    if sets:
        argv += ["--set", *sets]
    for flag, value in (("--seed", seed), ("--epochs", spec.epochs), ("--steps", spec.steps),
                        ("--source", spec.source)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def expand(spec: SweepSpec) -> list:
    """The points of the grid, in a stable order (preset, algorithm, grid values, seed)."""
    check_conflicts(spec)
    keys = [k for k, _ in spec.grid]
    combos = list(itertools.product(*[v for _, v in spec.grid])) or [()]
    points = []
    for preset, algorithm, combo, seed in itertools.product(
            spec.presets, spec.algorithms or [None], combos, spec.seeds or [None]):
        values = dict(zip(keys, combo, strict=True))
        parts = [preset] + ([algorithm] if algorithm else []) + [f"{k}={v}" for k, v in values.items()]
        group = _slug("-".join(parts))
        points.append(Point(name=group, group=group, preset=preset, algorithm=algorithm, seed=seed,
                            values=values, argv=point_argv(spec, preset, algorithm, seed, values)))
    return points


def resolve_points(points: list, runs_dir: Path) -> list:
    """Fill each point's config through the training CLI's parser; name runs by seed.

    Raises:
        SpecError: a point's arguments are refused by ``refdtp.train`` (message of the CLI).
    """
    for p in points:
        if p.preset not in train_cli.PRESETS:
            raise SpecError(f"unknown preset {p.preset!r}; choose one of {sorted(train_cli.PRESETS)}")
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = train_cli.build_parser().parse_args(p.argv + ["--out", str(runs_dir / p.name)])
        except SystemExit:
            last = (err.getvalue().strip().splitlines() or [""])[-1]
            raise SpecError(f"refdtp.train refuses {' '.join(p.argv)}: {last}") from None
        try:
            cfg = train_cli.resolve(args)[0]
        except Exception as exc:  # noqa: BLE001 (ConfigError, ValueError: one-line messages)
            raise SpecError(f"{p.group}: {exc}") from None
        p.config, p.config_hash = cfg.to_dict(), cfg.config_hash()
        p.seed = cfg.seed
        p.algorithm = p.algorithm or cfg.algorithm
        p.name = _slug(f"{p.group}-seed{cfg.seed}")
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise SpecError(f"two points resolve to the same run {dup}; check --seeds and --grid")
    return points


def spec_differences(old: dict, new: dict) -> list:
    """'key: old -> new' for every trajectory field that differs."""
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in TRAJECTORY_FIELDS
            if old.get(k) != new.get(k)]
