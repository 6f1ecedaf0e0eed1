"""Command line of ``python -m refdtp.train``.

Exit status: 0 done (or nothing to do), 2 bad input (unknown preset or key,
wrong type, a value outside its declared domain, unusable ``--out``, missing
dataset, unusable backend, refused checkpoint), 3 the run diverged, 4 out of
memory, 5 no space left or an I/O error on the run directory's disk (the last
checkpoint is intact), 130 interrupted (a checkpoint was saved). Every input is checked
before anything is written; a bad one gives one ``error:`` line on stderr.

Epochs and steps are numbered from 1 in every message (see
:mod:`refdtp.training.epochs`). ``--epochs`` beyond the cosine schedule's
``t_max + 1`` is allowed (the paper's runs do it) but prints a warning on
stderr before training starts, since the learning rate then rises again.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from data_loaders import DataError

from ..backend import BackendError
from ..config import Config
from .checkpoint import CheckpointError
from .data import absolute
from .overrides import ConfigError, apply_overrides
from .presets import DESCRIPTIONS, PRESETS, get_preset
from .records import REPORT_NAME, read_config
from .run import EXIT_CODES, RunOptions, train
from .storage import StorageError
from .usage import OneLineParser, usage_error

DEFAULT_PRESET = "demo"

EXAMPLES = """examples:
  python -m refdtp.train --preset demo --threads 1            # offline, under a minute on a CPU
  python -m refdtp.train --preset cifar10-ldrl --backend cupy # the paper's CIFAR-10 L-DRL run
  python -m refdtp.train --preset cifar10-bp --backend cupy   # its backprop baseline
  python -m refdtp.train --preset cifar10-ldrl --steps 50 --epochs 1 --set channels=[32,32,64,64,128]
  python -m refdtp.train --preset demo --set feedback_sigma=[0.2,0.08] diagnostics=true
  python -m refdtp.train --preset cifar10-ldrl --source ~/Downloads/cifar-10-python.tar.gz
  python -m refdtp.train --out runs/demo-seed0 --resume --epochs 12   # continue or extend a run
  python -m refdtp.evaluate runs/demo-seed0
  python -m refdtp.plot runs/demo-seed0 runs/other --out figures/"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m refdtp.train`` (its errors: one line, exit 2)."""
    p = OneLineParser(
        prog="python -m refdtp.train", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a network with L-DRL (or BP, DTP, TP, DRL): checkpoints every epoch, "
                    "--resume, metrics, report. Run without arguments for an overview.")
    p.add_argument("--preset", choices=sorted(PRESETS), metavar="NAME",
                   help=f"hyper-parameter preset (default {DEFAULT_PRESET}; with --resume and no "
                        f"preset, the run directory's config.json); one of: {', '.join(sorted(PRESETS))}")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy",
                   help="numpy (CPU) or cupy (NVIDIA GPU)")
    p.add_argument("--epochs", type=int, metavar="N", help="number of epochs (a resumed run may extend)")
    p.add_argument("--batch-size", type=int, metavar="B", help="training batch size")
    p.add_argument("--steps", type=int, metavar="N",
                   help="at most N batches per epoch (sets max_steps_per_epoch; 0 = all)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of every random stream")
    p.add_argument("--data-dir", metavar="D",
                   help="dataset folder (default $REFDTP_DATA or ~/.cache/refdtp); kept in the run's "
                        "config, so evaluate and --resume read the same data")
    p.add_argument("--source", metavar="PATH",
                   help="your copy of the dataset: the official archive (.tar.gz) or its extracted "
                        "folder (CIFAR, MNIST, Fashion-MNIST, ImageNet 32x32); kept in the run's config")
    p.add_argument("--no-download", action="store_true", help="never download a dataset")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/<preset>-seed<S>)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR's last checkpoint")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override any Config field, e.g. lr=0.01 feedback_sigma=[0.4,0.4,0.2,0.2,0.08]")
    p.add_argument("--threads", type=int, metavar="N",
                   help="BLAS threads (threadpoolctl); default: 1 for small networks, else the cores "
                        "not busy with other processes (shown in the start line and report.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return p


def _previous_preset(run_dir: Path):
    try:
        return json.loads((run_dir / REPORT_NAME).read_text()).get("preset")
    except (OSError, ValueError):
        return None


def resolve(args) -> tuple[Config, str | None, Path]:
    """(config, preset name, run directory) of parsed arguments; ConfigError if unusable."""
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be an integer >= 1, got {args.threads}")
    if args.out is not None:
        _check_path_text("--out", args.out)
        check_run_dir(Path(args.out))
    if args.resume and args.preset is None:
        if args.out is None:
            raise ConfigError("--resume needs --out RUN_DIR (or the --preset whose default run "
                              "directory to continue)")
        try:
            cfg = read_config(args.out)
        except FileNotFoundError as exc:
            raise ConfigError(f"cannot resume: {exc}") from None
        except (OSError, TypeError, ValueError) as exc:  # unreadable, not JSON, unknown keys
            raise ConfigError(f"cannot resume: {args.out}/config.json is unusable: {exc}") from None
        preset = _previous_preset(Path(args.out))
    else:
        preset = args.preset or DEFAULT_PRESET
        cfg = get_preset(preset)
    cfg = apply_overrides(cfg, args.set)
    flags = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
             "max_steps_per_epoch": args.steps, "data_dir": _data_path("--data-dir", args.data_dir),
             "source": _data_path("--source", args.source, must_exist=True)}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    try:
        cfg.validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.out is not None:
        return cfg, preset, Path(args.out)
    run_dir = Path("runs") / f"{preset or 'run'}-seed{cfg.seed}"
    check_run_dir(run_dir)
    return cfg, preset, run_dir


