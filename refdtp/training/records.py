"""The files of a run directory other than checkpoints.

::

    RUN_DIR/config.json     the resolved Config (Config.from_dict reads it back)
    RUN_DIR/metrics.csv     one row per finished epoch (columns: see :func:`columns`)
    RUN_DIR/metrics.h5      the same columns as float64 datasets (NaN where absent)
    RUN_DIR/report.json     status, final and best accuracies, timings, device
    RUN_DIR/report.txt      the same in a few readable lines

Every file is built in memory and written by
:func:`~refdtp.training.storage.atomic_write` (temporary name, fsync, rename),
so a reader never sees half a file and a full disk raises
:class:`~refdtp.training.storage.StorageError` leaving the old file intact.
Metric rows are rebuilt from the checkpoint's history on resume, so the files
always match the checkpoint.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
from pathlib import Path

import h5py
import numpy as np

from ..config import Config
from .storage import atomic_write

CONFIG_NAME, REPORT_NAME, REPORT_TEXT = "config.json", "report.json", "report.txt"
METRICS_CSV, METRICS_H5 = "metrics.csv", "metrics.h5"

_names = itertools.count()


def write_json(path, obj) -> None:
    """``obj`` as indented JSON, atomically (NaN written as null)."""
    atomic_write(Path(path), (json.dumps(_nan_to_none(obj), indent=2, sort_keys=False) + "\n").encode())


def _nan_to_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def write_config(run_dir, cfg: Config) -> None:
    write_json(Path(run_dir) / CONFIG_NAME, cfg.to_dict())


def read_config(run_dir) -> Config:
    """The Config stored in ``RUN_DIR/config.json``."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a run directory")
    return Config.from_saved(json.loads(path.read_text()))


# -- metrics ------------------------------------------------------------------

def columns(rows: list) -> list:
    """Union of the rows' keys, in order of first appearance."""
    seen: dict = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def write_metrics(run_dir, rows: list) -> None:
    """Rewrite metrics.csv and metrics.h5 from all rows so far."""
    run_dir = Path(run_dir)
    names = columns(rows)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=names, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(run_dir / METRICS_CSV, text.getvalue().encode())
    atomic_write(run_dir / METRICS_H5, _metrics_h5(names, rows))


def _metrics_h5(names: list, rows: list) -> bytes:
    """metrics.h5 as bytes, built in memory (HDF5 never writes to the disk itself)."""
    with h5py.File(f"refdtp-metrics-{next(_names)}.h5", "w", driver="core", backing_store=False) as f:
        f.attrs["columns"] = json.dumps(names)
        for name in names:  # "a/b" names become group a, dataset b
            f.create_dataset(name, data=np.array([_number(r.get(name)) for r in rows], np.float64))
        f.flush()
        return f.id.get_file_image()


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def read_metrics(run_dir) -> dict:
    """{column: (epochs,) float64 array} from ``RUN_DIR/metrics.csv``."""
    path = Path(run_dir) / METRICS_CSV
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: no epoch of {run_dir} has finished yet")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    names = columns(rows)
    return {n: np.array([_number(r.get(n)) for r in rows], np.float64) for n in names}


# -- report -------------------------------------------------------------------

def write_report(run_dir, report: dict) -> None:
    """report.json and a short report.txt."""
    run_dir = Path(run_dir)
    write_json(run_dir / REPORT_NAME, report)
    atomic_write(run_dir / REPORT_TEXT, (report_text(report) + "\n").encode())


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def report_text(report: dict) -> str:
    """A few lines: status, what ran, final and best accuracies, time."""
    lines = [f"status: {report['status']}" + (f" ({report['message']})" if report.get("message") else ""),
             f"run: {report.get('preset') or 'custom'} / {report['algorithm']} on {report['dataset']}, "
             f"{report['epochs_done']}/{report['epochs']} epochs, {report['global_step']} steps, "
             f"backend {report['backend']} ({report['device']})"]
    final = report.get("final") or {}
    if final:
        parts = [f"test top-1 {_pct(final.get('test_top1'))}"]
        if "test_top5" in final:
            parts.append(f"top-5 {_pct(final['test_top5'])}")
        if "val_top1" in final:
            parts.append(f"val top-1 {_pct(final['val_top1'])}")
        parts.append(f"train acc {_pct(final.get('train_acc'))}")
        lines.append("final: " + ", ".join(parts))
    if report.get("best_test_top1") is not None:
        lines.append(f"best test top-1 {_pct(report['best_test_top1'])} (epoch {report['best_epoch']})")
    lines.append(f"time: {report['seconds']:.1f} s training; config hash {report['config_hash']}")
    return "\n".join(lines)
