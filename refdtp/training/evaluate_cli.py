"""``python -m refdtp.evaluate RUN_DIR``: test accuracy of a run's checkpoint.

Reads the checkpoint (default ``RUN_DIR/checkpoint.h5``; RUN_DIR may also be
the checkpoint file itself), verifies it, rebuilds the network from the config
stored inside it, and reports the test top-1 accuracy (top-5 too for 100 or
more classes) and loss, plus validation accuracy when the run held out a
validation split. The data is read from where the run read it (the
``data_dir`` and ``source`` stored in its config; ``--data-dir`` and
``--source`` override them), so evaluating never downloads into another
folder. A missing or corrupt ``checkpoint.h5`` falls back to
``checkpoint.prev.h5`` with a warning naming the file used. Exit status 0, or
2 with a one-line error when an option is out of
range, the checkpoint is missing or corrupt, the data cannot be found, or the
backend is unavailable.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from data_loaders import DataError, train_val_split

from ..backend import BackendError, get_xp
from ..config import Config, build_network
from .checkpoint import CHECKPOINT_NAME, CheckpointError
from .data import absolute, open_dataset
from .epochs import position
from .evaluation import EVAL_BATCH_SIZE, evaluate
from .overrides import ConfigError
from .resume import load_latest, restore_state
from .usage import OneLineParser, usage_error


def parse_args(argv=None):
    """Parsed ``python -m refdtp.evaluate`` arguments (SystemExit(2) after a one-line error)."""
    p = OneLineParser(prog="python -m refdtp.evaluate",
                      description="Test accuracy (top-1; top-5 for 100+ classes) of a run's "
                                  "checkpoint; exit 2 if it is missing or corrupt.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (or a checkpoint .h5 file)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help=f"checkpoint to evaluate (default RUN_DIR/{CHECKPOINT_NAME})")
    p.add_argument("--data-dir", metavar="D", help="dataset folder (default: the run's data_dir)")
    p.add_argument("--source", metavar="PATH",
                   help="dataset archive or extracted folder (default: the run's source)")
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
                        batch_size: int = EVAL_BATCH_SIZE, source=None) -> dict:
    """Verify a checkpoint and evaluate its forward weights.

    ``data_dir`` and ``source`` (None: the run's, from the config in the
    checkpoint) say where the dataset is read from.

    Returns:
        {"checkpoint", "epoch", "step", "global_step", "algorithm", "dataset",
         "test": {"loss", "top1"[, "top5"], "n"}[, "val": {...}]}; "epoch" and "step"
        count what was finished (2, 0: the end of epoch 2; see refdtp.training.epochs).

    Raises:
        CheckpointError, DataError, BackendError.
    """
    get_xp(backend)
    path, header, payload, note = load_latest(path)  # checkpoint.prev.h5 if checkpoint.h5 is refused
    if note:
        print(f"warning: {note}", file=sys.stderr, flush=True)
    try:
        cfg = Config.from_saved(header["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} holds a config this refdtp cannot read: {exc}") from None
    with open_dataset(cfg, download, data_dir=data_dir, source=source) as data:
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
    lines = [f"{result['checkpoint']}: {result['algorithm']} on {result['dataset']}, checkpoint "
             f"{position(result['epoch'], result['step'])} (global step {result['global_step']})"]
    for split in ("test", "val"):
        if split in result:
            r = result[split]
            top5 = f", top-5 {100 * r['top5']:.2f}%" if "top5" in r else ""
            lines.append(f"  {split}: top-1 {100 * r['top1']:.2f}% ({round(r['top1'] * r['n'])}/{r['n']})"
                         f"{top5}, loss {r['loss']:.4f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Parse ``argv``, evaluate, print; return the exit status."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse has printed the message
        return int(exc.code or 0)
    if args.batch_size < 1:
        return _error(f"--batch-size must be an integer >= 1, got {args.batch_size}")
    if args.source is not None and not Path(args.source).expanduser().exists():
        return _error(f"--source {args.source!r}: no such file or folder")
    path = checkpoint_path(args.run_dir, args.checkpoint)
    try:
        result = evaluate_checkpoint(path, data_dir=absolute(args.data_dir) or None, backend=args.backend,
                                     download=not args.no_download, batch_size=args.batch_size,
                                     source=absolute(args.source) or None)
    except (CheckpointError, ConfigError, DataError, BackendError) as exc:
        return _error(str(exc))
    print(json.dumps(result, indent=2) if args.json else describe(result))
    return 0


def _error(message: str) -> int:
    return usage_error(message)

