"""Run configuration: one flat, typed dataclass, validated against the network.

Per-block feedback lists (``feedback_iterations``, ``feedback_sigma``,
``feedback_lr``) have one entry per trained feedback block, i.e. blocks
2..N in the paper's numbering (G_1 exists but is never trained). A list of
the wrong length is an error, never silently padded or truncated (unlike
scalingDTP's `_align_values_with_backward_net`).

Every field has a declared domain in :data:`DOMAINS` (type, range or choices,
list length rule; see :mod:`refdtp.domains`). A field added to ``Config``
must add its entry there: ``tests/test_config_domains.py`` checks that, and
:meth:`Config.validate` checks every value against it before anything runs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from .backend import NOISE_GENERATORS
from .domains import NONEMPTY, PER_BLOCK, choice, flag, integer, number, numbers, path, text
from .networks import ARCHITECTURES, Network, fwdtp_mlp, lenet, mlp, simple_vgg, small_convnet

ALGORITHMS = ("ldrl", "bp", "dtp", "tp", "drl", "fwdtp", "ddtp")  # fwdtp, ddtp: refdtp.family


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
    data_dir: str = ""  # dataset folder ("": $REFDTP_DATA or ~/.cache/refdtp); not in the hash
    source: str = ""  # user archive or extracted dataset folder ("": find or download); not in the hash
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
    ldrl_routing: str = "noisy"  # G(F(x+eps)) un-pooled by the noisy argmax (the paper) or "clean"
    noise_generator: str = "sfc64"  # NumPy bit generator of the feedback noise (backend.NOISE_GENERATORS)
    # Adam moments of the forward optimiser (optimizer="adam"; PyTorch's defaults)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    # the family (refdtp.family): feedback optimiser of ddtp, FW-DTP's fixed feedback scale
    feedback_optimizer: str = "sgd"  # ddtp: "sgd" (feedback_momentum) or "adam" (the betas/eps below)
    feedback_beta1: float = 0.9
    feedback_beta2: float = 0.999
    feedback_eps: float = 1e-8
    feedback_pretrain_epochs: int = 0  # ddtp: first epochs train only the feedback (Meulemans' epochs_fb)
    feedback_init_scale: float = 1e-3  # fwdtp: B_n ~ U(-scale, scale), never trained
    # diagnostics
    diagnostics: bool = False
    diagnostics_beta: float = 0.005
    notes: str = ""

    # ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def config_hash(self, exclude: tuple = ("epochs", "diagnostics", "notes", "data_dir", "source")) -> str:
        """SHA-256 of the hyper-parameters that define the trajectory of a run.

        ``epochs`` is excluded so that a run can be extended; logging options and
        where the data is read from too (the data cache verifies its content).
        """
        d = {k: v for k, v in self.to_dict().items() if k not in exclude
             and not (k in HASHED_WHEN_SET and v == _DEFAULTS[k])}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_saved(cls, d: dict) -> Config:
        """A config saved by a run (config.json, a checkpoint): keys added to refdtp after the
        run was made take the value that run used (:data:`SAVED_BEFORE`), not today's default."""
        return cls.from_dict({**SAVED_BEFORE, **d})

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)

    def validate(self, net: Network | None = None) -> Config:
        """Check every field against its declared domain, then the cross-field rules.

        Args:
            net: the built network; when given (and the algorithm trains feedback
                weights), the per-block lists must have one entry per trained block.

        Raises:
            ValueError: one line naming the first bad key, its value and what is allowed.
        """
        for f in dataclasses.fields(self):
            domain = DOMAINS.get(f.name)
            if domain is None:
                raise ValueError(f"config field {f.name!r} has no declared domain in refdtp.config.DOMAINS")
            domain.check(f.name, getattr(self, f.name))
        if self.source and self.dataset not in SOURCE_DATASETS:
            raise ValueError(f"source={self.source!r} is not used by dataset {self.dataset!r}; "
                             f"source applies to {', '.join(SOURCE_DATASETS)}")
        if net is not None and self.algorithm not in ("bp", "fwdtp"):
            self._validate_feedback_lists(net)
        if net is not None and self.algorithm in ("fwdtp", "ddtp"):
            from .family import check_network
            check_network(self.algorithm, net)
        return self

    def _validate_feedback_lists(self, net: Network) -> None:
        trained = [b.name for b in net.blocks[1:]]
        for key in ("feedback_iterations", "feedback_sigma", "feedback_lr"):
            values = getattr(self, key)
            if len(values) != len(trained):
                raise ValueError(
                    f"{key} has {len(values)} entries but {net.name} has {len(trained)} trained "
                    f"feedback blocks {trained} (blocks 2..N); give one value per block")
            DOMAINS[key].check(key, values)


