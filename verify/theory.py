"""``python -m verify.theory``: measure every registered claim and judge it.

Prints one row per check (claim, check, measured, threshold, PASS/FAIL,
seconds) and exits 1 if any claim fails. ``--json`` writes every measured
number; ``--plots DIR`` writes the claims' figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

from refdtp.backend import blas_threads

from . import claims as _claims  # noqa: F401  (registers the claims)
from .registry import CLAIMS, Context, Outcome, jsonable

#: Table order by claim module: derivatives first, then L-DRL, gradient matching, the
#: paper's blocks, Gauss-Newton / DRL, FW-DTP / DDTP (family), backend parity; others follow.
MODULE_ORDER = ("primitives", "ldrl", "gradient_matching", "architecture", "gauss_newton", "drl", "family",
                "parity")


def ordered_ids() -> list:
    """Every registered claim id, grouped by MODULE_ORDER (registration order within a module)."""
    def rank(c):
        module = c.run.__module__.rsplit(".", 1)[-1]
        return MODULE_ORDER.index(module) if module in MODULE_ORDER else len(MODULE_ORDER)
    return [c.id for c in sorted(CLAIMS.values(), key=rank)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m verify.theory", description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fast run (the default; < 2 min on 2 cores)")
    mode.add_argument("--full", action="store_true", help="full-size run (more samples and iterations)")
    p.add_argument("--claim", nargs="+", metavar="ID", help="run only these claims")
    p.add_argument("--list", action="store_true", help="list the claims and exit")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--json", metavar="FILE", help="write every measured number to FILE")
    p.add_argument("--plots", metavar="DIR", help="write the claims' PNG figures to DIR")
    p.add_argument("--blas-threads", type=int, default=1, metavar="N",
                   help="BLAS threads while claims run (default 1: the claims' matrices are small, "
                        "and threads only contend; 0 leaves the library default)")
    return p.parse_args(argv)


def run_claim(claim, ctx: Context) -> tuple[Outcome, float]:
    """Run one claim; an exception becomes a failed outcome carrying the traceback."""
    start = time.perf_counter()
    try:
        outcome = claim.run(ctx)
    except Exception:  # a claim that crashes fails; it never stops the report
        outcome = Outcome(checks=[], data={"error": traceback.format_exc()})
    return outcome, time.perf_counter() - start


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    return f"{v:.3g}" if isinstance(v, (int, float)) else str(v)


def print_table(rows: list, out=None) -> None:
    out = sys.stdout if out is None else out  # looked up at call time (redirection, capture)
    header = ("claim", "check", "measured", "threshold", "result", "s")
    table = [header] + rows
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)


def outcome_rows(claim, outcome: Outcome, seconds: float) -> list:
    if outcome.skipped:
        return [(claim.id, "-", "-", "-", f"SKIP ({outcome.skipped})", f"{seconds:.1f}")]
    if not outcome.checks:
        last = outcome.data.get("error", "no checks").strip().splitlines()[-1]
        return [(claim.id, "error", "-", "-", f"FAIL ({last[:80]})", f"{seconds:.1f}")]
    return [(claim.id, c.name, _fmt(c.value) + c.unit, str(c.threshold),
             _result(c), f"{seconds:.1f}") for c in outcome.checks]


def _result(check) -> str:
    """PASS / FAIL, or INFO for a measurement (reported, never judged)."""
    if check.threshold.op == "measurement":
        return "INFO"
    return "PASS" if check.passed else "FAIL"


def write_json(path: str, ctx: Context, results: list) -> None:
    doc = {"backend": ctx.backend, "seed": ctx.seed, "quick": ctx.quick, "claims": []}
    for claim, outcome, seconds in results:
        doc["claims"].append({
            "id": claim.id, "statement": claim.statement, "source": claim.source, "kind": claim.kind,
            "passed": outcome.passed, "skipped": outcome.skipped, "seconds": seconds,
            "checks": [{"name": c.name, "value": c.value, "threshold": str(c.threshold),
                        "passed": None if c.threshold.op == "measurement" else c.passed}
                       for c in outcome.checks],
            "data": outcome.data})
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(jsonable(doc), f, indent=1)
    os.replace(tmp, path)


def write_plots(claim, outcome: Outcome, directory: str) -> list:
    """The claim's figures; a failing plot is reported on stderr and never aborts the run."""
    os.makedirs(directory, exist_ok=True)
    try:
        return list(claim.plot(outcome.data, directory))
    except Exception:  # a figure is a by-product: the measured numbers still stand
        print(f"plot of {claim.id} failed:\n{traceback.format_exc()}", file=sys.stderr)
        return []


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for c in (CLAIMS[i] for i in ordered_ids()):
            print(f"{c.id:32s} [{c.kind}] {c.statement} ({c.source})")
        return 0
    ids = args.claim or ordered_ids()
    unknown = [i for i in ids if i not in CLAIMS]
    if unknown:
        print(f"unknown claim(s) {unknown}; valid: {sorted(CLAIMS)}", file=sys.stderr)
        return 2
    ctx = Context(backend=args.backend, seed=args.seed, quick=not args.full)
    _ = ctx.xp  # fail early with a clear message if the backend is unavailable
    results, rows = [], []
    with blas_threads(args.blas_threads):
        for cid in ids:
            claim = CLAIMS[cid]
            outcome, seconds = run_claim(claim, ctx)
            results.append((claim, outcome, seconds))
            rows += outcome_rows(claim, outcome, seconds)
            if args.plots and claim.plot and outcome.checks:
                write_plots(claim, outcome, args.plots)
    print_table(rows)
    failed = [c.id for c, o, _ in results if not o.passed and not o.skipped]
    skipped = [c.id for c, o, _ in results if o.skipped]
    total = sum(s for _, _, s in results)
    print(f"\n{len(results) - len(failed) - len(skipped)} passed, {len(failed)} failed, "
          f"{len(skipped)} skipped in {total:.1f} s ({ctx.backend}, seed {ctx.seed}, "
          f"{'quick' if ctx.quick else 'full'})")
    if failed:
        print("FAILED: " + ", ".join(failed))
    if args.json:
        write_json(args.json, ctx, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
