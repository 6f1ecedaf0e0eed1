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

from . import claims as _claims  # noqa: F401  (registers the claims)
from .registry import CLAIMS, Context, Outcome


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


def print_table(rows: list, out=sys.stdout) -> None:
    header = ("claim", "check", "measured", "threshold", "result", "s")
    table = [header] + rows
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)


def outcome_rows(claim, outcome: Outcome, seconds: float) -> list:
    if outcome.skipped:
        return [(claim.id, "-", "-", "-", f"SKIP ({outcome.skipped})", f"{seconds:.1f}")]
    if not outcome.checks:
        last = outcome.data.get("error", "no checks").strip().splitlines()[-1]
        return [(claim.id, "error", "-", "-", f"FAIL ({last[:80]})", f"{seconds:.1f}")]
    return [(claim.id, c.name, _fmt(c.value) + c.unit, str(c.threshold),
             "PASS" if c.passed else "FAIL", f"{seconds:.1f}") for c in outcome.checks]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def write_json(path: str, ctx: Context, results: list) -> None:
    doc = {"backend": ctx.backend, "seed": ctx.seed, "quick": ctx.quick, "claims": []}
    for claim, outcome, seconds in results:
        doc["claims"].append({
            "id": claim.id, "statement": claim.statement, "source": claim.source, "kind": claim.kind,
            "passed": outcome.passed, "skipped": outcome.skipped, "seconds": seconds,
            "checks": [{"name": c.name, "value": c.value, "threshold": str(c.threshold),
                        "passed": c.passed} for c in outcome.checks],
            "data": outcome.data})
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_jsonable(doc), f, indent=1)
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for c in CLAIMS.values():
            print(f"{c.id:32s} [{c.kind}] {c.statement} ({c.source})")
        return 0
    ids = args.claim or list(CLAIMS)
    unknown = [i for i in ids if i not in CLAIMS]
    if unknown:
        print(f"unknown claim(s) {unknown}; valid: {sorted(CLAIMS)}", file=sys.stderr)
        return 2
    ctx = Context(backend=args.backend, seed=args.seed, quick=not args.full)
    ctx.xp  # fail early with a clear message if the backend is unavailable
    results, rows = [], []
    for cid in ids:
        claim = CLAIMS[cid]
        outcome, seconds = run_claim(claim, ctx)
        results.append((claim, outcome, seconds))
        rows += outcome_rows(claim, outcome, seconds)
        if args.plots and claim.plot and outcome.checks:
            os.makedirs(args.plots, exist_ok=True)
            claim.plot(outcome.data, args.plots)
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
