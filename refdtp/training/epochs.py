"""How epochs and steps are numbered for people, and the cosine schedule's span.

One convention everywhere a person reads (progress bar, epoch summaries,
resume, interrupt and divergence messages, ``evaluate``, the report): epochs
and steps are counted from 1. Epoch ``e`` of ``E`` is the e-th pass over the
data; "step s" is the s-th batch of that epoch. A checkpoint taken after
``d`` finished epochs and ``k`` steps of the next one is "in epoch d+1 after
step k" (``k`` = 0: "at the end of epoch d", or "before epoch 1"). In code,
``TrainState.epoch`` and ``.step`` stay counts of what is finished (0-based
indices of what runs next); ``metrics.csv``'s ``epoch`` column is 1-based.
"""
from __future__ import annotations

from ..config import Config


def position(epochs_done: int, steps_done: int) -> str:
    """Where a checkpoint stands, for people (see the module docstring)."""
    if steps_done:
        return f"in epoch {epochs_done + 1} after step {steps_done}"
    return f"at the end of epoch {epochs_done}" if epochs_done else "before epoch 1"


def failing_step(epochs_done: int, steps_done: int, epochs: int) -> str:
    """The step being run when something failed, e.g. ``epoch 3/8, step 6``."""
    return f"epoch {epochs_done + 1}/{epochs}, step {steps_done + 1}"


def schedule_warning(cfg: Config, lr_at) -> str | None:
    """A warning when the cosine learning rate climbs back up before the run ends.

    With ``schedule=cosine`` the forward lr falls from ``lr`` to ``eta_min``
    over ``t_max`` epochs and then, as PyTorch's CosineAnnealingLR, rises
    again. Training longer than ``t_max + 1`` epochs is allowed (the paper's
    90-epoch runs use ``t_max`` 85) but never silent: this is the message.

    Args:
        cfg: the run's config.
        lr_at: the schedule's ``lr_at(epoch_index)``.

    Returns:
        The warning text, or None when the lr never rises.
    """
    if cfg.schedule != "cosine" or cfg.epochs <= cfg.t_max + 1:
        return None
    return (f"warning: epochs {cfg.epochs} > t_max {cfg.t_max} + 1: the cosine learning rate reaches "
            f"eta_min {cfg.eta_min:g} in epoch {cfg.t_max + 1}, then climbs back up to "
            f"{lr_at(cfg.epochs - 1):.3g} by epoch {cfg.epochs} (PyTorch's CosineAnnealingLR); "
            f"pass --set t_max={cfg.epochs - 1} to anneal over the whole run")
