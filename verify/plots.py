"""PNG figures of the claims (matplotlib, Agg backend: no screen needed).

Each function writes one file and returns its path; the claims' ``plot``
functions call them on ``Outcome.data`` (``python -m verify.theory --plots DIR``).
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # before pyplot: works without a display
import matplotlib.pyplot as plt
import numpy as np


def _save(fig, directory: str, name: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finish(fig, ax, directory: str, name: str, xlabel: str, ylabel: str, title: str) -> str:
    """Labels, title, grid and legend, then save the figure; returns the PNG path."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=7)
    return _save(fig, directory, name)


def loglog(directory: str, name: str, series: dict, xlabel: str, ylabel: str, title: str,
           slopes: dict | None = None, reference_slope: float | None = None) -> str:
    """Log-log lines, one per series {label: (xs, ys)}, with fitted slopes in the legend.

    Args:
        slopes: {label: fitted slope} shown next to the label.
        reference_slope: draw a dashed guide line of this slope.
    """
    fig, ax = plt.subplots(figsize=(5.2, 3.9))
    for label, (xs, ys) in series.items():
        xs, ys = np.asarray(xs, float), np.abs(np.asarray(ys, float))
        text = label if not slopes or label not in slopes else f"{label} (slope {slopes[label]:.2f})"
        ax.loglog(xs, ys, "o-", label=text)
    if reference_slope is not None and series:
        xs, ys = (np.asarray(v, float) for v in next(iter(series.values())))
        guide = ys[0] * (xs / xs[0]) ** reference_slope
        ax.loglog(xs, guide, "k--", lw=0.8, label=f"slope {reference_slope:g}")
    return _finish(fig, ax, directory, name, xlabel, ylabel, title)


def curves(directory: str, name: str, series: dict, xlabel: str, ylabel: str, title: str,
           logy: bool = True, hline: float | None = None) -> str:
    """Lines {label: (xs, ys)} (e.g. angle vs iteration), optional threshold line."""
    fig, ax = plt.subplots(figsize=(5.2, 3.9))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, "o-", label=label, ms=3)
    if hline is not None:
        ax.axhline(hline, color="k", ls="--", lw=0.8, label=f"threshold {hline:g}")
    if logy:
        ax.set_yscale("log")
    ax.set_xscale("log")
    return _finish(fig, ax, directory, name, xlabel, ylabel, title)


def grouped_bars(directory: str, name: str, groups: list, series: dict, ylabel: str, title: str,
                 hline: float | None = None, logy: bool = False) -> str:
    """Grouped bars: one group per entry of ``groups`` (layers), one bar per series.

    Args:
        series: {label: [value per group]} (nan for a missing bar).
    """
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(groups) + 2), 3.9))
    width = 0.8 / max(1, len(series))
    pos = np.arange(len(groups))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(pos + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    if hline is not None:
        ax.axhline(hline, color="k", ls="--", lw=0.8, label=f"threshold {hline:g}")
    if logy:
        ax.set_yscale("log")
    ax.set_xticks(pos)
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, directory, name)
