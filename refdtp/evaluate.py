"""``python -m refdtp.evaluate RUN_DIR``: test accuracy of a run's checkpoint.

Reads the checkpoint (default ``RUN_DIR/checkpoint.h5``; RUN_DIR may also be
the checkpoint file itself), verifies it, rebuilds the network from the config
stored inside it, and reports the test top-1 accuracy (top-5 too for 100 or
more classes) and loss, plus validation accuracy when the run held out a
validation split. Exit status 0, or 2 with a one-line error when the
checkpoint is missing or corrupt, the data cannot be found, or the backend is
unavailable.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_loaders import DataError, load_dataset, train_val_split

from .backend import BackendError, get_xp
from .config import Config, build_network
from .training.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from .training.evaluation import EVAL_BATCH_SIZE, evaluate
from .training.resume import restore_state


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m refdtp.evaluate",
                                description="Test accuracy (top-1; top-5 for 100+ classes) of a run's "
                                            "checkpoint; exit 2 if it is missing or corrupt.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (or a checkpoint .h5 file)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help=f"checkpoint to evaluate (default RUN_DIR/{CHECKPOINT_NAME})")
    p.add_argument("--data-dir", metavar="D", help="dataset folder")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE, metavar="B")
    p.add_argument("--no-download", action="store_true", help="never download a dataset")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p.parse_args(argv)


def checkpoint_path(run_dir, checkpoint=None) -> Path:
    """The file to evaluate: ``--checkpoint``, RUN_DIR itself if a file, else RUN_DIR/checkpoint.h5."""
    if checkpoint is not None:
        return Path(checkpoint)
    run_dir = Path(run_dir)
    return run_dir if run_dir.is_file() else run_dir / CHECKPOINT_NAME


def evaluate_checkpoint(path, *, data_dir=None, backend: str = "numpy", download: bool = True,
                        batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """Verify a checkpoint and evaluate its forward weights.

    Returns:
        {"checkpoint", "epoch", "step", "global_step", "algorithm", "dataset",
         "test": {"loss", "top1"[, "top5"], "n"}[, "val": {...}]}.

    Raises:
        CheckpointError, DataError, BackendError.
    """
    get_xp(backend)
    header, payload = load_checkpoint(path)
    try:
        cfg = Config.from_dict(header["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} holds a config this refdtp cannot read: {exc}") from None
    with load_dataset(cfg.dataset, data_dir, download=download) as data:
        net = build_network(cfg, data.image_shape, data.num_classes)
        state, _, _ = restore_state(path, header, payload, cfg, net, backend)
        kw = dict(normalization=cfg.normalization, backend=backend, dtype=cfg.dtype,
                  batch_size=batch_size)
        out = {"checkpoint": str(path), "epoch": state.epoch, "step": state.step,
               "global_step": state.global_step, "algorithm": cfg.algorithm, "dataset": cfg.dataset,
               "test": evaluate(net, state.W, data.test_images, data.test_labels, **kw)}
        if cfg.val_fraction > 0:
            _, val_idx = train_val_split(len(data.train_labels), cfg.val_fraction, cfg.seed)
            out["val"] = evaluate(net, state.W, data.train_images, data.train_labels,
                                  indices=val_idx, **kw)
    return out


def describe(result: dict) -> str:
    """One line per split."""
    lines = [f"{result['checkpoint']}: {result['algorithm']} on {result['dataset']}, "
             f"{result['epoch']} epochs + {result['step']} steps (global step {result['global_step']})"]
    for split in ("test", "val"):
        if split in result:
            r = result[split]
            top5 = f", top-5 {100 * r['top5']:.2f}%" if "top5" in r else ""
            lines.append(f"  {split}: top-1 {100 * r['top1']:.2f}% ({round(r['top1'] * r['n'])}/{r['n']})"
                         f"{top5}, loss {r['loss']:.4f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    path = checkpoint_path(args.run_dir, args.checkpoint)
    try:
        result = evaluate_checkpoint(path, data_dir=args.data_dir, backend=args.backend,
                                     download=not args.no_download, batch_size=args.batch_size)
    except (CheckpointError, DataError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(result, indent=2) if args.json else describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
