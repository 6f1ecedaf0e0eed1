"""The family's verify.theory claims pass, and each FAILS on a planted error (meta-tests); the new
presets train through the CLI on the bundled digits, resume from their checkpoints, and log the
family's diagnostics."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from refdtp.family import ddtp, fwdtp
from refdtp.training.cli import main as train_main
from verify.claims import family as claims
from verify.registry import CLAIMS, Context
from verify.theory import run_claim


def _outcome(claim_fn):
    """Run a claim as ``python -m verify.theory`` does (a crash is a failed outcome)."""
    return run_claim(CLAIMS[_ID[claim_fn.__name__]], Context(quick=True))[0]


_ID = {"fwdtp_conditions": "fwdtp-conditions", "ddtp_gauss_newton": "ddtp-gauss-newton"}


def _failed(outcome) -> list:
    return [c.name for c in outcome.checks if not c.passed]


@pytest.mark.parametrize("claim_fn", [claims.fwdtp_conditions, claims.ddtp_gauss_newton])
def test_family_claims_pass(claim_fn):
    out = _outcome(claim_fn)
    assert out.passed, _failed(out)


# -- planted errors in FW-DTP -------------------------------------------------------------------

def _tp_targets(net, omega, trace, t_N, bn):
    """Planted: no difference correction, t_{n-1} = G_n(t_n) (plain TP)."""
    t = [None] * (len(net) + 1)
    t[-1] = t_N
    for n in range(len(net), 1, -1):
        b = net.blocks[n - 1]
        t[n - 1] = b.feedback(omega[b.name], t[n], ())[0]
    return t


def test_fwdtp_claim_fails_without_the_difference_correction(monkeypatch):
    monkeypatch.setattr(fwdtp, "propagate", _tp_targets)
    assert not _outcome(claims.fwdtp_conditions).passed


def test_fwdtp_claim_fails_with_the_correction_sign_flipped(monkeypatch):
    """Planted: t_{n-1} = s_{n-1} - (G(t_n) - G(s_n))."""
    original = fwdtp.propagate

    def flipped(net, omega, trace, t_N, bn):
        t = original(net, omega, trace, t_N, bn)
        return [None] + [2 * s - x for s, x in zip(trace.s[1:-1], t[1:-1], strict=True)] + [t[-1]]
    monkeypatch.setattr(fwdtp, "propagate", flipped)
    assert not _outcome(claims.fwdtp_conditions).passed


def test_fwdtp_claim_fails_on_wrong_feedback_jacobian(monkeypatch):
    """Planted: J_G with the wrong sign in the measured J_f J_g."""
    original = fwdtp.chain_sample_jacobian
    monkeypatch.setattr(fwdtp, "chain_sample_jacobian",
                        lambda chain, p, c: -original(chain, p, c) if "feedback" in chain.where
                        else original(chain, p, c))
    assert not _outcome(claims.fwdtp_conditions).passed


# -- planted errors in DDTP ---------------------------------------------------------------------

def test_ddtp_claim_fails_without_the_difference_in_the_drl(monkeypatch):
    """Planted: the reconstruction Q F(s_n + eps) without subtracting Q s_N."""
    def planted(net, W, Q, trace, n, eps):
        u = ddtp.upper_forward(net, W, trace.s[n] + eps.reshape(trace.s[n].shape), n)
        return u, u @ Q.T - eps.reshape(eps.shape[0], -1)
    monkeypatch.setattr(ddtp, "drl_terms", planted)
    assert not _outcome(claims.ddtp_gauss_newton).passed


def test_ddtp_claim_fails_with_half_the_drl_gradient(monkeypatch):
    original = ddtp.drl_grads
    monkeypatch.setattr(ddtp, "drl_grads", lambda *a, **k: ({"weight": 0.5 * original(*a, **k)[0]["weight"]},
                                                             None))
    assert not _outcome(claims.ddtp_gauss_newton).passed


def test_ddtp_claim_fails_with_the_direct_targets_sign_flipped(monkeypatch):
    """Planted: t_n = s_n - Q_n (t_N - s_N) for the hidden blocks."""
    original = ddtp.deltas
    def flipped(net, om, tr, d):
        out = original(net, om, tr, d)
        return [None] + [-x for x in out[1:-1]] + [out[-1]]
    monkeypatch.setattr(ddtp, "deltas", flipped)
    assert not _outcome(claims.ddtp_gauss_newton).passed


# -- the CLI on the bundled digits -----------------------------------------------------------------

@pytest.mark.parametrize("preset", ["digits-fwdtp", "digits-ddtp"])
def test_digits_preset_trains_resumes_and_logs_diagnostics(tmp_path, preset):
    out = tmp_path / preset
    common = ["--preset", preset, "--out", str(out), "--set", "max_steps_per_epoch=6", "diagnostics=true"]
    assert train_main([*common, "--epochs", "2"]) == 0
    assert train_main([*common, "--epochs", "3", "--resume"]) == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    key = "fwdtp_eig_ratio/fc_1" if preset == "digits-fwdtp" else "ddtp_bp_angle/fc_0"
    assert len(rows) == 3 and all(np.isfinite(float(r[key])) for r in rows)


@pytest.mark.parametrize("preset", ["mnist-fwdtp", "mnist-fwdtp-nobn", "fmnist-fwdtp", "mnist-ddtp",
                                    "fmnist-ddtp"])
def test_paper_presets_run_on_tiny_idx_files(tmp_path, preset):
    """The papers' full-size networks and hyper-parameters, one epoch of 1-2 batches on 12 fake images."""
    from data_loaders import testing
    testing.write_mnist(tmp_path / "idx", n_train=12, n_test=5)
    argv = ["--preset", preset, "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path), "--source",
            str(tmp_path / "idx"), "--no-download", "--epochs", "1", "--steps", "2", "--batch-size", "6",
            "--quiet"]
    if "ddtp" in preset:
        argv += ["--set", "feedback_pretrain_epochs=0"]
    assert train_main(argv) == 0
