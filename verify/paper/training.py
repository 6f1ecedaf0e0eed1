"""Training experiments through the sweep layer: run a sweep, read back its runs."""
from __future__ import annotations

import csv
from pathlib import Path

from refdtp.training.records import read_metrics

ANGLE = "dtp_bp_angle/"


def run_sweep(ctx, name: str, presets: list, seeds: list, sets: list, epochs: int, steps: int,
              algorithms=(), grid=()) -> list:
    """``python -m refdtp.sweep`` into ``ctx.out/name``; returns its summary rows with run directories.

    Raises:
        ValueError: the sweep refused its spec (message printed by the sweep).
        KeyboardInterrupt: it was interrupted (rerun the same command to continue).
    """
    from refdtp.sweep.cli import main as sweep_main
    out = Path(ctx.out) / name
    argv = ["--out", str(out), "--seeds", *map(str, seeds), "--epochs", str(epochs), "--steps", str(steps)]
    for p in presets:
        argv += ["--preset", p]
    if algorithms:
        argv += ["--algorithms", *algorithms]
    if grid:
        argv += ["--grid", *grid]
    if sets:
        argv += ["--set", *sets]
    if ctx.data_dir:
        argv += ["--data-dir", str(Path(ctx.data_dir).resolve())]
    if ctx.address:
        argv += ["--address", ctx.address]
    code = sweep_main(argv)
    if code == 1:  # a run failed (e.g. its worker was killed): rerunning resumes it from its checkpoint
        code = sweep_main(argv)
    if code == 2:
        raise ValueError(f"the sweep refused its spec (python -m refdtp.sweep {' '.join(argv)})")
    if code == 130:
        raise KeyboardInterrupt
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["run_dir"] = out / "runs" / r["name"]
    return rows


def number(text):
    """A CSV cell as a float, or None when empty or not a number."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def final_angles(run_dir: Path) -> dict:
    """{block: DTP-vs-BP angle at the last logged epoch} of a run with diagnostics ({} if none)."""
    try:
        m = read_metrics(run_dir)
    except (FileNotFoundError, ValueError):
        return {}
    return {k[len(ANGLE):]: float(v[-1]) for k, v in m.items() if k.startswith(ANGLE) and len(v)}


def by_group(rows: list, key: str = "group") -> dict:
    """{rows[i][key]: [rows]} in first-appearance order."""
    out: dict = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return out


def completed(rows: list) -> list:
    """The rows of runs that completed."""
    return [r for r in rows if r["status"] == "completed"]


def accuracies(rows: list) -> list:
    """Final test top-1 (%) of the completed runs."""
    values = [number(r["final_test_top1"]) for r in completed(rows)]
    return [100 * v for v in values if v is not None]


def status_text(rows: list) -> str:
    """'name status (message)' of every run that did not complete, joined by '; '."""
    bad = [f"{r['name']} {r['status']}" + (f" ({r['message'][:120]})" if r["message"] else "")
           for r in rows if r["status"] != "completed"]
    return "; ".join(bad)
