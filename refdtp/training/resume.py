"""A :class:`~refdtp.algorithms.TrainState` to and from a checkpoint.

Resuming loads every parameter and optimiser buffer bit for bit and restarts
the batch stream at the saved (epoch, step), so a resumed run computes exactly
what an uninterrupted run computes (every random stream of refdtp and
data_loaders is a function of (seed, purpose, epoch, step, block)).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .. import __version__
from ..algorithms import TrainState, init_state
from ..backend import to_backend
from ..config import Config
from ..networks import Network
from ..optim import flatten
from .checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    check_like,
    check_optimizer_state,
    config_differences,
    load_checkpoint,
    previous_path,
    save_checkpoint,
)
from .epochs import position


def fresh_progress() -> dict:
    """Running sums of an epoch in progress."""
    return {"loss_sum": 0.0, "acc_sum": 0.0, "batches": 0, "images": 0, "seconds": 0.0}


def save_state(path, cfg: Config, state: TrainState, progress: dict, history: list) -> Path:
    """Checkpoint ``state`` with the epoch's running sums and the metrics history."""
    header = {"config": cfg.to_dict(), "config_hash": cfg.config_hash(), "epoch": state.epoch,
              "step": state.step, "global_step": state.global_step, "rng_seed": cfg.seed}
    payload = {"W": state.W, "omega": state.omega, "forward_opt": state.forward_opt,
               "feedback_opt": state.feedback_opt, "progress": progress, "history": history}
    return save_checkpoint(path, header, payload)


def find_checkpoint(run_dir) -> Path:
    """``RUN_DIR/checkpoint.h5``, or ``checkpoint.prev.h5`` when a save was cut short."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if path.is_file():
        return path
    if previous_path(path).is_file():
        return previous_path(path)
    raise CheckpointError(f"nothing to resume: no {CHECKPOINT_NAME} in {run_dir}")


def _to_backend_tree(tree, backend: str):
    """Arrays moved to ``backend``; Python scalars (optimiser step counts) kept."""
    if isinstance(tree, dict):
        return {k: _to_backend_tree(v, backend) for k, v in tree.items()}
    return to_backend(tree, backend) if isinstance(tree, np.ndarray) else tree


def saved_config(path, header: dict) -> Config:
    """The config stored in a checkpoint, checked against the config hash stored beside it."""
    try:
        saved = Config.from_saved(header["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} holds a config this refdtp cannot read: {exc}") from None
    if saved.config_hash() != header["config_hash"]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or from an incompatible refdtp: its config does not match "
            f"its config hash ({header['config_hash']} stored, {saved.config_hash()} computed by refdtp "
            f"{__version__}; the file was written by refdtp {header.get('refdtp_version')})")
    return saved


def check_config(path, header: dict, cfg: Config) -> None:
    """Refuse a checkpoint written with another trajectory-defining configuration.

    The stored config must reproduce the stored config hash (:func:`saved_config`),
    and that hash must be ``cfg``'s; the refusal names every differing key.
    """
    saved = saved_config(path, header)
    if header["config_hash"] == cfg.config_hash():
        return
    diffs = hashed_differences(saved, cfg) or config_differences(saved.to_dict(), cfg.to_dict())
    raise CheckpointError(
        f"checkpoint {path} belongs to a different configuration (config hash "
        f"{header['config_hash']} vs {cfg.config_hash()}); differing keys: {'; '.join(diffs)}. Resume "
        f"with the run's own settings (omit --preset/--set to use its config.json; only --epochs may "
        f"change), or start a new run with another --out")


def hashed_differences(saved: Config, cfg: Config) -> list:
    """The differing keys that enter the config hash, as "key: saved -> current".

    A key counts when giving ``saved`` the current value alone changes its hash, so
    keys the hash leaves out (epochs, logging, data location) are never named.
    """
    now, base, out = cfg.to_dict(), saved.config_hash(), []
    for key, value in sorted(saved.to_dict().items()):
        if key in now and now[key] != value:
            try:
                matters = dataclasses.replace(saved, **{key: now[key]}).config_hash() != base
            except (TypeError, ValueError):
                matters = True
            if matters:
                out.append(f"{key}: {value!r} -> {now[key]!r}")
    return out


def load_state(path, cfg: Config, net: Network, backend: str) -> tuple[TrainState, dict, list]:
    """The state, epoch progress and metrics history saved at ``path``, verified.

    Raises:
        CheckpointError: corrupt file, other configuration, or shapes that do not
            fit ``net``.
    """
    try:
        header, payload = _verified(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{previous_hint(path)}") from None
    return restore_state(path, header, payload, cfg, net, backend)


def previous_hint(path) -> str:
    """What to say about ``checkpoint.prev.h5`` when ``checkpoint.h5`` is refused ("" if none)."""
    path = Path(path)
    prev = previous_path(path)
    if path.name != CHECKPOINT_NAME or not prev.is_file():
        return ""
    try:
        header, _ = _verified(prev)
    except CheckpointError:
        return f"; the previous checkpoint {prev} is damaged too"
    return (f"; the previous checkpoint {prev} ({position(header['epoch'], header['step'])}) is intact: "
            f"to continue from it, move the damaged file aside (mv {path} {path}.damaged) and "
            f"run --resume again")


def load_latest(path) -> tuple[Path, dict, dict, str]:
    """Load ``path``; if it is a missing or refused ``checkpoint.h5``, its ``checkpoint.prev.h5``.

    Both files are verified, and their stored config checked against its hash.

    Returns:
        (the path loaded, header, payload, a note saying why the previous file was
        used, or "").

    Raises:
        CheckpointError: neither file loads (the message covers both).
    """
    path = Path(path)
    try:
        return (path, *_verified(path), "")
    except CheckpointError as exc:
        prev = previous_path(path)
        if path.name != CHECKPOINT_NAME or not prev.is_file():
            raise
        first = exc
    try:
        header, payload = _verified(prev)
    except CheckpointError as exc:
        raise CheckpointError(f"{first}; the previous checkpoint is unusable too: {exc}") from None
    return prev, header, payload, f"{first}; using the previous checkpoint {prev} instead"


def _verified(path) -> tuple[dict, dict]:
    header, payload = load_checkpoint(path)
    saved_config(path, header)
    return header, payload


def restore_state(path, header: dict, payload: dict, cfg: Config, net: Network,
                  backend: str) -> tuple[TrainState, dict, list]:
    """:func:`load_state` for a checkpoint already read by :func:`load_checkpoint`."""
    check_config(path, header, cfg)
    template = init_state(cfg, net, "numpy")
    check_like("W", payload["W"], template.W, path)
    check_like("omega", payload["omega"], template.omega, path)
    check_optimizer_state("forward_opt", payload["forward_opt"], template.forward_opt,
                          flatten(template.W), path)
    fb = payload["feedback_opt"]
    if set(fb) != set(template.feedback_opt):
        raise CheckpointError(f"checkpoint {path}: feedback optimisers for {sorted(fb)}, expected "
                              f"{sorted(template.feedback_opt)}")
    for name, st in fb.items():
        check_optimizer_state(f"feedback_opt/{name}", st, template.feedback_opt[name],
                              template.omega[name], path)
    state = TrainState(*(_to_backend_tree(payload[k], backend)
                         for k in ("W", "omega", "forward_opt", "feedback_opt")),
                       epoch=int(header["epoch"]), step=int(header["step"]),
                       global_step=int(header["global_step"]))
    progress = {**fresh_progress(), **payload["progress"]}
    return state, progress, payload["history"]
