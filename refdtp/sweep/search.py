"""``python -m refdtp.sweep search``: hyper-parameter search with Optuna, each trial a sweep run on Ray.

Optuna's TPE sampler (seeded) proposes a point of the space (:mod:`.space`);
the point becomes ``--set`` overrides of one preset, and each of its seeds is
one ``python -m refdtp.train`` run in ``DIR/runs/trial<NNNN>-seed<S>/``
(exactly the sweep's run layout, run by :mod:`.engine` as Ray tasks). The
trial's objective is the mean over seeds of the runs' ``best_test_top1`` (or
``final_test_top1``) from ``report.json``. A run that diverged, crashed or was
refused scores 0 (the worst value), its status recorded as the trial's
``status`` user attribute: a finding, never a crash of the search.

The study lives in Optuna's RDB storage (default SQLite ``DIR/study.db``;
``--storage URL`` for a database shared by several machines). Rerunning the
same command continues: finished trials are kept, trials left running by an
interrupted driver (same host and DIR) are resumed from their checkpoints, and
a trial whose runs already finished is scored without running again. The
search definition is stored with the study; changing it is refused.

Exit status: 0 the study holds ``--trials`` finished trials (diverged trials
included), 1 some run crashed or was refused, 2 bad input (or Optuna/Ray
missing), 130 interrupted (rerun the same command).
"""
from __future__ import annotations

import argparse
import math
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from . import engine, search_report
from .cli import add_run_options, data_argv
from .space import check_against_config, parse_space, space_dict, to_sets
from .spec import SpecError, SweepSpec, expand, resolve_points

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
OBJECTIVES = ("best_test_top1", "final_test_top1")
SPEC_ATTR = "refdtp_search"
OPTUNA_HINT = "the search needs Optuna: pip install 'refdtp[sweep]' (or pip install optuna)"

EXAMPLES = """space: NAME=KIND:LOW:HIGH, KIND log | float | int; NAME a numeric Config field, or FIELD_scale
  to multiply every entry of a per-block list field (feedback_lr_scale=log:0.01:10 searches one factor
  on the preset's feedback_lr list). --space-file FILE.json: {"lr": "log:1e-4:1e-1", ...}.
examples:
  python -m refdtp.sweep search --out sweeps/search-demo --preset demo --space lr=log:1e-3:5e-2 \\
      beta=float:0.3:1.0 feedback_lr_scale=log:0.1:10 --trials 8 --epochs 1 --steps 30
  python -m refdtp.sweep search --out sweeps/search-cifar10-dtp --preset cifar10-dtp \\
      --set channels=[16,16,32,32,64] feedback_iterations=[5,5,5,5,5] \\
      --data-dir data/cifar10 --no-download --epochs 1 --steps 100 --trials 12 \\
      --space lr=log:1e-4:3e-2 beta=float:0.1:1.0 feedback_lr_scale=log:1e-3:1 feedback_sigma_scale=log:0.1:2
Rerunning the same command continues the study (a larger --trials adds trials)."""


class OptunaMissing(RuntimeError):
    """Optuna is not installed."""


def import_optuna():
    """The optuna module (quiet), or OptunaMissing with the install command."""
    try:
        import optuna
    except ImportError:
        raise OptunaMissing(OPTUNA_HINT) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m refdtp.sweep search", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search hyper-parameters of one preset with Optuna (TPE); each trial is a sweep run "
                    "on Ray; the study is resumable; writes DIR/search.md and DIR/search.json.")
    p.add_argument("--out", required=True, metavar="DIR", help="search directory (runs in DIR/runs)")
    p.add_argument("--preset", required=True, metavar="P", help="training preset")
    p.add_argument("--algorithms", "--algorithm", nargs=1, default=[], metavar="ALG",
                   help="set the preset's algorithm (one per search)")
    p.add_argument("--space", nargs="+", action="extend", default=[], metavar="NAME=KIND:LOW:HIGH",
                   help="a searched dimension (see below)")
    p.add_argument("--space-file", metavar="FILE.json", help="dimensions as a JSON object")
    p.add_argument("--trials", type=int, required=True, metavar="N", help="finished trials wanted in all")
    p.add_argument("--objective", choices=OBJECTIVES, default="best_test_top1",
                   help="maximised (default %(default)s)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default sqlite:///DIR/study.db)")
    p.add_argument("--study", metavar="NAME", help="study name (default: the name of DIR)")
    p.add_argument("--sampler-seed", type=int, default=0, metavar="S", help="TPE seed (default 0)")
    p.add_argument("--startup-trials", type=int, default=4, metavar="N",
                   help="random trials before TPE models the results (default 4)")
    p.add_argument("--no-baseline", action="store_true",
                   help="do not make the preset's own values (every _scale 1) the first trial of a new study")
    p.add_argument("--seeds", nargs="+", type=int, default=[], metavar="S", help="seeds of every trial")
    add_run_options(p, max_concurrent=1)
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    return p


