"""Command line of ``python -m refdtp.sweep``.

Exit status: 0 every run ended (completed, or diverged: a recorded finding),
1 some run failed (crash, out of memory, refused), 2 bad input (unknown preset
or key, empty grid, conflicting options, a changed spec, Ray missing),
130 interrupted (running runs saved a checkpoint; rerun the same command).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from ..training.records import write_json
from . import engine, summary
from .spec import (
    SpecError,
    SweepSpec,
    expand,
    parse_grid,
    resolve_points,
    spec_differences,
)

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
SPEC_NAME = "sweep.json"

EXAMPLES = """examples:
  python -m refdtp.sweep --out sweeps/demo --preset demo --algorithms bp ldrl --seeds 0 1 2 --steps 20
  python -m refdtp.sweep --out sweeps/lr --preset cifar10-ldrl --grid lr=0.02,0.05 --seeds 0 1 \\
      --epochs 5 --set channels=[16,16,32,32,64] diagnostics=true --cpus-per-run 2
  python -m refdtp.sweep --out sweeps/lr ... --address auto     # the same on a running Ray cluster
Rerunning the same command skips finished runs and resumes interrupted ones.
  python -m refdtp.sweep search --help       # hyper-parameter search with Optuna (refdtp.sweep.search)"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m refdtp.sweep", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run presets x algorithms x grid values x seeds, each point exactly as "
                    "python -m refdtp.train would, as Ray tasks; resumable; writes summary.csv, summary.md "
                    "and plots.")
    p.add_argument("--out", required=True, metavar="SWEEP_DIR",
                   help="sweep directory (runs in SWEEP_DIR/runs)")
    p.add_argument("--preset", nargs="+", action="extend", default=[], metavar="P",
                   help="training preset(s) (repeatable: --preset A --preset B, or --preset A B)")
    p.add_argument("--algorithms", nargs="+", default=[], metavar="ALG", help="set each preset's algorithm")
    p.add_argument("--seeds", nargs="+", type=int, default=[], metavar="S",
                   help="seeds (default: the preset's)")
    p.add_argument("--grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                   help="sweep a Config field over values (commas inside [...] do not split)")
    add_run_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-run lines")
    return p


def add_run_options(p: argparse.ArgumentParser, max_concurrent: int | None = None) -> None:
    """The options of every run of a sweep or a search: overrides, data, and Ray resources."""
    p.add_argument("--set", nargs="+", action="extend", default=[], dest="sets", metavar="KEY=VALUE",
                   help="override a Config field in every run")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs of every run")
    p.add_argument("--steps", type=int, metavar="N", help="at most N batches per epoch in every run")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--source", metavar="PATH", help="dataset source passed to refdtp.train --source")
    p.add_argument("--data-dir", metavar="D", help="dataset folder passed to every run")
    p.add_argument("--no-download", action="store_true", help="pass --no-download to every run")
    p.add_argument("--address", metavar="auto|HOST:PORT",
                   help="join this Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, metavar="N",
                   help="Ray CPUs per run; also its BLAS threads (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=None, metavar="F",
                   help="Ray GPUs per run (default 1 with --backend cupy, else 0)")
    p.add_argument("--max-concurrent", type=int, default=max_concurrent, metavar="N",
                   help="at most N runs at once" + ("" if max_concurrent is None else
                                                    f" (default {max_concurrent}: a reproducible order)"))


def data_argv(args) -> list:
    """The data options every run of a sweep or search gets: --data-dir (absolute), --no-download."""
    out = ["--data-dir", str(Path(args.data_dir).resolve())] if args.data_dir else []
    return out + (["--no-download"] if args.no_download else [])


def make_spec(args) -> SweepSpec:
    """The spec of parsed arguments (checks what needs no training code)."""
    gpus = args.gpus_per_run
    if args.backend == "cupy" and gpus == 0:
        raise SpecError("conflicting options: --backend cupy with --gpus-per-run 0")
    if args.backend == "numpy" and gpus:
        raise SpecError("conflicting options: --gpus-per-run > 0 needs --backend cupy")
    for name, v in (("--cpus-per-run", args.cpus_per_run), ("--max-concurrent", args.max_concurrent),
                    ("--epochs", args.epochs)):
        if v is not None and v <= 0:
            raise SpecError(f"{name} must be > 0, got {v}")
    if args.steps is not None and args.steps < 0:
        raise SpecError(f"--steps must be >= 0, got {args.steps}")
    source = args.source and str(Path(args.source).expanduser().resolve())  # workers may run elsewhere
    return SweepSpec(presets=list(args.preset), algorithms=list(args.algorithms), seeds=list(args.seeds),
                     grid=parse_grid(args.grid), sets=list(args.sets), epochs=args.epochs, steps=args.steps,
                     backend=args.backend, source=source)


def prepare(args) -> tuple:
    """(spec, points, sweep_dir): validated, resolved, and sweep.json written (or checked)."""
    spec = make_spec(args)
    sweep_dir = Path(args.out)
    runs_dir = sweep_dir / "runs"
    points = resolve_points(expand(spec), runs_dir)
    check_existing(sweep_dir, spec)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    runs = [{"name": p.name, "group": p.group, "preset": p.preset, "algorithm": p.algorithm, "seed": p.seed,
             "grid": p.values, "argv": p.argv, "config_hash": p.config_hash, "config": p.config}
            for p in points]
    write_json(sweep_dir / SPEC_NAME, {"spec": spec.to_dict(), "runs": runs})
    return spec, points, sweep_dir


def check_existing(sweep_dir: Path, spec: SweepSpec) -> None:
    """Refuse to run a different spec in a directory that holds one."""
    path = sweep_dir / SPEC_NAME
    if not path.is_file():
        if (sweep_dir / "runs").exists():
            raise SpecError(f"{sweep_dir} holds runs but no {SPEC_NAME}; choose another --out")
        return
    try:
        old = json.loads(path.read_text())["spec"]
    except (OSError, ValueError, KeyError) as exc:
        raise SpecError(f"{path} is unreadable ({exc}); choose another --out") from None
    diffs = spec_differences(old, spec.to_dict())
    if diffs:
        raise SpecError(f"{sweep_dir} holds another sweep; differences: {'; '.join(diffs)}. Rerun with "
                        f"the same spec, or choose another --out")


class Progress:
    """A tqdm bar over runs (done / running / failed, ETA) and one line per finished run."""

    def __init__(self, total: int, skipped: int, quiet: bool):
        self.quiet = quiet
        self.counts = {"done": skipped, "failed": 0}
        self.bar = tqdm(total=total, initial=skipped, unit="run", desc="sweep", dynamic_ncols=True,
                        disable=quiet or not sys.stderr.isatty())
        self.total = total

    def running(self, n: int) -> None:
        self.bar.set_postfix(done=self.counts["done"], running=n, failed=self.counts["failed"])

    def finished(self, point, result: dict, in_flight: int) -> None:
        ok = result["status"] in engine.FINAL_STATUSES
        self.counts["done" if ok else "failed"] += 1
        self.bar.update(1)
        self.running(in_flight)
        if not self.quiet:
            msg = f" ({result['message']})" if result["message"] and result["status"] != "completed" else ""
            self.bar.write(f"[{self.counts['done'] + self.counts['failed']}/{self.total}] {point.name}: "
                           f"{result['status']} (exit {result['exit_code']}), {result['seconds']:.0f} s"
                           f"{' resumed' if result.get('resumed') else ''}{msg}")

    def close(self) -> None:
        self.bar.close()


def execute(args, points: list, sweep_dir: Path, on_result=None) -> dict:
    """Run the unfinished points; returns {name: result} of the runs made now."""
    runs_dir = sweep_dir.resolve() / "runs"  # absolute: workers may run elsewhere
    jobs = [(p, runs_dir / p.name) for p in points
            if not engine.finished(runs_dir / p.name, p.config_hash, p.config["epochs"])]
    skipped = len(points) - len(jobs)
    say = (lambda *a: None) if args.quiet else (lambda text: print(text, flush=True))
    say(f"sweep {sweep_dir}: {len(points)} runs, {skipped} already finished, {len(jobs)} to run")
    results: dict = {}
    if not jobs:
        return results
    gpus = args.gpus_per_run if args.gpus_per_run is not None else (1.0 if args.backend == "cupy" else 0.0)
    for p, _ in jobs:
        p.argv = p.argv + data_argv(args)
    progress = Progress(len(points), skipped, args.quiet)
    started = engine.init_ray(args.address)
    driver = None

    def record(point, result):
        results[point.name] = result
        progress.finished(point, result, len(driver.in_flight))
        summary.write_all(sweep_dir, points, runs_dir, plots=False)
        if on_result is not None:
            on_result(point, result)
    try:
        driver = engine.Driver(jobs, args.cpus_per_run, gpus, args.max_concurrent, record)
        progress.running(min(len(jobs), args.max_concurrent or len(jobs)))
        driver.run()
    finally:
        progress.close()
        if started:
            engine.import_ray().shutdown()
    return results


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv=None, on_result=None) -> int:
    """Parse ``argv``, run the sweep, write the summary; return the exit status.

    Args:
        argv: arguments (default sys.argv[1:]).
        on_result: test hook called with (point, result) after each run ends.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["search"]:  # python -m refdtp.sweep search ...: Optuna search (refdtp.sweep.search)
        from .search import main as search_main
        return search_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    start, points, sweep_dir = time.time(), None, Path(args.out)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)  # kill PID stops the sweep like Ctrl-C
    try:
        engine.import_ray()
        _, points, sweep_dir = prepare(args)
        results = execute(args, points, sweep_dir, on_result)
    except (SpecError, engine.RayMissing) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if points is not None:
            summary.write_all(sweep_dir, points, sweep_dir / "runs", plots=False)
        print(f"interrupted: finished runs are kept; rerun the same command to continue ({sweep_dir})",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    rows = summary.write_all(sweep_dir, points, sweep_dir / "runs")
    if not args.quiet:
        print(summary.markdown(rows), end="")
        print(f"wrote {sweep_dir}/summary.csv, summary.md, curves.png"
              f"{', alignment.png' if (sweep_dir / 'alignment.png').exists() else ''} "
              f"({time.time() - start:.0f} s; {len(results)} run(s) made now)")
    bad = [r for r in rows if r["status"] not in engine.FINAL_STATUSES]
    return EXIT_FAILED if bad else 0
