"""The claims of ``verify/`` pass, FAIL when the maths is broken, and the CLI reports them faithfully.

- every registered claim (all modules, including the Gauss-Newton ones) passes in quick mode;
- planted bugs (a wrong VJP, parameter gradient, fused L-DRL gradient, feedback sign,
  slightly wrong oracle feedback) make the relevant claims fail, and only those;
- ``python -m verify.theory``: exit codes 0 / 1 / 2, ``--json`` holds every number of the
  table, ``--plots`` writes PNGs, ``--list``;
- the helpers of verify.nets, verify.registry and the parity claim.
Full-mode runs are marked ``slow``; the CuPy parity run is marked ``gpu``.
"""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

import verify.claims  # noqa: F401  (registers every claim)
from refdtp import blocks, networks
from refdtp.backend import gpu_available
from refdtp.ops import Conv2d, Linear
from verify import nets, theory
from verify.claims import parity
from verify.registry import CLAIMS, Check, Claim, Context, Outcome, le, worst

IDS = sorted(CLAIMS)
SKIPPABLE = {"backend-parity": "needs --backend cupy"}


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """Claims use small matrices: BLAS threads only contend on a busy machine."""
    with theory.blas_threads(1):
        yield


def _failed(outcome: Outcome) -> list:
    return [(c.name, c.value, str(c.threshold)) for c in outcome.checks if not c.passed]


def _run(cid: str, **ctx) -> Outcome:
    return CLAIMS[cid].run(Context(**ctx))


# -- every claim passes ---------------------------------------------------------

def test_the_expected_claims_are_registered():
    mine = {"derivatives-match-finite-differences", "adjoint-identities",
            "loss-gradients-match-finite-differences", "ldrl-linear-expected-gradient",
            "ldrl-linear-monte-carlo-rate", "ldrl-small-sigma-expansion", "ldrl-reaches-jmc",
            "jmc-implies-gradient-matching", "exact-output-layer", "ldrl-bp-aligned-end-to-end",
            "dtp-update-decreases-loss", "vgg-conv-jmc-floor", "ldrl-maxpool-noisy-routing-floor",
            "backend-parity", "ldrl-plans-match-reference"}
    assert mine <= set(CLAIMS), sorted(mine - set(CLAIMS))
    for c in CLAIMS.values():
        assert c.statement and c.source, c
        assert c.kind in ("exact", "first-order", "rate", "statistical", "angle", "measurement"), c


@pytest.mark.parametrize("cid", IDS)
def test_claim_passes_in_quick_mode(cid):
    outcome = _run(cid)
    if outcome.skipped:
        assert cid in SKIPPABLE and SKIPPABLE[cid] in outcome.skipped, (cid, outcome.skipped)
        return
    assert outcome.checks, f"{cid} measured nothing: {outcome.data.get('error', '')}"
    assert not _failed(outcome), f"{cid} failed: {_failed(outcome)}"


@pytest.mark.slow
@pytest.mark.parametrize("cid", IDS)
def test_claim_passes_in_full_mode(cid):
    outcome = _run(cid, quick=False)
    assert outcome.skipped or (outcome.checks and not _failed(outcome)), f"{cid}: {_failed(outcome)}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_claims_pass_for_other_seeds(seed):
    failed = {cid: _failed(o) for cid in IDS if not (o := _run(cid, seed=seed)).skipped and not o.passed}
    assert not failed, failed


@pytest.mark.gpu
def test_backend_parity_on_the_gpu():
    if not gpu_available():
        pytest.skip("CuPy backend needs CuPy and an NVIDIA GPU")
    outcome = _run("backend-parity", backend="cupy")
    assert outcome.passed, _failed(outcome)


# -- planted bugs make the relevant claims FAIL ---------------------------------

def _scaled(method, factor=1 + 1e-3):
    def wrong(self, *args):
        out = method(self, *args)
        return {k: v * factor for k, v in out.items()} if isinstance(out, dict) else out * factor
    return wrong


def test_a_wrong_conv_vjp_fails_the_derivative_and_adjoint_claims(monkeypatch):
    monkeypatch.setattr(Conv2d, "vjp", _scaled(Conv2d.vjp))
    for cid in ("derivatives-match-finite-differences", "adjoint-identities"):
        assert not _run(cid).passed, cid


def test_a_wrong_linear_weight_gradient_fails_the_gradient_claims(monkeypatch):
    monkeypatch.setattr(Linear, "param_grads", _scaled(Linear.param_grads))
    for cid in ("derivatives-match-finite-differences", "loss-gradients-match-finite-differences",
                "ldrl-linear-expected-gradient"):
        assert not _run(cid).passed, cid
    # BP and DTP share param_grads, so the output-layer identity (target arithmetic) still holds.
    assert _run("exact-output-layer").passed


