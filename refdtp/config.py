"""Run configuration: one flat, typed dataclass, validated against the network.

Per-block feedback lists (``feedback_iterations``, ``feedback_sigma``,
``feedback_lr``) have one entry per trained feedback block, i.e. blocks
2..N in the paper's numbering (G_1 exists but is never trained). A list of
the wrong length is an error, never silently padded or truncated (unlike
scalingDTP's `_align_values_with_backward_net`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Optional

from .networks import Network, lenet, mlp, simple_vgg, small_convnet

ALGORITHMS = ("ldrl", "bp", "dtp", "tp", "drl")


@dataclass
class Config:
    """Every hyper-parameter of a run (defaults: the paper's CIFAR-10 L-DRL run)."""
    # what is trained
    algorithm: str = "ldrl"
    network: str = "simple_vgg"
    channels: list = field(default_factory=lambda: [128, 128, 256, 256, 512])
    hidden: list = field(default_factory=list)  # mlp hidden widths
    activation: str = "elu"
    dataset: str = "cifar10"
    normalization: str = "cifar10"
    augment: bool = True
    val_fraction: float = 0.0
    # schedule of the run
    epochs: int = 90
    batch_size: int = 128
    max_steps_per_epoch: int = 0  # 0: every batch; n > 0: only the first n batches of each epoch
    seed: int = 123
    dtype: str = "float32"
    # forward weights
    beta: float = 0.7
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    t_max: int = 85
    eta_min: float = 1e-5
    step_size: int = 30
    gamma: float = 0.1
    # feedback weights (blocks 2..N)
    feedback_iterations: list = field(default_factory=lambda: [20, 30, 35, 55, 20])
    feedback_sigma: list = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.2, 0.08])
    feedback_lr: list = field(default_factory=lambda: [1e-4, 3.5e-4, 8e-3, 8e-3, 0.18])
    feedback_momentum: float = 0.9
    feedback_weight_decay: float = 0.0  # DRL damping (Meulemans' feedback_wd)
    # diagnostics
    diagnostics: bool = False
    diagnostics_beta: float = 0.005
    notes: str = ""

    # ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def config_hash(self, exclude: tuple = ("epochs", "diagnostics", "notes")) -> str:
        """SHA-256 of the hyper-parameters that define the trajectory of a run.

        ``epochs`` is excluded so that a run can be extended; logging options too.
        """
        d = {k: v for k, v in self.to_dict().items() if k not in exclude}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)

    def validate(self, net: Optional[Network] = None) -> "Config":
        """Raise ValueError naming the first inconsistent hyper-parameter."""
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.max_steps_per_epoch < 0:
            raise ValueError(f"max_steps_per_epoch must be >= 0 (0: whole epochs), got "
                             f"{self.max_steps_per_epoch}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if net is not None and self.algorithm != "bp":
            self._validate_feedback_lists(net)
        return self

    def _validate_feedback_lists(self, net: Network) -> None:
        trained = [b.name for b in net.blocks[1:]]
        for key in ("feedback_iterations", "feedback_sigma", "feedback_lr"):
            values = getattr(self, key)
            if len(values) != len(trained):
                raise ValueError(
                    f"{key} has {len(values)} entries but {net.name} has {len(trained)} trained "
                    f"feedback blocks {trained} (blocks 2..N); give one value per block")
            if any(v < 0 for v in values):
                raise ValueError(f"{key} must be non-negative, got {values}")


def build_network(cfg: Config, in_shape: tuple, num_classes: int) -> Network:
    """The network named by ``cfg.network`` for the given input shape and class count."""
    if cfg.network == "simple_vgg":
        return simple_vgg(num_classes, cfg.channels, in_shape, cfg.activation)
    if cfg.network == "lenet":
        return lenet(num_classes, in_shape, cfg.activation)
    if cfg.network == "mlp":
        return mlp([math.prod(in_shape), *cfg.hidden, num_classes], cfg.activation, in_shape=in_shape)
    if cfg.network == "small_convnet":
        return small_convnet(in_shape, cfg.channels[0], num_classes, cfg.activation)
    raise ValueError(f"unknown network {cfg.network!r}; choose one of "
                     f"['lenet', 'mlp', 'simple_vgg', 'small_convnet']")
