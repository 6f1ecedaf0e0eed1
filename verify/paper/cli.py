"""Command line of ``python -m verify.paper EXPERIMENT``.

Prints what the experiment reproduces, its protocol (``--quick``: the reduced
CI protocol, labelled as such), and a table of our numbers (mean ± sd over
seeds) beside the published ones with a verdict per row, then the measured
qualitative findings. Exit status: 0 the experiment ran (verdicts are
information, not pass/fail), 1 it crashed, 2 bad input.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from data_loaders import DataError
from refdtp.training.records import write_json

from ..registry import jsonable
from . import experiments as _experiments  # noqa: F401  (registers the experiments)
from .registry import EXPERIMENTS, Context

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verify.paper",
                                description="Reproduce a published experiment and compare with the paper.")
    p.add_argument("experiment", nargs="?", metavar="EXPERIMENT", help=f"one of {sorted(EXPERIMENTS)}")
    p.add_argument("--list", action="store_true", help="list the experiments and their options")
    p.add_argument("--quick", action="store_true", help="reduced CI protocol (clearly labelled)")
    p.add_argument("--seeds", nargs="+", type=int, metavar="S", help="seeds (default: the protocol's)")
    p.add_argument("--out", metavar="DIR",
                   help="runs, figures and results (default paper-results/EXPERIMENT)")
    p.add_argument("--json", metavar="FILE", help="write every number to FILE")
    p.add_argument("--address", metavar="auto|HOST:PORT", help="Ray cluster (default $RAY_ADDRESS or local)")
    p.add_argument("--data-dir", metavar="D", help="dataset folder (default $REFDTP_DATA or ~/.cache/refdtp)")
    p.add_argument("--no-download", action="store_true", help="never download a dataset")
    p.add_argument("--set", nargs="+", action="extend", default=[], dest="sets", metavar="KEY=VALUE",
                   help="experiment option (see --list)")
    return p


def listing() -> str:
    """Every experiment: title, source, protocols and options."""
    out = []
    for e in EXPERIMENTS.values():
        out.append(f"{e.id}: {e.title}\n  source: {e.source}\n  protocol: {e.protocol}\n"
                   f"  --quick: {e.quick_protocol}")
        out += [f"  --set {k}=...: {v}" for k, v in e.params.items()]
    return "\n".join(out)


def parse_sets(exp, sets: list) -> dict:
    """{option: raw value} of ``--set`` items; ValueError for an option the experiment does not have."""
    params = {}
    for s in sets:
        key, sep, value = s.partition("=")
        if not sep or key not in exp.params:
            raise ValueError(f"--set {s!r}: {exp.id} options are {sorted(exp.params) or 'none'} (KEY=VALUE)")
        params[key] = value
    return params


def table(rows: list) -> str:
    """The comparison rows as an aligned text table."""
    head = ("quantity", "ours (mean ± sd)", "published", "verdict")
    cells = [head] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(exp, ctx: Context, result, seconds: float) -> str:
    """The printed comparison: header, protocol (labelled when quick), table, findings."""
    label = "QUICK (reduced CI protocol, not the published one)" if ctx.quick else "published protocol"
    lines = [f"{exp.id}: {exp.title}", f"source: {exp.source}", f"protocol [{label}]: "
             + (exp.quick_protocol if ctx.quick else exp.protocol)]
    lines += [f"note: {n}" for n in result.notes]
    if result.rows:
        lines += ["", table(result.rows)]
    if result.findings:
        lines += ["", "findings (measured; not pass conditions):"]
        lines += [f"  - {f.claim}: {f.verdict} ({f.measured})" for f in result.findings]
    lines.append(f"\n{time.strftime('%Y-%m-%d %H:%M')} - {seconds / 60:.1f} min")
    return "\n".join(lines)


def as_json(exp, ctx: Context, result, seconds: float) -> dict:
    """Everything measured, for --json and OUT/result.json (NaN and inf as null)."""
    doc = {
        "experiment": exp.id, "title": exp.title, "source": exp.source, "quick": ctx.quick,
        "protocol": exp.quick_protocol if ctx.quick else exp.protocol, "seconds": seconds,
        "params": ctx.params, "seeds": ctx.seeds, "notes": result.notes,
        "rows": [{"quantity": r.quantity, "ours": r.ours, "published": r.published, "verdict": r.verdict,
                  "unit": r.unit} for r in result.rows],
        "findings": [{"claim": f.claim, "measured": f.measured, "verdict": f.verdict}
                     for f in result.findings],
        "data": result.data}
    return jsonable(doc, nonfinite=lambda _: None)


def main(argv=None) -> int:
    """Parse ``argv``, run the experiment, print and write the comparison; return the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.list or not args.experiment:
        print(listing())
        return 0
    exp = EXPERIMENTS.get(args.experiment)
    if exp is None:
        print(f"error: unknown experiment {args.experiment!r}; choose one of {sorted(EXPERIMENTS)}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        params = parse_sets(exp, args.sets)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out or Path("paper-results") / (exp.id + ("-quick" if args.quick else "")))
    ctx = Context(quick=args.quick, seeds=args.seeds, out=str(out), address=args.address,
                  data_dir=args.data_dir, params=params, download=not args.no_download)
    start = time.time()
    try:
        result = exp.run(ctx)
    except (ValueError, DataError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:  # noqa: BLE001 (a crash is reported, with its traceback, as a failed run)
        traceback.print_exc()
        return 1
    seconds = time.time() - start
    out.mkdir(parents=True, exist_ok=True)
    if exp.plot is not None:
        for path in exp.plot(result, out):
            print(f"wrote {path}")
    text = report(exp, ctx, result, seconds)
    print(text)
    (out / "comparison.txt").write_text(text + "\n")
    doc = as_json(exp, ctx, result, seconds)
    write_json(out / "result.json", doc)
    if args.json:
        write_json(args.json, doc)
    return 0