def _check_numbers(args) -> None:
    for name, v in (("--trials", args.trials), ("--cpus-per-run", args.cpus_per_run),
                    ("--max-concurrent", args.max_concurrent), ("--epochs", args.epochs)):
        if v is not None and v <= 0:
            raise SpecError(f"{name} must be > 0, got {v}")
    if args.steps is not None and args.steps < 0:
        raise SpecError(f"--steps must be >= 0, got {args.steps}")
    if args.startup_trials < 0:
        raise SpecError(f"--startup-trials must be >= 0, got {args.startup_trials}")


def sweep_spec(spec: dict, sets: list, seed) -> SweepSpec:
    """The one-point sweep spec of a trial's seed."""
    return SweepSpec(presets=[spec["preset"]], algorithms=[spec["algorithm"]] if spec["algorithm"] else [],
                     seeds=[] if seed is None else [seed], sets=list(spec["sets"]) + list(sets),
                     epochs=spec["epochs"], steps=spec["steps"], backend=spec["backend"],
                     source=spec["source"])


def make_spec(args) -> tuple:
    """(spec dict, dimensions, base config): validated; every space bound is checked by refdtp.train."""
    _check_numbers(args)
    dims = parse_space(args.space, args.space_file)
    source = args.source and str(Path(args.source).expanduser().resolve())
    spec = {"preset": args.preset, "algorithm": args.algorithms[0] if args.algorithms else None,
            "seeds": list(args.seeds), "sets": list(args.sets), "epochs": args.epochs, "steps": args.steps,
            "backend": args.backend, "source": source, "objective": args.objective, "space": space_dict(dims)}
    runs_dir = Path(args.out) / "runs"
    base = resolve_points(expand(sweep_spec(spec, [], None)), runs_dir)[0]
    check_against_config(dims, base.config, [s.partition("=")[0].strip() for s in args.sets])
    spec["algorithm"] = base.algorithm
    spec["seeds"] = spec["seeds"] or [base.seed]
    spec["base_config_hash"] = base.config_hash  # the preset itself: an edited preset is another search
    for end in ("low", "high"):  # both ends of every range must be a config refdtp.train accepts
        params = {d.name: getattr(d, end) for d in dims}
        try:
            resolve_points(expand(sweep_spec(spec, to_sets(dims, params, base.config), None)), runs_dir)
        except SpecError as exc:
            raise SpecError(f"--space: the {end} end of the space is refused: {exc}") from None
    return spec, dims, base.config


def spec_differences(old: dict, new: dict) -> list:
    """What differs between the stored search definition and this one."""
    keys = [k for k in new if k != "space" and (k in old or k != "base_config_hash")]
    out = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new[k]]
    o, n = old.get("space", {}), new["space"]
    out += [f"space {k}: {o.get(k, 'absent')} -> {n.get(k, 'absent')}"
            for k in list(o) + [k for k in n if k not in o] if o.get(k) != n.get(k)]
    return out


def baseline_params(dims: list, base: dict):
    """The preset's own point of the space (every ``_scale`` 1), or None when it lies outside."""
    params = {d.name: 1.0 if d.is_scale else base[d.field] for d in dims}
    if not all(d.low <= params[d.name] <= d.high for d in dims):
        return None
    return {d.name: int(params[d.name]) if d.kind == "int" else float(params[d.name]) for d in dims}


