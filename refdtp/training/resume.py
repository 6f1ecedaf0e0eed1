"""A :class:`~refdtp.algorithms.TrainState` to and from a checkpoint.

Resuming loads every parameter and optimiser buffer bit for bit and restarts
the batch stream at the saved (epoch, step), so a resumed run computes exactly
what an uninterrupted run computes (every random stream of refdtp and
data_loaders is a function of (seed, purpose, epoch, step, block)).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..algorithms import TrainState, init_state
from ..backend import to_backend
from ..config import Config
from ..networks import Network
from ..optim import flatten
from .checkpoint import (CHECKPOINT_NAME, CheckpointError, check_like, check_optimizer_state,
                         config_differences, load_checkpoint, previous_path, save_checkpoint)


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


def check_config(path, header: dict, cfg: Config) -> None:
    """Refuse a checkpoint written with another trajectory-defining configuration."""
    if header["config_hash"] == cfg.config_hash():
        return
    diffs = config_differences(header["config"], cfg.to_dict())
    raise CheckpointError(
        f"checkpoint {path} belongs to a different configuration (config hash "
        f"{header['config_hash']} vs {cfg.config_hash()}); differing keys: "
        f"{'; '.join(diffs) or '(none visible: refdtp version change)'}. Resume with the run's "
        f"own settings (omit --preset/--set to use its config.json; only --epochs may change), "
        f"or start a new run with another --out")


def load_state(path, cfg: Config, net: Network, backend: str) -> tuple[TrainState, dict, list]:
    """The state, epoch progress and metrics history saved at ``path``, verified.

    Raises:
        CheckpointError: corrupt file, other configuration, or shapes that do not
            fit ``net``.
    """
    header, payload = load_checkpoint(path)
    return restore_state(path, header, payload, cfg, net, backend)


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
