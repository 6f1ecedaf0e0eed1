"""The results of a sweep: summary.csv, summary.md, curves.png, alignment.png.

Everything is rebuilt from the run directories (report.json, metrics.csv,
sweep_status.json), so a summary is always consistent with what is on disk,
whatever happened to the driver.
"""
from __future__ import annotations

import csv
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..training.plot import _blocks, _new_figure, _save
from ..training.records import read_metrics
from ..training.storage import atomic_write
from .engine import STATUS_NAME, read_report

CSV_FIELDS = ("name", "group", "preset", "algorithm", "seed", "grid", "status", "exit_code", "message",
              "epochs_done", "epochs", "global_step", "final_test_top1", "final_test_top5",
              "best_test_top1", "final_train_loss", "minutes", "config_hash")


def _status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / STATUS_NAME).read_text())
    except (OSError, ValueError):
        return {}


def run_row(point, run_dir: Path) -> dict:
    """One summary row of a point from its run directory."""
    rep, st = read_report(run_dir) or {}, _status(run_dir)
    final = rep.get("final") or {}
    status = rep.get("status") or st.get("status") or "pending"
    if st.get("status") in ("failed", "refused") and st.get("exit_code") != rep.get("exit_code"):
        status = st["status"]
    seconds = rep.get("seconds")
    return {"name": point.name, "group": point.group, "preset": point.preset,
            "algorithm": point.algorithm, "seed": point.seed,
            "grid": " ".join(f"{k}={v}" for k, v in point.values.items()), "status": status,
            "exit_code": rep.get("exit_code", st.get("exit_code", "")) if status != "pending" else "",
            "message": (st.get("message") if status in ("failed", "refused") else rep.get("message")) or "",
            "epochs_done": rep.get("epochs_done", ""), "epochs": point.config.get("epochs", ""),
            "global_step": rep.get("global_step", ""), "final_test_top1": final.get("test_top1"),
            "final_test_top5": final.get("test_top5"), "best_test_top1": rep.get("best_test_top1"),
            "final_train_loss": final.get("train_loss"),
            "minutes": None if seconds is None else seconds / 60, "config_hash": point.config_hash}


def write_csv(path: Path, rows: list) -> None:
    """summary.csv, one row per run, written atomically."""
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows([{k: ("" if r[k] is None else r[k]) for k in CSV_FIELDS} for r in rows])
    atomic_write(path, text.getvalue().encode())


def mean_sd(values) -> tuple:
    """(mean, sample sd, n) of the finite values (sd NaN for n < 2)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return math.nan, math.nan, 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else math.nan), len(v)


def fmt_ms(values, scale: float = 1.0, digits: int = 2) -> str:
    """'mean ± sd' of the finite values times ``scale`` ('n/a' without any)."""
    m, s, n = mean_sd(values)
    if n == 0:
        return "n/a"
    return f"{scale * m:.{digits}f}" + ("" if n < 2 else f" ± {scale * s:.{digits}f}")


def groups_of(rows: list) -> dict:
    """{group: [rows]} in first-appearance order."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["group"], []).append(r)
    return out


def markdown(rows: list) -> str:
    """One row per configuration: n, mean ± sd of final/best top-1 (top-5), final train loss, minutes."""
    top5 = any(r["final_test_top5"] is not None for r in rows)
    head = ["configuration", "n done", "final test top-1 %", "best test top-1 %"]
    head += ["final test top-5 %"] if top5 else []
    head += ["final train loss", "minutes / run", "not completed"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for group, rs in groups_of(rows).items():
        done = [r for r in rs if r["status"] == "completed"]
        other = [f"{r['name']}: {r['status']}" for r in rs if r["status"] != "completed"]
        cells = [group, str(len(done)), fmt_ms([r["final_test_top1"] for r in done], 100),
                 fmt_ms([r["best_test_top1"] for r in done], 100)]
        cells += [fmt_ms([r["final_test_top5"] for r in done], 100)] if top5 else []
        cells += [fmt_ms([r["final_train_loss"] for r in done], 1, 4), fmt_ms([r["minutes"] for r in done]),
                  "; ".join(other) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _curves(run_dirs: list) -> list:
    out = []
    for d in run_dirs:
        try:
            out.append(read_metrics(d))
        except (FileNotFoundError, ValueError):
            pass
    return out


def _band(ax, series: list, color: str, label: str) -> None:
    """Mean ± sd over runs of per-epoch values (runs may have different lengths)."""
    n = max(len(s) for s in series)
    stack = np.full((len(series), n), np.nan)
    for i, s in enumerate(series):
        stack[i, :len(s)] = s
    with warnings.catch_warnings():  # epochs that only one run reached: sd of one value is NaN -> 0
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(stack, 0)
        sd = np.nanstd(stack, 0, ddof=1) if len(series) > 1 else np.zeros(n)
    epochs = np.arange(1, n + 1)
    ax.plot(epochs, mean, color=color, marker=".", label=f"{label} (n={len(series)})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.fill_between(epochs, mean - np.nan_to_num(sd), mean + np.nan_to_num(sd), color=color, alpha=0.2)


def plot_curves(groups: dict, path: Path):
    """Test top-1 per epoch, mean ± sd band per configuration; None if no epoch finished."""
    data = {g: [100 * m["test_top1"] for m in _curves(dirs) if "test_top1" in m]
            for g, dirs in groups.items()}
    data = {g: s for g, s in data.items() if s}
    if not data:
        return None
    fig, axes = _new_figure(1)
    ax = axes[0][0]
    for i, (g, series) in enumerate(data.items()):
        _band(ax, series, f"C{i % 10}", g)
    ax.set(title="test top-1 (mean ± sd over seeds)", xlabel="epoch", ylabel="%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_alignment(groups: dict, path: Path, prefix: str = "dtp_bp_angle/"):
    """Per-block DTP-vs-BP angle per epoch, mean ± sd per configuration; None without diagnostics."""
    metrics = {g: _curves(dirs) for g, dirs in groups.items()}
    runs = [{"metrics": m} for ms in metrics.values() for m in ms]
    blocks = _blocks(runs, prefix)
    if not blocks:
        return None
    ncols = min(3, len(blocks))
    fig, axes = _new_figure(ncols, -(-len(blocks) // ncols))
    flat = axes.ravel()
    for ax in flat[len(blocks):]:
        ax.set_visible(False)
    for ax, block in zip(flat, blocks, strict=False):
        for i, (g, ms) in enumerate(metrics.items()):
            series = [m[prefix + block] for m in ms if prefix + block in m]
            if series:
                _band(ax, series, f"C{i % 10}", g)
        ax.set(title=f"{block}: angle DTP vs BP", xlabel="epoch", ylabel="degrees")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return _save(fig, path)


def write_all(sweep_dir: Path, points: list, runs_dir: Path, plots: bool = True) -> list:
    """summary.csv and summary.md (and the figures); returns the rows."""
    rows = [run_row(p, runs_dir / p.name) for p in points]
    write_csv(sweep_dir / "summary.csv", rows)
    atomic_write(sweep_dir / "summary.md", markdown(rows).encode())
    if plots:
        groups: dict = {}
        for p in points:
            groups.setdefault(p.group, []).append(runs_dir / p.name)
        plot_curves(groups, sweep_dir / "curves.png")
        plot_alignment(groups, sweep_dir / "alignment.png")
    return rows
