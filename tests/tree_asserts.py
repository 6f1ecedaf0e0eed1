"""Exact comparisons shared by the checkpoint, resume and fault tests: nested trees, whole runs."""
from pathlib import Path

import numpy as np

from refdtp.training.checkpoint import load_checkpoint

#: Metrics columns that measure time: they differ between identical runs.
TIMING = ("seconds", "images_per_s")


def assert_same_tree(a: dict, b: dict, where: str = "") -> None:
    """Assert that b has a's keys and, leaf by leaf, the same dtype and values (arrays) or the
    same type and value (scalars); ``where`` names the path in the message."""
    assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
    for k in a:
        if isinstance(a[k], dict):
            assert_same_tree(a[k], b[k], f"{where}/{k}")
        elif isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), f"{where}/{k} differs"
        else:
            assert type(a[k]) is type(b[k]) and a[k] == b[k], f"{where}/{k}: {a[k]!r} != {b[k]!r}"


def assert_same_run(ref_dir: Path, run_dir: Path) -> None:
    """The run in ``run_dir`` ended bit-identical to the one in ``ref_dir``: every weight and optimiser
    state, the position (epoch, step, global step) and every metric except the timings."""
    h0, p0 = load_checkpoint(Path(ref_dir) / "checkpoint.h5")
    h1, p1 = load_checkpoint(Path(run_dir) / "checkpoint.h5")
    for key in ("W", "omega", "forward_opt", "feedback_opt"):
        assert_same_tree(p0[key], p1[key], key)
    assert (h1["epoch"], h1["step"], h1["global_step"]) == (h0["epoch"], h0["step"], h0["global_step"])

    def untimed(rows):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    assert untimed(p1["history"]) == untimed(p0["history"]), "metrics differ from the uninterrupted run"