def open_study(optuna, args, spec: dict, dims: list, base: dict):
    """Create or load the study (a new one starts with the preset's own values); refuse another search."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = args.study or out.resolve().name
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    load_if_exists=True)
    except Exception as exc:  # noqa: BLE001 (bad URL, unreachable database: one-line message)
        raise SpecError(f"--storage {storage}: {str(exc).strip().splitlines()[0]}") from None
    old = study.user_attrs.get(SPEC_ATTR)
    if old is None and study.trials:
        raise SpecError(f"study {name!r} in {storage} was not made by refdtp.sweep search; choose --study")
    if old is None:
        study.set_user_attr(SPEC_ATTR, spec)
        params = None if args.no_baseline else baseline_params(dims, base)
        if params is not None:
            study.enqueue_trial(params, user_attrs={"baseline": True})
    elif spec_differences(old, spec):
        raise SpecError(f"study {name!r} holds another search; differences: "
                        f"{'; '.join(spec_differences(old, spec))}. Rerun with the same options, or "
                        f"choose another --study/--out")
    study.sampler = optuna.samplers.TPESampler(seed=args.sampler_seed + len(study.trials),
                                               n_startup_trials=args.startup_trials)
    return study


def run_objective(run_dir: Path, result: dict, objective: str) -> tuple:
    """(value, status, message) of one finished run: 0.0 unless it completed with a finite value."""
    rep = engine.read_report(run_dir) or {}
    status = result.get("status") or rep.get("status") or "failed"
    final = (rep.get("final") or {}).get("test_top1")
    value = rep.get("best_test_top1") if objective == "best_test_top1" else final
    if status != "completed":
        return 0.0, status, result.get("message") or rep.get("message") or ""
    if value is None or not math.isfinite(float(value)):
        return 0.0, "failed", f"no finite {objective} in report.json"
    return float(value), status, ""


class Search:
    """The driver: ask trials, run their points on Ray, tell the objectives."""

    def __init__(self, optuna, study, args, spec: dict, dims: list, base: dict):
        self.optuna, self.study, self.args, self.spec = optuna, study, args, spec
        self.dims, self.base = dims, base
        self.out = Path(args.out).resolve()
        self.runs_dir = self.out / "runs"
        self.driver_id = f"{socket.gethostname()}:{self.out}"
        self.active: dict = {}  # trial number -> {"trial", "points", "results", "start"}
        self.owner: dict = {}  # run name -> trial number
        self.driver = None
        self.say = (lambda *a: None) if args.quiet else (lambda text: print(text, flush=True))

    def finished_count(self) -> int:
        states = (self.optuna.trial.TrialState.COMPLETE,)
        return len(self.study.get_trials(deepcopy=False, states=states))

    def stale(self) -> list:
        """Trials this driver (host and DIR) left running: resumed first."""
        running = self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.RUNNING,))
        return [t for t in running if t.user_attrs.get("driver") == self.driver_id]

    def points(self, number: int, sets: list) -> list:
        pts = []
        for seed in self.spec["seeds"]:
            p = resolve_points(expand(sweep_spec(self.spec, sets, seed)), self.runs_dir)[0]
            p.name = f"trial{number:04d}-seed{p.seed}"
            p.argv += data_argv(self.args)
            pts.append(p)
        return pts

    def start(self, trial) -> None:
        """Set up a trial's runs: queue the unfinished ones, score at once if none is left."""
        params = {d.name: trial.params[d.name] for d in self.dims}
        sets = to_sets(self.dims, params, self.base)
        pts = self.points(trial.number, sets)
        for key, value in (("driver", self.driver_id), ("sets", sets),
                           ("run_dirs", [str(self.runs_dir / p.name) for p in pts])):
            trial.set_user_attr(key, value)
        entry = {"trial": trial, "points": pts, "results": {}, "start": time.time()}
        self.active[trial.number] = entry
        self.say(f"trial {trial.number}: {' '.join(sets)}")
        for p in pts:
            run_dir = self.runs_dir / p.name
            if engine.finished(run_dir, p.config_hash, p.config["epochs"]):
                rep = engine.read_report(run_dir) or {}
                entry["results"][p.name] = {"status": rep.get("status"), "message": rep.get("message", "")}
            else:
                self.owner[p.name] = trial.number
                self.driver.jobs.append((p, run_dir))
        if len(entry["results"]) == len(pts):
            self.finish(trial.number)

    def on_result(self, point, result: dict) -> None:
        number = self.owner.pop(point.name)
        entry = self.active[number]
        entry["results"][point.name] = result
        if len(entry["results"]) == len(entry["points"]):
            self.finish(number)

    def finish(self, number: int) -> None:
        """Score a trial whose runs all ended, tell the study, rewrite the report."""
        entry = self.active.pop(number)
        scored = [run_objective(self.runs_dir / p.name, entry["results"][p.name], self.spec["objective"])
                  for p in entry["points"]]
        bad = [s for s in scored if s[1] != "completed"]
        status, message = (bad[0][1], bad[0][2]) if bad else ("completed", "")
        value = 0.0 if bad else sum(s[0] for s in scored) / len(scored)
        trial = entry["trial"]
        for key, v in (("status", status), ("message", message[:300]), ("values", [s[0] for s in scored]),
                       ("minutes", (time.time() - entry["start"]) / 60)):
            trial.set_user_attr(key, v)
        self.study.tell(trial, value)
        self.say(f"trial {number}: {status}, {self.spec['objective']} {100 * value:.2f} %"
                 f"{f' ({message[:120]})' if message else ''}")
        search_report.write(self.out, self.study, self.spec)

    def _more(self) -> bool:
        return self.finished_count() + len(self.active) < self.args.trials

    def _fill(self, stale: list) -> None:
        limit = self.driver.max_concurrent
        while len(self.driver.jobs) + len(self.driver.in_flight) < limit and (stale or self._more()):
            if stale:
                self.start(self.optuna.trial.Trial(self.study, stale.pop(0)._trial_id))
            else:
                self.start(self.study.ask({d.name: d.distribution() for d in self.dims}))
        self.driver._submit()

    def run(self) -> None:
        """Run until the study holds ``--trials`` finished trials (Ctrl-C: runs checkpoint, re-raised)."""
        gpus = self.args.gpus_per_run
        gpus = gpus if gpus is not None else (1.0 if self.args.backend == "cupy" else 0.0)
        stale = self.stale()
        if not stale and not self._more():
            return
        ray = engine.import_ray()
        started = engine.init_ray(self.args.address)
        try:
            self.driver = engine.Driver([], self.args.cpus_per_run, gpus, self.args.max_concurrent,
                                        self.on_result)
            try:
                self._fill(stale)
                while self.driver.in_flight:
                    done, _ = ray.wait(list(self.driver.in_flight), num_returns=1, timeout=1.0)
                    for ref in done:
                        self.driver._collect(ref)
                    self._fill(stale)
            except KeyboardInterrupt:
                self.driver.cancel()
                raise
        finally:
            if started:
                ray.shutdown()


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    """Parse ``argv`` (after ``search``), run the search, write the report; return the exit status."""
    try:
        args = build_parser().parse_args(sys.argv[2:] if argv is None else list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    study = spec = None
    try:
        optuna = import_optuna()
        engine.import_ray()
        spec, dims, base = make_spec(args)
        study = open_study(optuna, args, spec, dims, base)
        search = Search(optuna, study, args, spec, dims, base)
        search.say(f"search {args.out}: {search.finished_count()} of {args.trials} trials finished")
        search.run()
    except (SpecError, engine.RayMissing, OptunaMissing) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if study is not None:
            search_report.write(Path(args.out), study, spec)
        print(f"interrupted: finished trials are kept; rerun the same command to continue ({args.out})",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    data = search_report.write(Path(args.out), study, spec)
    if not args.quiet:
        print(search_report.markdown(data), end="")
        print(f"wrote {args.out}/search.md, search.json")
    crashed = [t for t in data["trials"] if t["state"] == "COMPLETE" and t["status"] in ("failed", "refused")]
    return EXIT_FAILED if crashed else 0
