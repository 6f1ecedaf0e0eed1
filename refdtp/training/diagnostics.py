"""Per-epoch alignment diagnostics on a fixed test batch (``--set diagnostics=true``).

Logs, per block, the angle and relative distance between the scaled DTP
update (1/beta) dL_F/dW_n and the BP gradient (Theorem 4.3, GMP), the
Jacobian-matching error ||J_G - J_F^T|| / ||J_F|| of every trained feedback
block (Theorem 4.2, JMC), and the forward/feedback weight angle: the live
version of the paper's alignment figures (docs/algorithm.md §7.2), computed by
:func:`refdtp.metrics.alignment_report` with beta = ``cfg.diagnostics_beta``.

BP runs skip the diagnostics (their feedback weights are never trained). The
comparison always uses the difference-corrected (DTP) targets, also for TP runs.
FW-DTP runs add the eigenvalue ratio and trace of J_f J_g per block (the paper's strict and
weak conditions); DDTP runs log only the angle of their update to BP per block.
The batch is the same every epoch: :data:`DIAGNOSTIC_BATCH` test examples
drawn without replacement from ``host_rng(cfg.seed, PURPOSE_DIAGNOSTICS)``.
"""
from __future__ import annotations

import numpy as np

from data_loaders import iterate_batches

from ..backend import host_rng
from ..config import Config
from ..metrics import alignment_report
from ..networks import Network

PURPOSE_DIAGNOSTICS = 7201
DIAGNOSTIC_BATCH = 128
#: Hutchinson probes per large block for the JMC estimate.
N_PROBES = 4


def fixed_batch(cfg: Config, images, labels, backend: str):
    """The diagnostic batch: (x (B, C, H, W) normalised, y (B,)) on ``backend``."""
    n = len(labels)
    idx = np.sort(host_rng(cfg.seed, PURPOSE_DIAGNOSTICS).choice(n, min(DIAGNOSTIC_BATCH, n),
                                                                 replace=False))
    return next(iterate_batches(images, labels, len(idx), seed=0, epoch=0, indices=idx,
                                shuffle=False, drop_last=False, normalization=cfg.normalization,
                                backend=backend, dtype=np.dtype(cfg.dtype)))


def diagnostics_row(cfg: Config, net: Network, W: dict, omega: dict, batch) -> dict:
    """Flat metric columns of the alignment report on ``batch``.

    Returns:
        {"dtp_bp_angle/<block>": degrees, "dtp_bp_distance/<block>": relative,
         "dtp_bp_angle/total", "dtp_bp_distance/total",
         "jmc_error/<block>", "weight_angle/<block>"} (blocks 2..N for the last two).
    """
    x, y = batch
    if cfg.algorithm == "ddtp":  # direct feedback, no per-block G: DDTP update vs BP (refdtp.family.ddtp)
        from ..family import ddtp
        return ddtp.diagnostics_row(cfg, net, W, omega, x, y)
    rep = alignment_report(net, W, omega, x, y, beta=cfg.diagnostics_beta, n_probes=N_PROBES,
                           seed=cfg.seed)
    row = {}
    for name, r in [*rep["dtp_vs_bp"].items(), ("total", rep["total"])]:
        row[f"dtp_bp_angle/{name}"] = r["angle"]
        row[f"dtp_bp_distance/{name}"] = r["distance"]
    for name, r in rep["jmc"].items():
        row[f"jmc_error/{name}"] = r["error"]
    for name, r in rep["weights"].items():
        row[f"weight_angle/{name}"] = r["angle"]
    if cfg.algorithm == "fwdtp":  # FW-DTP's strict / weak conditions on J_f J_g (refdtp.family.fwdtp)
        from ..family import fwdtp
        row.update(fwdtp.condition_row(net, W, omega, x))
    return row