#: Fields added after checkpoints existed: hashed only when they differ from their default, so
#: the hash (and the resumability) of every earlier config is unchanged.
#: Fields added after runs were saved without them, with the value those runs used.
SAVED_BEFORE = {"noise_generator": "pcg64"}

HASHED_WHEN_SET = ("adam_beta1", "adam_beta2", "adam_eps", "feedback_optimizer", "feedback_beta1",
                   "feedback_beta2", "feedback_eps", "feedback_pretrain_epochs", "feedback_init_scale")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config) if f.name in HASHED_WHEN_SET}


def _datasets() -> tuple:
    from data_loaders import DATASETS
    return tuple(DATASETS)


def _normalizations() -> tuple:
    from data_loaders import NORMALIZATIONS
    return tuple(sorted(NORMALIZATIONS))


def _activations() -> tuple:
    from .activations import ACTIVATIONS
    return tuple(sorted(ACTIVATIONS))


def _optimizers() -> tuple:
    from .optim import OPTIMIZERS
    return tuple(sorted(OPTIMIZERS))


#: Datasets read from files, the only ones that take ``source``.
SOURCE_DATASETS = ("cifar10", "cifar100", "imagenet32", "mnist", "fmnist")
MAX_COUNT = 10 ** 6  # epochs, schedule lengths, feedback iterations
MAX_STEPS = 2 ** 31 - 1
MAX_SEED = 2 ** 32 - 1
MAX_WIDTH = 4096  # conv channels and mlp widths (bigger is surely a typo, or out of memory)

#: The declared domain of every Config field (see refdtp.domains).
DOMAINS = {
    "algorithm": choice(ALGORITHMS),
    "network": choice(tuple(sorted(ARCHITECTURES))),
    "channels": numbers(int, 1, MAX_WIDTH, length=NONEMPTY),
    "hidden": numbers(int, 1, MAX_WIDTH),
    "activation": choice(_activations),
    "dataset": choice(_datasets),
    "normalization": choice(_normalizations),
    "augment": flag(),
    "val_fraction": number(0, 1, hi_open=True),
    "data_dir": path(),
    "source": path(),
    "epochs": integer(1, MAX_COUNT),
    "batch_size": integer(1, MAX_STEPS),
    "max_steps_per_epoch": integer(0, MAX_STEPS),
    "seed": integer(0, MAX_SEED),
    "dtype": choice(("float32", "float64")),
    "beta": number(0, lo_open=True),
    "optimizer": choice(_optimizers),
    "lr": number(0),
    "momentum": number(0, 1, hi_open=True),
    "weight_decay": number(0),
    "schedule": choice(("constant", "cosine", "step")),
    "t_max": integer(1, MAX_COUNT),
    "eta_min": number(0),
    "step_size": integer(1, MAX_COUNT),
    "gamma": number(0, 1, lo_open=True),
    "feedback_iterations": numbers(int, 0, MAX_COUNT, length=PER_BLOCK),
    "feedback_sigma": numbers(float, 0, lo_open=True, length=PER_BLOCK),
    "feedback_lr": numbers(float, 0, length=PER_BLOCK),
    "feedback_momentum": number(0, 1, hi_open=True),
    "feedback_weight_decay": number(0),
    "ldrl_routing": choice(("noisy", "clean")),
    "noise_generator": choice(tuple(NOISE_GENERATORS)),
    "adam_beta1": number(0, 1, hi_open=True),
    "adam_beta2": number(0, 1, hi_open=True),
    "adam_eps": number(0, lo_open=True),
    "feedback_optimizer": choice(("sgd", "adam")),
    "feedback_beta1": number(0, 1, hi_open=True),
    "feedback_beta2": number(0, 1, hi_open=True),
    "feedback_eps": number(0, lo_open=True),
    "feedback_pretrain_epochs": integer(0, MAX_COUNT),
    "feedback_init_scale": number(0, lo_open=True),
    "diagnostics": flag(),
    "diagnostics_beta": number(0, lo_open=True),
    "notes": text(),
}


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
    if cfg.network in ("fwdtp_mlp", "fwdtp_mlp_bn"):  # refdtp.family.fwdtp; hidden widths from cfg.hidden
        return fwdtp_mlp([math.prod(in_shape), *cfg.hidden, num_classes], cfg.network == "fwdtp_mlp_bn",
                         in_shape, cfg.activation)
    raise ValueError(f"unknown network {cfg.network!r}; choose one of "
                     f"{sorted(ARCHITECTURES)}")