def test_a_wrong_fused_ldrl_gradient_fails_the_ldrl_claims(monkeypatch):
    monkeypatch.setattr(blocks.Block, "difference_grads", _scaled(blocks.Block.difference_grads))
    out = _run("loss-gradients-match-finite-differences")
    names = {c.name for c in out.checks if not c.passed}
    assert "L-DRL fused vs naive (relative)" in names, names
    assert not _run("ldrl-linear-expected-gradient").passed


def test_a_sign_error_in_the_difference_target_fails_gradient_matching_only(monkeypatch):
    original = blocks.Block.feedback_difference
    monkeypatch.setattr(blocks.Block, "feedback_difference", lambda self, *a, **k: -original(self, *a, **k))
    assert not _run("jmc-implies-gradient-matching").passed
    assert _run("exact-output-layer").passed  # the output target does not use the feedback


def test_slightly_wrong_oracle_feedback_fails_gradient_matching(monkeypatch):
    original = nets.oracle_feedback

    def off_by_one_percent(net, W, omega):
        out = original(net, W, omega)
        return {b: {k: (1.01 * v if k == "weight" else v) for k, v in d.items()} for b, d in out.items()}

    monkeypatch.setattr(nets, "oracle_feedback", off_by_one_percent)
    outcome = _run("jmc-implies-gradient-matching")
    assert any("linear-feedback blocks" in c.name for c in outcome.checks if not c.passed), _failed(outcome)


def test_transposed_conv_feedback_breaks_the_jmc_floor_claim(monkeypatch):
    def transposed(method):  # G's Jacobian with each kernel transposed (i <-> j)
        def wrong(self, omega, cache, d):
            return method(self, {**omega, "weight": omega["weight"].transpose(0, 1, 3, 2)}, cache, d)
        return wrong
    monkeypatch.setattr(blocks.Block, "feedback_jvp", transposed(blocks.Block.feedback_jvp))
    monkeypatch.setattr(blocks.Block, "feedback_vjp", transposed(blocks.Block.feedback_vjp))
    outcome = _run("vgg-conv-jmc-floor")
    assert "max error, all pooled pre-activations >= 0" in {c.name for c in outcome.checks if not c.passed}


# -- the CLI ---------------------------------------------------------------------

def _planted(monkeypatch, value=1.0, crash=False):
    def run(ctx):
        if crash:
            raise RuntimeError("planted crash")
        return Outcome([Check("planted number", value, le(0.5))], {"x": value})
    monkeypatch.setitem(CLAIMS, "planted", Claim("planted", "a planted claim", "test", "exact", run))


def test_cli_exits_0_when_the_claims_pass(capsys):
    assert theory.main(["--claim", "exact-output-layer", "ldrl-linear-expected-gradient"]) == 0
    out = capsys.readouterr().out
    assert "2 passed, 0 failed" in out and "FAIL" not in out


@pytest.mark.parametrize("crash", [False, True])
def test_cli_exits_1_when_a_claim_fails_or_crashes(monkeypatch, capsys, crash):
    _planted(monkeypatch, crash=crash)
    assert theory.main(["--claim", "exact-output-layer", "planted"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: planted" in out and ("planted crash" in out) == crash


def test_cli_unknown_claim_exits_2_with_a_message(capsys):
    assert theory.main(["--claim", "no-such-claim"]) == 2
    err = capsys.readouterr().err
    assert "unknown claim" in err and "no-such-claim" in err


def test_cli_list_names_every_claim(capsys):
    assert theory.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(cid in out for cid in IDS)


def test_json_holds_every_number_of_the_table(tmp_path, capsys, monkeypatch):
    _planted(monkeypatch, value=0.25)
    path = tmp_path / "out.json"
    ids = ["ldrl-small-sigma-expansion", "exact-output-layer", "planted"]
    assert theory.main(["--claim", *ids, "--json", str(path)]) == 0
    table = capsys.readouterr().out.splitlines()
    doc = json.loads(path.read_text())
    assert [c["id"] for c in doc["claims"]] == ids and doc["backend"] == "numpy" and doc["quick"]
    for c in doc["claims"]:
        assert c["passed"] and c["checks"], c["id"]
        for check in c["checks"]:
            rows = [r for r in table if r.startswith(c["id"]) and check["name"] in r]
            assert len(rows) == 1 and theory._fmt(check["value"]) in rows[0], (check, rows)
    planted = doc["claims"][-1]
    assert planted["checks"][0]["value"] == 0.25 and planted["data"] == {"x": 0.25}
    slopes = doc["claims"][0]["data"]["slope"]
    assert all(1.8 <= v <= 2.2 for v in slopes.values()), slopes


def test_plots_are_written_as_png(tmp_path):
    ids = ["ldrl-small-sigma-expansion", "jmc-implies-gradient-matching"]
    assert theory.main(["--claim", *ids, "--plots", str(tmp_path)]) == 0
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) >= 3, pngs
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_a_failing_plot_is_reported_and_does_not_abort(tmp_path, monkeypatch, capsys):
    def bad_plot(data, directory):
        raise ValueError("planted plot failure")
    monkeypatch.setitem(CLAIMS, "planted", Claim("planted", "s", "test", "exact",
                                                 lambda ctx: Outcome([Check("n", 0.0, le(1.0))]), bad_plot))
    assert theory.main(["--claim", "planted", "--plots", str(tmp_path)]) == 0
    assert "planted plot failure" in capsys.readouterr().err


def test_python_dash_m_entry_point_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "verify.theory", "--claim", "exact-output-layer"],
                        capture_output=True, text=True)
    bad = subprocess.run([sys.executable, "-m", "verify.theory", "--claim", "nope"],
                         capture_output=True, text=True)
    assert ok.returncode == 0 and "1 passed" in ok.stdout, ok.stdout + ok.stderr
    assert bad.returncode == 2 and "unknown claim" in bad.stderr


