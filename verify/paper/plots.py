"""Figures of the paper experiments (matplotlib's Agg canvas; no global state, no display)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .registry import mean_sd


def _figure(width: float, height: float = 3.9):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def angle_bars(path, groups, ours: dict, published: dict | None, title: str,
               ylabel: str = "angle to BP (degrees)") -> Path:
    """Grouped bars (one group per layer, one bar per setting): ours mean ± sd, published as markers.

    Args:
        groups: layer names.
        ours: {setting: [[value per seed] per layer]}.
        published: {setting: [(mean, sd) per layer]} or None.
    """
    fig, ax = _figure(max(5.0, 1.3 * len(groups) + 2.5))
    width = 0.8 / max(1, len(ours))
    pos = np.arange(len(groups))
    for i, (setting, per_layer) in enumerate(ours.items()):
        stats = [mean_sd(v) for v in per_layer]
        x = pos + (i - (len(ours) - 1) / 2) * width
        ax.bar(x, [m for m, _, _ in stats], width, yerr=[np.nan_to_num(s) for _, s, _ in stats],
               capsize=3, color=f"C{i}", alpha=0.8, label=f"{setting} (ours)")
        if published and setting in published:
            pub = published[setting]
            ax.errorbar(x, [m for m, _ in pub], yerr=[np.nan_to_num(s) for _, s in pub], fmt="k_",
                        ms=14, mew=2, capsize=0, elinewidth=1,
                        label="published" if i == 0 else None)
    ax.set_xticks(pos)
    ax.set_xticklabels(groups, fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.title.set_fontsize(10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def accuracy_bars(path, labels, values: list, title: str) -> Path:
    """One bar per configuration: mean ± sd of final test accuracy (values: per-seed lists, %)."""
    fig, ax = _figure(max(5.0, 0.9 * len(labels) + 2))
    stats = [mean_sd(v) for v in values]
    ax.bar(range(len(labels)), [m for m, _, _ in stats], yerr=[np.nan_to_num(s) for _, s, _ in stats],
           capsize=3, color=[f"C{i}" for i in range(len(labels))])
    for i, v in enumerate(values):
        ax.plot([i] * len(v), v, "k.", ms=4)
        if not len(v):  # every run diverged or failed: say so rather than leave an empty slot
            ax.text(i, 0, "no run\ncompleted", ha="center", va="bottom", fontsize=8)
    ax.set_xlim(-0.6, len(labels) - 0.4)  # empty (NaN) bars do not take part in autoscaling
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8, rotation=20)
    ax.set(ylabel="final test top-1 (%)", title=title)
    ax.title.set_fontsize(10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
