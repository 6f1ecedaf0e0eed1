"""Training runs: the command line, the epoch loop, checkpoints, records, diagnostics.

``python -m refdtp.train`` is :func:`refdtp.training.cli.main`; the loop is
:func:`refdtp.training.run.train`. See the module docstrings for the run
directory layout (:mod:`.records`) and the checkpoint format (:mod:`.checkpoint`).
"""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .cli import main
from .evaluation import evaluate
from .overrides import ConfigError, OverrideError, apply_overrides
from .run import EXIT_CODES, RunOptions, train
from .storage import StorageError

__all__ = ["CheckpointError", "ConfigError", "EXIT_CODES", "OverrideError", "RunOptions",
           "StorageError", "apply_overrides", "evaluate", "load_checkpoint", "main", "save_checkpoint",
           "train"]
