"""The epoch loop of ``python -m refdtp.train``: train, evaluate, log, checkpoint.

Per epoch e (0-based index; printed and logged as e + 1):

1. the forward lr is ``schedule.lr_at(e)`` (stepped once per epoch, as
   PyTorch's schedulers; feedback lrs are constant, docs/algorithm.md §2.2);
2. the batches of ``data_loaders.iterate_batches(seed, epoch=e)`` (from the
   saved step when resuming), at most ``cfg.max_steps_per_epoch`` of them,
   each through :func:`refdtp.algorithms.train_step`;
3. test (and validation) accuracy, diagnostics if asked, one metrics row, a
   summary line, and a checkpoint.

Stops: Ctrl-C saves a mid-epoch checkpoint (status "interrupted"); a NaN/Inf
(:class:`~refdtp.algorithms.DivergenceError`) leaves the last good
checkpoint untouched (status "diverged"); running out of memory suggests a
smaller batch (status "out_of_memory"); a full or failing disk
(:class:`~refdtp.training.storage.StorageError`) keeps the last checkpoint that
was written (status "storage_error"). Every stop writes the report (on a full
disk, when it still fits). While a run is going, report.json says "running".
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_loaders import iterate_batches, num_batches, train_val_split
from data_loaders.transforms import normalization_stats

from .. import __version__
from ..algorithms import DivergenceError, TrainState, init_state, train_step
from ..backend import blas_threads, device_name, get_xp, is_out_of_memory
from ..config import Config, build_network
from ..optim import make_schedule
from ..threads import run_threads
from . import records
from .checkpoint import CHECKPOINT_NAME, CheckpointError, previous_path
from .data import open_dataset
from .diagnostics import diagnostics_row, fixed_batch
from .epochs import failing_step, position, schedule_warning
from .evaluation import evaluate
from .overrides import ConfigError
from .resume import find_checkpoint, fresh_progress, load_state, save_state
from .signals import defer_interrupts
from .storage import StorageError, remove_orphans

#: Exit status of ``python -m refdtp.train`` for each final run status.
EXIT_CODES = {"completed": 0, "diverged": 3, "out_of_memory": 4, "storage_error": 5, "interrupted": 130}


@dataclass
class RunOptions:
    """How to run a config (everything that does not change the trajectory).

    Attributes:
        run_dir: the run directory.
        backend: "numpy" or "cupy".
        data_dir: dataset folder (None: data_loaders' default).
        download: allow dataset downloads.
        resume: continue from the run directory's checkpoint.
        quiet: no progress bar (it is also off when stderr is not a terminal).
        preset: preset name, for the report.
        on_step: called as ``on_step(state, stats)`` after every batch (tests use it
            to interrupt or corrupt a run at a chosen step).
        threads: BLAS threads (``--threads``); None: chosen by
            :func:`~refdtp.threads.choose_blas_threads`.
    """
    run_dir: Path
    backend: str = "numpy"
    data_dir: str | None = None
    download: bool = True
    resume: bool = False
    quiet: bool = False
    preset: str | None = None
    on_step: Callable | None = None
    threads: int | None = None


@dataclass
class RunContext:
    """What stays fixed during a run."""
    cfg: Config
    opts: RunOptions
    net: object
    data: object
    train_idx: np.ndarray | None
    val_idx: np.ndarray | None
    steps_per_epoch: int
    schedule: object
    device: str
    diag_batch: object = None
    threads: tuple = (None, "")  # (BLAS threads, reason), see run_threads


@dataclass
class Live:
    """What changes: the train state, the epoch's running sums, the metrics rows."""
    state: TrainState
    progress: dict
    history: list = field(default_factory=list)
    saved_at: tuple = (-1, -1)  # (epoch, step) of the last checkpoint written
    saved_global_step: int = 0
    saved_rows: int = 0  # metrics rows the last checkpoint holds


def schedule_of(cfg: Config):
    """The forward learning-rate schedule of a config."""
    kwargs = {"cosine": dict(T_max=cfg.t_max, eta_min=cfg.eta_min),
              "step": dict(step_size=cfg.step_size, gamma=cfg.gamma)}.get(cfg.schedule, {})
    return make_schedule(cfg.schedule, cfg.lr, **kwargs)


def prepare(cfg: Config, opts: RunOptions) -> RunContext:
    """Check the backend, load the data, build and validate the network.

    Raises:
        BackendError, DataError, ConfigError: with messages meant for the user.
    """
    xp = get_xp(opts.backend)  # the backend's own clear error, before any data loads
    data = open_dataset(cfg, opts.download, data_dir=opts.data_dir)
    try:
        try:
            net = build_network(cfg, data.image_shape, data.num_classes)
            cfg.validate(net)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            normalization_stats(cfg.normalization, data.image_shape[0])
        except ValueError as exc:
            raise ConfigError(f"normalization {cfg.normalization!r} does not fit dataset {cfg.dataset!r}: "
                              f"{exc}") from None
        train_idx = val_idx = None
        n_train = len(data.train_labels)
        if cfg.val_fraction > 0:
            train_idx, val_idx = train_val_split(n_train, cfg.val_fraction, cfg.seed)
            if len(val_idx) == 0:
                raise ConfigError(f"val_fraction {cfg.val_fraction:g} holds out none of the {n_train} "
                                  f"training examples; use 0 or at least {1 / n_train:.3g}")
            n_train = len(train_idx)
        steps = num_batches(n_train, cfg.batch_size, drop_last=True)
        if steps == 0:
            raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {n_train} training examples")
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        ctx = RunContext(cfg, opts, net, data, train_idx, val_idx, steps, schedule_of(cfg),
                      device_name(xp))
        if cfg.diagnostics and cfg.algorithm != "bp":
            ctx.diag_batch = fixed_batch(cfg, data.test_images, data.test_labels, opts.backend)
        ctx.threads = run_threads(net, cfg.batch_size, opts.threads)
        return ctx
    except BaseException:
        data.close()
        raise


def _say(text: str) -> None:
    print(text, flush=True)


def start(ctx: RunContext) -> Live:
    """A fresh run (initial checkpoint written) or the resumed one."""
    cfg, run_dir = ctx.cfg, Path(ctx.opts.run_dir)
    ckpt = run_dir / CHECKPOINT_NAME
    for orphan in remove_orphans(run_dir):
        _say(f"removed {orphan}, a temporary file left by a process that no longer runs")
    if ctx.opts.resume:
        path = find_checkpoint(run_dir)
        state, progress, history = load_state(path, cfg, ctx.net, ctx.opts.backend)
        _say(f"resuming from {path} {position(state.epoch, state.step)} "
             f"(global step {state.global_step})")
        live = Live(state, progress, history, (state.epoch, state.step), state.global_step, len(history))
        with _noting_storage_errors(ctx, live):
            records.write_config(run_dir, cfg)
            if history:
                records.write_metrics(run_dir, history)
            records.write_report(run_dir, make_report(ctx, live, "running", ""))  # keeps the preset
        return live
    if ckpt.exists() or previous_path(ckpt).exists():
        raise CheckpointError(f"{run_dir} already holds a checkpoint; pass --resume to continue "
                              f"that run, or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    live = Live(init_state(cfg, ctx.net, ctx.opts.backend), fresh_progress())
    with _noting_storage_errors(ctx, live):
        records.write_config(run_dir, cfg)
        _save(ctx, live)
        # status "running" until the run ends; a resume after a crash reads the preset from it
        records.write_report(run_dir, make_report(ctx, live, "running", ""))
    return live


@contextlib.contextmanager
def _noting_storage_errors(ctx: RunContext, live: Live):
    """Add to a StorageError what is still intact and how to continue."""
    try:
        yield
    except StorageError as exc:
        exc.note = exc.note or _intact(ctx, live)
        raise


def _intact(ctx: RunContext, live: Live) -> str:
    if live.saved_at[0] < 0:
        return "no checkpoint of this run was written"
    return (f"the last checkpoint ({position(*live.saved_at)}) in {ctx.opts.run_dir} is intact; free "
            f"some space, then continue with --resume --out {ctx.opts.run_dir}")


def _save(ctx: RunContext, live: Live) -> None:
    with defer_interrupts():
        save_state(Path(ctx.opts.run_dir) / CHECKPOINT_NAME, ctx.cfg, live.state, live.progress,
                   live.history)
        live.saved_at = (live.state.epoch, live.state.step)
        live.saved_global_step, live.saved_rows = live.state.global_step, len(live.history)


def _bar(ctx: RunContext, epoch: int, start_step: int):
    disable = ctx.opts.quiet or not sys.stderr.isatty()
    return tqdm(total=ctx.steps_per_epoch, initial=start_step, disable=disable, leave=False,
                desc=f"epoch {epoch + 1}/{ctx.cfg.epochs}", unit="batch", dynamic_ncols=True)


def run_epoch(ctx: RunContext, live: Live) -> None:
    """The remaining batches of the current epoch, then its evaluation and checkpoint."""
    cfg, e, first = ctx.cfg, live.state.epoch, live.state.step
    lr = ctx.schedule.lr_at(e)
    batches = iterate_batches(ctx.data.train_images, ctx.data.train_labels, cfg.batch_size,
                              seed=cfg.seed, epoch=e, start_step=first, indices=ctx.train_idx,
                              augment=cfg.augment, normalization=cfg.normalization,
                              backend=ctx.opts.backend, dtype=np.dtype(cfg.dtype))
    with _bar(ctx, e, first) as bar:
        tick = time.perf_counter()
        for x, y in itertools.islice(batches, ctx.steps_per_epoch - first):
            state, stats = train_step(cfg, ctx.net, live.state, x, y, lr)
            now, p = time.perf_counter(), live.progress
            p = dict(loss_sum=p["loss_sum"] + stats["loss"], acc_sum=p["acc_sum"] + stats["accuracy"],
                     batches=p["batches"] + 1, images=p["images"] + int(x.shape[0]),
                     seconds=p["seconds"] + (now - tick))
            with defer_interrupts():  # a Ctrl-C checkpoint sees the step's state and sums together
                live.state, live.progress = state, p
            tick = now
            bar.update(1)
            bar.set_postfix({"loss": f"{p['loss_sum'] / p['batches']:.3f}",
                             "acc": f"{100 * p['acc_sum'] / p['batches']:.1f}%",
                             "img/s": f"{p['images'] / max(p['seconds'], 1e-9):.0f}"}, refresh=False)
            if ctx.opts.on_step is not None:
                ctx.opts.on_step(state, stats)
    finish_epoch(ctx, live, lr)


def finish_epoch(ctx: RunContext, live: Live, lr: float) -> None:
    """Evaluate, append the metrics row, checkpoint at (epoch + 1, 0), print the summary."""
    cfg, state, p = ctx.cfg, live.state, live.progress
    row = {"epoch": state.epoch + 1, "global_step": state.global_step, "lr": lr,
           "train_loss": p["loss_sum"] / max(p["batches"], 1),
           "train_acc": p["acc_sum"] / max(p["batches"], 1)}
    row.update(_evaluations(ctx, state.W))
    row.update(seconds=p["seconds"], images_per_s=p["images"] / max(p["seconds"], 1e-9))
    if ctx.diag_batch is not None:
        row.update(diagnostics_row(cfg, ctx.net, state.W, state.omega, ctx.diag_batch))
    with defer_interrupts():
        live.history = live.history + [row]
        live.state = dataclasses.replace(state, epoch=state.epoch + 1, step=0)
        live.progress = fresh_progress()
        _save(ctx, live)
        records.write_metrics(ctx.opts.run_dir, live.history)
    _say(summary_line(cfg, row))


def _evaluations(ctx: RunContext, W: dict) -> dict:
    kw = dict(normalization=ctx.cfg.normalization, backend=ctx.opts.backend, dtype=ctx.cfg.dtype)
    out = {}
    test = evaluate(ctx.net, W, ctx.data.test_images, ctx.data.test_labels, **kw)
    out.update({f"test_{k}": v for k, v in test.items() if k != "n"})
    if ctx.val_idx is not None:
        val = evaluate(ctx.net, W, ctx.data.train_images, ctx.data.train_labels,
                       indices=ctx.val_idx, **kw)
        out.update({f"val_{k}": v for k, v in val.items() if k != "n"})
    return out


def summary_line(cfg: Config, row: dict) -> str:
    """One line per epoch: train loss/acc, test (val) accuracy, lr, seconds."""
    parts = [f"epoch {row['epoch']}/{cfg.epochs}", f"train loss {row['train_loss']:.4f}",
             f"acc {100 * row['train_acc']:.2f}%", f"test top-1 {100 * row['test_top1']:.2f}%"]
    if "test_top5" in row:
        parts.append(f"top-5 {100 * row['test_top5']:.2f}%")
    if "val_top1" in row:
        parts.append(f"val top-1 {100 * row['val_top1']:.2f}%")
    if "dtp_bp_angle/total" in row:
        parts.append(f"DTP-BP angle {row['dtp_bp_angle/total']:.1f} deg")
    parts += [f"lr {row['lr']:.3g}", f"{row['seconds']:.1f} s"]
    return "  ".join(parts)


def train(cfg: Config, opts: RunOptions) -> dict:
    """Run (or resume) a config to ``cfg.epochs`` epochs; return the final report.

    Raises:
        BackendError, DataError, CheckpointError, ConfigError: before training starts.
    """
    ctx = prepare(cfg, opts)
    try:
        live = start(ctx)
        _say(header_line(ctx, live))
        warning = schedule_warning(cfg, ctx.schedule.lr_at)  # the lr rises again after t_max
        if warning:
            print(warning, file=sys.stderr, flush=True)
        status, message = "completed", ""
        try:
            # NaN/Inf are reported by DivergenceError instead
            with np.errstate(all="ignore"), blas_threads(ctx.threads[0]):
                while live.state.epoch < cfg.epochs:
                    run_epoch(ctx, live)
        except KeyboardInterrupt:
            with _noting_storage_errors(ctx, live):  # its checkpoint may not fit on the disk
                status, message = "interrupted", _interrupted(ctx, live)
        except DivergenceError as exc:
            status, message = "diverged", _diverged(ctx, live, exc)
        except StorageError as exc:
            status, message = "storage_error", f"{exc}; {_intact(ctx, live)}"
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            status, message = "out_of_memory", _out_of_memory(ctx, live, exc)
        report = make_report(ctx, live, status, message)
        try:
            with _noting_storage_errors(ctx, live):
                records.write_report(opts.run_dir, report)
        except StorageError:
            if status != "storage_error":  # else the message already says what happened
                raise
        _say(records.report_text(report))
        return report
    finally:
        ctx.data.close()


def header_line(ctx: RunContext, live: Live) -> str:
    cfg = ctx.cfg
    n = len(ctx.data.train_labels) if ctx.train_idx is None else len(ctx.train_idx)
    widths = cfg.hidden if cfg.network in ("mlp", "fwdtp_mlp", "fwdtp_mlp_bn") else cfg.channels
    return (f"{ctx.opts.preset or 'custom config'}: {cfg.algorithm} on {cfg.dataset} ({n} train, "
            f"{len(ctx.data.test_labels)} test), {cfg.network} {widths}"
            f", {cfg.epochs} epochs x {ctx.steps_per_epoch} steps of {cfg.batch_size}, "
            f"{ctx.opts.backend} on {ctx.device}; run dir {ctx.opts.run_dir}; "
            f"BLAS threads {ctx.threads[0]} ({ctx.threads[1]})")


def _interrupted(ctx: RunContext, live: Live) -> str:
    s = live.state
    if live.saved_at != (s.epoch, s.step):
        _save(ctx, live)
    return (f"interrupted {position(s.epoch, s.step)}; checkpoint saved, continue with "
            f"--resume --out {ctx.opts.run_dir}")


def _diverged(ctx: RunContext, live: Live, exc: DivergenceError) -> str:
    s, (e, st) = live.state, live.saved_at
    return (f"training diverged in {failing_step(s.epoch, s.step, ctx.cfg.epochs)} (global step "
            f"{s.global_step + 1}): {exc}. The last good checkpoint ({position(e, st)}) is unchanged; "
            f"try a smaller lr or beta")


def _out_of_memory(ctx: RunContext, live: Live, exc: BaseException) -> str:
    b = ctx.cfg.batch_size
    return (f"out of memory at batch size {b} on {ctx.device} ({type(exc).__name__}); try a smaller "
            f"--batch-size, e.g. --batch-size {max(b // 2, 1)} (the checkpoint "
            f"{position(*live.saved_at)} is intact)")


def make_report(ctx: RunContext, live: Live, status: str, message: str) -> dict:
    """The report dict written to report.json."""
    cfg, h, s = ctx.cfg, live.history, live.state
    epochs_done, step, global_step = s.epoch, s.step, s.global_step
    if status == "storage_error" and live.saved_at[0] >= 0:  # what the disk holds, not what was lost
        h, (epochs_done, step), global_step = h[:live.saved_rows], live.saved_at, live.saved_global_step
    final = {k: v for k, v in (h[-1] if h else {}).items()
             if k in ("train_loss", "train_acc", "test_loss", "test_top1", "test_top5",
                      "val_loss", "val_top1", "val_top5")}
    best = max(h, key=lambda r: r["test_top1"]) if h else None
    return {"status": status, "message": message, "exit_code": EXIT_CODES.get(status),
            "preset": ctx.opts.preset, "algorithm": cfg.algorithm, "network": cfg.network,
            "dataset": cfg.dataset, "epochs": cfg.epochs, "epochs_done": epochs_done,
            "step": step, "global_step": global_step,
            "backend": ctx.opts.backend, "device": ctx.device, "config_hash": cfg.config_hash(),
            "refdtp_version": __version__, "final": final,
            "best_test_top1": best["test_top1"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "seconds": sum(r["seconds"] for r in h) + live.progress["seconds"],
            "checkpoint": str(Path(ctx.opts.run_dir) / CHECKPOINT_NAME),
            "blas_threads": ctx.threads[0], "blas_threads_reason": ctx.threads[1]}
