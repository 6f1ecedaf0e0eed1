"""The rest of the target-propagation family, as first-class algorithms of
:func:`refdtp.algorithms.train_step`:

- ``"fwdtp"``: Fixed-Weight DTP (Shibuya et al., AAAI 2023), :mod:`refdtp.family.fwdtp`;
- ``"ddtp"``: DDTP-linear, direct linear feedback trained with the difference reconstruction
  loss (Meulemans et al., NeurIPS 2020), :mod:`refdtp.family.ddtp`.

Each module has ``init_state(cfg, net, backend)`` and ``train_step(cfg, net, state, x, labels, lr)``
returning the same :class:`refdtp.algorithms.TrainState` as the other algorithms, so
checkpoints, the CLI, diagnostics and sweeps work unchanged.
"""
from __future__ import annotations

from . import ddtp, fwdtp

#: Algorithm name -> module.
FAMILY = {"fwdtp": fwdtp, "ddtp": ddtp}


def check_network(algorithm: str, net) -> None:
    """Raise ValueError unless ``net`` is a network the algorithm is defined on.

    FW-DTP: its own MLP (``network="fwdtp_mlp"`` or ``"fwdtp_mlp_bn"``: bias-free blocks, fixed tanh
    feedback). DDTP-linear: fully connected blocks (``network="mlp"``), whose outputs Q_n maps onto.
    """
    from ..ops import Linear
    if algorithm == "fwdtp" and net.name not in ("fwdtp_mlp", "fwdtp_mlp_bn"):
        raise ValueError(f"algorithm 'fwdtp' trains the FW-DTP MLP; set network=fwdtp_mlp or fwdtp_mlp_bn "
                         f"(got {net.name!r})")
    if algorithm == "ddtp" and not all(isinstance(b.F.param_op, Linear) for b in net.blocks):
        raise ValueError(f"algorithm 'ddtp' (direct linear feedback) needs fully connected blocks; set "
                         f"network=mlp (got {net.name!r})")


def init_state(cfg, net, backend: str = "numpy"):
    """The initial TrainState of a family algorithm (``cfg.algorithm`` in FAMILY)."""
    cfg.validate(net)
    return FAMILY[cfg.algorithm].init_state(cfg, net, backend)


def train_step(cfg, net, state, x, labels, lr: float):
    """One batch of a family algorithm; same contract as :func:`refdtp.algorithms.train_step`."""
    return FAMILY[cfg.algorithm].train_step(cfg, net, state, x, labels, lr)
