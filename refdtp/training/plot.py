"""``python -m refdtp.plot RUN_DIR [RUN_DIR ...]``: learning and alignment curves (PNG).

Reads each run's ``metrics.csv`` and ``config.json`` and draws, overlaying the
runs (legend: run directory name and algorithm):

- ``learning_curves.png``: train loss, train accuracy, and test (dashed:
  validation) top-1 accuracy per epoch;
- ``alignment.png`` (runs trained with ``--set diagnostics=true``): per block,
  the angle between the scaled DTP update and the BP gradient (Theorem 4.3),
  and the Jacobian-matching error of the feedback (Theorem 4.2).

``--out`` is a directory (default: the run directory for one run, the current
directory for several) or a file name ending in .png (the alignment figure then
goes to ``<name>_alignment.png``). Uses matplotlib's Agg canvas directly, so it
needs no display and changes no global matplotlib state.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .records import read_config, read_metrics
from .usage import OneLineParser, usage_error

ALIGNMENT = (("dtp_bp_angle/", "angle DTP vs BP update (deg)"),
             ("jmc_error/", "JMC error ||J_G - J_F^T|| / ||J_F||"))
LINESTYLES = ("-", "--", ":", "-.")


def load_run(run_dir) -> dict:
    """{"label", "metrics": {column: array}} of one run directory."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    return {"label": f"{run_dir.resolve().name} ({cfg.algorithm})", "metrics": read_metrics(run_dir)}


def _new_figure(ncols: int, nrows: int = 1) -> tuple:
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def plot_learning_curves(runs: list, path) -> Path:
    """Train loss, train accuracy and test (val) accuracy vs epoch, one colour per run."""
    fig, axes = _new_figure(3)
    (loss_ax, train_ax, test_ax) = axes[0]
    for i, run in enumerate(runs):
        m, color = run["metrics"], f"C{i % 10}"
        epoch = m["epoch"]
        loss_ax.plot(epoch, m["train_loss"], color=color, marker=".", label=run["label"])
        train_ax.plot(epoch, 100 * m["train_acc"], color=color, marker=".", label=run["label"])
        test_ax.plot(epoch, 100 * m["test_top1"], color=color, marker=".", label=f"{run['label']} test")
        if "val_top1" in m:
            test_ax.plot(epoch, 100 * m["val_top1"], color=color, ls="--", label=f"{run['label']} val")
    for ax, title, ylabel in ((loss_ax, "train loss", "cross-entropy"),
                              (train_ax, "train accuracy", "%"), (test_ax, "test top-1", "%")):
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def _blocks(runs: list, prefix: str) -> list:
    names: dict = {}
    for run in runs:
        names.update(dict.fromkeys(k[len(prefix):] for k in run["metrics"] if k.startswith(prefix)))
    return [n for n in names if n != "total"]


def plot_alignment(runs: list, path):
    """Per-block DTP-vs-BP angle and JMC error vs epoch; None if no run logged them.

    Colour = block, line style = run.
    """
    if not any(k.startswith(ALIGNMENT[0][0]) for run in runs for k in run["metrics"]):
        return None
    fig, axes = _new_figure(len(ALIGNMENT))
    for ax, (prefix, title) in zip(axes[0], ALIGNMENT, strict=True):
        for j, block in enumerate(_blocks(runs, prefix)):
            for i, run in enumerate(runs):
                values = run["metrics"].get(prefix + block)
                if values is None or np.all(np.isnan(values)):
                    continue
                label = block if len(runs) == 1 else f"{block}, {run['label']}"
                ax.plot(run["metrics"]["epoch"], values, color=f"C{j % 10}",
                        ls=LINESTYLES[i % len(LINESTYLES)], marker=".", label=label)
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def output_paths(out, run_dirs: list) -> tuple[Path, Path]:
    """(learning-curve file, alignment file) for ``--out``."""
    if out is None:
        out = run_dirs[0] if len(run_dirs) == 1 else "."
    out = Path(out)
    if out.suffix.lower() == ".png":
        return out, out.with_name(f"{out.stem}_alignment.png")
    return out / "learning_curves.png", out / "alignment.png"


def main(argv=None) -> int:
    """Parse ``argv``, draw, and return the exit status (2: bad input, one ``error:`` line)."""
    p = OneLineParser(prog="python -m refdtp.plot",
                      description="Learning curves and (with diagnostics) alignment curves "
                                  "of one or more runs, overlaid, as PNG files.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to overlay")
    p.add_argument("--out", metavar="FILE_OR_DIR",
                   help="a .png file or a directory (default: the run directory for one run, "
                        "else the current directory)")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the message
        return int(exc.code or 0)
    try:
        runs = [load_run(d) for d in args.run_dirs]
    except (FileNotFoundError, ValueError) as exc:
        return usage_error(exc)
    learning, alignment = output_paths(args.out, args.run_dirs)
    print(f"wrote {plot_learning_curves(runs, learning)}")
    if plot_alignment(runs, alignment) is not None:
        print(f"wrote {alignment}")
    else:
        print("no alignment diagnostics in these runs (train with --set diagnostics=true)")
    return 0