# -- helpers -----------------------------------------------------------------------

def test_worst_propagates_nan_and_thresholds_reject_it():
    assert worst([1.0, 3.0, 2.0]) == 3.0 and worst([1.0, 3.0], min) == 1.0
    assert math.isnan(worst([1.0, math.nan, 2.0])) and math.isnan(worst([]))
    assert not Check("x", math.nan, le(1.0)).passed


def test_antithetic_design_reproduces_gaussian_second_moments():
    d = nets.antithetic_design((2, 3), 0.1).reshape(12, 6)
    assert np.allclose(d.T @ d / 2, 0.01 * np.eye(6), atol=1e-17) and np.allclose(d.sum(0), 0)


def test_quadratic_minimiser_solves_a_known_quadratic():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 6))
    H, r = A @ A.T + np.eye(6), rng.standard_normal(6)
    out = nets.quadratic_minimiser(lambda om: {"weight": (H @ om["weight"].ravel() - r).reshape(2, 3)},
                                   {"weight": np.zeros((2, 3)), "bias": np.ones(1)})
    assert np.allclose(out["weight"].ravel(), np.linalg.solve(H, r), rtol=1e-12) and out["bias"][0] == 1


def test_kink_margin_sees_relu_and_pool_ties():
    block = networks.conv_block("c", (1, 4, 4), 1, activation="elu")
    W = {"weight": np.zeros((1, 1, 3, 3)), "bias": np.array([0.5])}
    x = np.zeros((1, 1, 4, 4))
    assert nets.kink_margin(block, W, x) == 0.0  # every pooling window is a four-way tie
    W["weight"][0, 0, 1, 1] = 1.0
    x[0, 0] = np.arange(16).reshape(4, 4) * 0.1
    assert nets.kink_margin(block, W, x) == pytest.approx(0.1)


def test_parity_compare_scales_each_group_by_its_largest_entry():
    a = {"x": np.array([1.0, 2.0]), "y": [3.0, {"z": 1e-14}]}
    b = {"x": np.array([1.0, 2.0 + 2e-6]), "y": [3.0, {"z": 2e-14}]}
    res = parity.compare(a, b, parity.Tolerance(rtol=1e-6, atol=1e-6))
    assert res["groups"]["x"] == pytest.approx(0.5, rel=1e-5)  # 2e-6 / (1e-6 * 2 + 1e-6 * 2)
    assert res["groups"]["y"] < 1e-7  # z: round-off next to 3.0 in its group, not compared relatively
    assert res["ratio"] == res["groups"]["x"] and res["worst_group"] == "x"
    with pytest.raises(ValueError, match="differ"):
        parity.compare(a, {"x": a["x"]}, parity.LIBRARY_TOL)


def test_parity_library_numbers_are_deterministic_on_numpy():
    nums = parity.library_numbers(Context())
    assert parity.compare(nums, parity.library_numbers(Context()), parity.LIBRARY_TOL)["ratio"] == 0.0
    assert len(nums) > 20 and "logits" in nums


def test_table_order_lists_every_claim_once_primitives_first():
    ids = theory.ordered_ids()
    assert sorted(ids) == IDS and ids[0] == "derivatives-match-finite-differences"
    assert ids.index("backend-parity") > ids.index("ldrl-reaches-jmc")