def _data_path(option: str, path, must_exist: bool = False):
    """``path`` made absolute (so the stored config works from any folder); None stays None."""
    if path is None:
        return None
    _check_path_text(option, path)
    if must_exist and not Path(path).expanduser().exists():
        raise ConfigError(f"{option} {path!r}: no such file or folder")
    return absolute(path)


def _check_path_text(option: str, text: str) -> None:
    if not text:
        raise ConfigError(f"{option} must not be empty")
    if "\0" in text:
        raise ConfigError(f"{option} {text!r}: a path cannot contain a NUL character")
    try:
        names = [os.fsencode(part) for part in Path(text).parts]
    except UnicodeEncodeError:
        raise ConfigError(f"{option} {text!r}: not representable as a file name here") from None
    if any(len(name) > 255 for name in names):
        raise ConfigError(f"{option} {text[:60]!r}...: a file name is longer than 255 bytes")


def check_run_dir(run_dir: Path) -> None:
    """ConfigError unless ``run_dir`` is, or can be created as, a directory (nothing is written)."""
    _check_path_text("--out", str(run_dir))
    try:
        _probe_run_dir(run_dir)
    except OSError as exc:  # e.g. a folder on the way that cannot be read
        raise ConfigError(f"--out {str(run_dir)!r}: {exc.strerror or exc}") from None


def _probe_run_dir(run_dir: Path) -> None:
    if run_dir.exists():
        if not run_dir.is_dir():
            raise ConfigError(f"--out {str(run_dir)!r} is a file, not a run directory")
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise ConfigError(f"--out {str(run_dir)!r}: no permission to write in it")
        return
    for parent in run_dir.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--out {str(run_dir)!r}: {str(parent)!r} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"--out {str(run_dir)!r}: no permission to create it in {str(parent)!r}")
            return


def config_summary(cfg: Config) -> str:
    """The resolved config in a few lines."""
    sched = {"cosine": f"cosine T_max {cfg.t_max}, eta_min {cfg.eta_min:g}",
             "step": f"step {cfg.step_size}, gamma {cfg.gamma:g}", "constant": "constant"}[cfg.schedule]
    arch = cfg.channels if cfg.network in ("simple_vgg", "small_convnet") else cfg.hidden
    lines = [f"{cfg.algorithm} on {cfg.dataset} (normalization {cfg.normalization}, "
             f"{'with' if cfg.augment else 'no'} augmentation, val_fraction {cfg.val_fraction:g}), "
             f"network {cfg.network} {arch if cfg.network != 'lenet' else ''}".rstrip(),
             f"{cfg.epochs} epochs, batch {cfg.batch_size}"
             + (f", {cfg.max_steps_per_epoch} steps per epoch" if cfg.max_steps_per_epoch else "")
             + f", seed {cfg.seed}, {cfg.dtype}",
             f"forward: {cfg.optimizer} lr {cfg.lr:g} ({sched}), momentum {cfg.momentum:g}, "
             f"weight decay {cfg.weight_decay:g}, beta {cfg.beta:g}"]
    if cfg.algorithm != "bp":
        lines.append(f"feedback: iterations {cfg.feedback_iterations}, sigma {cfg.feedback_sigma}, "
                     f"lr {cfg.feedback_lr}, momentum {cfg.feedback_momentum:g}")
    return "\n".join("  " + line for line in lines)


def overview() -> str:
    """What ``python -m refdtp.train`` without arguments prints."""
    width = max(map(len, PRESETS))
    presets = "\n".join(f"  {name:<{width}}  {DESCRIPTIONS.get(name, '')}" for name in sorted(PRESETS))
    cfg = get_preset(DEFAULT_PRESET)
    return (f"python -m refdtp.train: nothing was run (no arguments given).\n\n"
            f"presets (--preset NAME):\n{presets}\n\n"
            f"with any argument and no --preset it trains '{DEFAULT_PRESET}', which resolves to:\n"
            f"{config_summary(cfg)}\n  run directory runs/{DEFAULT_PRESET}-seed{cfg.seed}, backend numpy\n\n"
            f"{EXAMPLES}\n\nall options: python -m refdtp.train --help")


def _error(message: str) -> int:
    return usage_error(message)


def main(argv=None, on_step=None) -> int:
    """Parse ``argv``, run, and return the exit status (``on_step``: test hook, see RunOptions)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(overview())
        return 0
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the message
        return int(exc.code or 0)
    try:
        cfg, preset, run_dir = resolve(args)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        opts = RunOptions(run_dir=run_dir, backend=args.backend, data_dir=cfg.data_dir or None,
                          download=not args.no_download, resume=args.resume, quiet=args.quiet,
                          preset=preset, on_step=on_step, threads=args.threads)
        report = train(cfg, opts)  # BLAS threads: --threads, else chosen per run (RunOptions.threads)
    except (ConfigError, CheckpointError, DataError, BackendError) as exc:
        return _error(str(exc))
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C while saving
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_CODES["interrupted"]
    except StorageError as exc:  # full disk before or after the epochs (during them: the report)
        _error(str(exc))
        return EXIT_CODES["storage_error"]
    if report["status"] != "completed":
        print(f"{report['status']}: {report['message']}", file=sys.stderr, flush=True)
    return EXIT_CODES[report["status"]]
