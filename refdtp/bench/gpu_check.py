"""``python -m refdtp.bench.gpu_check``: reproduce every GPU figure of refdtp in one timed run.

Stages (each a subprocess with its own time limit; the whole run stays within
``--budget`` seconds, 660 by default; a stage that would overrun gets the time
left, or is skipped when under 5 s remain):

1. ``env``: ``python -m refdtp.backend --json`` (CuPy, device, CUDA runtime and
   driver, why CuPy is unusable if it is);
2. ``warmup``: the first and second training step of each algorithm on a tiny
   network (the first compiles every kernel with NVRTC; the difference is the
   compile time);
3. ``pytest``: ``pytest -m gpu -rs`` with REFDTP_REQUIRE_GPU=1 (fails loudly
   instead of skipping if CuPy cannot use the GPU);
4. ``theory``: ``verify.theory --backend cupy --quick`` (includes backend-parity);
5. ``bench``: ``refdtp.bench --batch 128 --peer torch`` (refdtp and both PyTorch
   peers, interleaved);
6. ``train-<alg>``: one short training of each algorithm on the bundled ``demo`` preset;
7. ``cifar10-ldrl`` / ``cifar10-bp``: a short CIFAR-10 run when ``--data-dir`` holds CIFAR-10;
8. ``sweep``: a tiny ``refdtp.sweep`` with ``--gpus-per-run 0.5`` (two runs share the GPU).

Every stage's output goes to ``OUT/NN-stage.log`` (OUT: ``--out``, else $OUT,
else ``gpu_check_out``); ``OUT/summary.json`` holds each stage's command, exit
status, seconds and whether it timed out. ``--backend numpy --tiny`` runs the
same stages on the CPU with tiny sizes (how the script itself is tested);
``--dry-run`` only prints the plan.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ALGORITHMS = ("ldrl", "bp", "dtp", "tp", "drl")
#: Seconds per stage (sum 660 = 11 minutes); override with --limit STAGE=SECONDS.
LIMITS = {"env": 20, "warmup": 60, "pytest": 120, "theory": 110, "bench": 120, "train": 20,
          "cifar": 45, "sweep": 60}


@dataclass
class Stage:
    """One command of the run."""
    name: str
    cmd: list
    limit: float
    env: dict = field(default_factory=dict)
    skip: str | None = None  # why the stage does not run here


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m refdtp.bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("numpy", "cupy"), default="cupy")
    p.add_argument("--out", help="output folder (default $OUT, else gpu_check_out)")
    p.add_argument("--data-dir", help="dataset folder; CIFAR-10 stages run when it holds CIFAR-10")
    p.add_argument("--budget", type=float, default=660.0, help="seconds for the whole run")
    p.add_argument("--limit", nargs="+", default=[], metavar="STAGE=S", help="per-stage limits")
    p.add_argument("--stages", nargs="+", help="run only stages whose name starts with one of these")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (CPU self-test of this script)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return p.parse_args(argv)


def has_cifar10(data_dir) -> bool:
    """True when ``data_dir`` holds the CIFAR-10 python batches (or their archive)."""
    if not data_dir:
        return False
    root = Path(data_dir)
    return any(root.glob("**/data_batch_1")) or any(root.glob("**/cifar-10-python.tar.gz"))


def sweep_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("refdtp.sweep") is not None


def plan(args, out: Path) -> list:
    """The stages, in order of priority."""
    py, be, tiny = sys.executable, args.backend, args.tiny
    lim = dict(LIMITS, **{k: float(v) for k, v in (s.split("=", 1) for s in args.limit)})
    stages = [Stage("env", [py, "-m", "refdtp.backend", "--json"], lim["env"]),
              Stage("warmup", [py, "-m", "refdtp.bench.gpu_check_warmup", "--backend", be]
                    + (["--tiny"] if tiny else []), lim["warmup"])]
    tests = ["tests/test_backend.py"] if tiny else []
    require = {"REFDTP_REQUIRE_GPU": "1"} if be == "cupy" else {}
    stages.append(Stage("pytest", [py, "-m", "pytest", "-m", "gpu", "-rs", "-q", "-p", "no:cacheprovider",
                                   *tests], lim["pytest"], env=require))
    claims = ["--claim", "backend-parity", "exact-output-layer"] if tiny else []
    stages.append(Stage("theory", [py, "-m", "verify.theory", "--backend", be, "--quick", *claims,
                                   "--json", str(out / "theory.json")], lim["theory"]))
    sizes = (["--batch", "4", "--width-scale", "0.05", "--iter-scale", "0.02", "--steps", "2",
              "--gemm-size", "64"] if tiny else ["--batch", "128", "--steps", "5"])
    stages.append(Stage("bench", [py, "-m", "refdtp.bench", "--backend", be, *sizes, "--peer", "torch",
                                  "--json", str(out / "bench.json")], lim["bench"]))
    short = ["--epochs", "1", "--steps", "2" if tiny else "20", "--quiet", "--no-download"]
    for alg in ALGORITHMS:
        stages.append(Stage(f"train-{alg}", [py, "-m", "refdtp.train", "--preset", "demo", "--backend", be,
                                             "--set", f"algorithm={alg}", *short,
                                             "--out", str(out / "runs" / f"demo-{alg}")], lim["train"]))
    cifar = None if has_cifar10(args.data_dir) else "no CIFAR-10 under --data-dir"
    for preset in ("cifar10-ldrl", "cifar10-bp"):
        stages.append(Stage(preset, [py, "-m", "refdtp.train", "--preset", preset, "--backend", be,
                                     "--epochs", "1", "--steps", "2" if tiny else "50", "--quiet",
                                     "--no-download", "--data-dir", str(args.data_dir),
                                     "--out", str(out / "runs" / preset)], lim["cifar"], skip=cifar))
    gpus = ["--gpus-per-run", "0.5"] if be == "cupy" else []
    stages.append(Stage("sweep", [py, "-m", "refdtp.sweep", "--out", str(out / "sweep"), "--preset", "demo",
                                  "--algorithms", "bp", "ldrl", "--seeds", "0", "--epochs", "1", "--steps",
                                  "2" if tiny else "10", "--backend", be, *gpus, "--quiet"], lim["sweep"],
                        skip=None if sweep_available() else "refdtp.sweep is not installed"))
    if args.stages:
        stages = [s for s in stages if s.name.startswith(tuple(args.stages))]
    return stages


def run_stage(stage: Stage, log: Path, limit: float) -> dict:
    """Run one stage with a time limit, output to ``log``; its record for summary.json."""
    rec = {"cmd": stage.cmd, "limit_s": limit}
    t = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(stage.cmd) + "\n")
        f.flush()
        try:
            proc = subprocess.run(stage.cmd, stdout=f, stderr=subprocess.STDOUT, timeout=limit,
                                  env={**os.environ, **stage.env}, check=False)
            rec.update(rc=proc.returncode, timed_out=False)
        except subprocess.TimeoutExpired:
            rec.update(rc=None, timed_out=True)
    rec["seconds"] = round(time.perf_counter() - t, 2)
    with open(log, "a") as f:
        f.write(f"\n[gpu_check] {stage.name}: rc={rec['rc']} timed_out={rec['timed_out']} "
                f"{rec['seconds']} s (limit {limit:.0f} s)\n")
    return rec


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or "gpu_check_out")
    stages = plan(args, out)
    if args.dry_run:
        for s in stages:
            print(f"{s.name:14s} {s.limit:5.0f} s  " + (f"SKIP ({s.skip})" if s.skip else " ".join(s.cmd)))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    summary, start = {}, time.perf_counter()
    for i, s in enumerate(stages):
        left = args.budget - (time.perf_counter() - start)
        if s.skip or left < 5:
            summary[s.name] = {"skipped": s.skip or f"budget spent ({left:.0f} s left)"}
        else:
            summary[s.name] = run_stage(s, out / f"{i:02d}-{s.name}.log", min(s.limit, left))
        r = summary[s.name]
        print(f"{s.name:14s} " + (f"skipped: {r['skipped']}" if "skipped" in r else
                                  f"rc={r['rc']} {'TIMED OUT ' if r['timed_out'] else ''}{r['seconds']} s"),
              flush=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    failed = [k for k, r in summary.items() if "skipped" not in r and r["rc"] != 0]
    total = time.perf_counter() - start
    print(f"total {total:.0f} s; failed or timed out: {failed or 'none'}; logs in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
