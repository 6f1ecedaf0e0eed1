"""Running the points of a sweep as Ray tasks.

Each point is one Ray task (``num_cpus`` / ``num_gpus`` resource requests)
that calls the training CLI's ``main(argv)`` in the worker, with ``--out
SWEEP_DIR/runs/<name> --quiet --threads <cpus per run>`` (and ``--resume``
when the run directory already holds a checkpoint). The run's printed output
goes to ``RUN_DIR/train.log``. A task never raises: it returns the exit status
and the run's message, and writes them to ``RUN_DIR/sweep_status.json``.

The driver decides what to run: a run whose ``report.json`` says completed
(or diverged: deterministic, it would diverge again) with the point's config
hash is skipped; anything else runs, resuming from its checkpoint when there
is one. A Ctrl-C of the driver cancels the running tasks, which makes the
training save a mid-epoch checkpoint, exactly as Ctrl-C of ``refdtp.train``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

from ..training.checkpoint import CHECKPOINT_NAME, previous_path
from ..training.records import REPORT_NAME, write_json

STATUS_NAME, LOG_NAME = "sweep_status.json", "train.log"
#: Report statuses that a rerun does not repeat.
FINAL_STATUSES = ("completed", "diverged")
INSTALL_HINT = "the sweep needs Ray: pip install 'refdtp[sweep]' (or pip install 'ray[default]' optuna)"


class RayMissing(RuntimeError):
    """Ray is not installed."""


def import_ray():
    """The ray module, or RayMissing with the install command."""
    try:
        import ray
    except ImportError:
        raise RayMissing(INSTALL_HINT) from None
    return ray


def read_report(run_dir: Path):
    """The run's report.json as a dict, or None."""
    try:
        return json.loads((Path(run_dir) / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return None


def has_checkpoint(run_dir: Path) -> bool:
    """True when the run directory holds a checkpoint to resume from."""
    ckpt = Path(run_dir) / CHECKPOINT_NAME
    return ckpt.is_file() or previous_path(ckpt).is_file()


def finished(run_dir: Path, config_hash: str, epochs: int) -> bool:
    """True when the run directory holds a final report of this config (skip it)."""
    rep = read_report(run_dir)
    if rep is None or rep.get("config_hash") != config_hash or rep.get("status") not in FINAL_STATUSES:
        return False
    return rep["status"] != "completed" or rep.get("epochs_done", 0) >= epochs


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def run_point(argv: list, run_dir: str, threads: int) -> dict:
    """Train one point in this process (the body of the Ray task); never raises.

    Returns:
        {"run_dir", "exit_code", "status", "message", "seconds", "resumed"}.
    """
    from ..training.cli import main as train_main
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resumed = has_checkpoint(run_dir)
    full = list(argv) + ["--out", str(run_dir), "--quiet", "--threads", str(threads)]
    full += ["--resume"] if resumed else []
    start, log = time.time(), run_dir / LOG_NAME
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} python -m refdtp.train {' '.join(full)}", flush=True)
        try:
            code = train_main(full)
        except KeyboardInterrupt:
            code = 130
        except BaseException:  # noqa: BLE001 (a crash of one run is recorded, never raised into the sweep)
            traceback.print_exc()
            code = 1
    rep = read_report(run_dir) or {}
    fresh = rep and rep.get("exit_code") == code
    by_code = {0: "completed", 2: "refused", 130: "interrupted"}
    status = rep.get("status") if fresh else by_code.get(code, "failed")
    message = (rep.get("message") if fresh else "") or ("" if code == 0 else _last_line(log))
    result = {"run_dir": str(run_dir), "exit_code": int(code), "status": status, "message": message,
              "seconds": time.time() - start, "resumed": resumed}
    write_json(run_dir / STATUS_NAME, result)
    return result


def init_ray(address=None):
    """Connect to Ray: ``address`` or $RAY_ADDRESS joins that cluster, else a local one.

    Returns:
        True when this call started Ray (the caller shuts it down).
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"include_dashboard": False, "log_to_driver": False}
    if address and address != "local":
        ray.init(address=address, **kwargs)
    else:
        ray.init(**kwargs)
    return True


def remote_runner(cpus: float, gpus: float):
    """``run_point`` as a Ray remote function with these resource requests."""
    ray = import_ray()
    return ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(run_point)


class Driver:
    """Submit points as Ray tasks, at most ``max_concurrent`` at once, and collect results.

    Args:
        jobs: [(point, run_dir)] to run.
        cpus, gpus: resources per run.
        max_concurrent: most tasks in flight (None: all).
        on_result: called with (point, result dict) as each run ends.
    """

    def __init__(self, jobs, cpus: float, gpus: float, max_concurrent=None, on_result=None):
        self.ray = import_ray()
        self.jobs, self.cpus, self.gpus = list(jobs), cpus, gpus
        self.max_concurrent = max_concurrent or max(1, len(self.jobs))
        self.on_result = on_result
        self.in_flight: dict = {}
        self.runner = remote_runner(cpus, gpus)

    def _submit(self) -> None:
        threads = max(1, math.floor(self.cpus))
        while self.jobs and len(self.in_flight) < self.max_concurrent:
            point, run_dir = self.jobs.pop(0)
            ref = self.runner.remote(point.argv, str(run_dir), threads)
            self.in_flight[ref] = (point, run_dir)

    def _collect(self, ref) -> None:
        point, run_dir = self.in_flight.pop(ref)
        try:
            result = self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 (the worker died: killed, out of memory, node lost)
            msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            result = {"run_dir": str(run_dir), "exit_code": 1, "status": "failed", "message": msg[:300],
                      "seconds": float("nan"), "resumed": False}
            write_json(Path(run_dir) / STATUS_NAME, result)
        if self.on_result is not None:
            self.on_result(point, result)

    def run(self) -> None:
        """Run every job; on KeyboardInterrupt cancel the running tasks (they checkpoint) and re-raise."""
        try:
            self._submit()
            while self.in_flight:
                done, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=1.0)
                for ref in done:
                    self._collect(ref)
                self._submit()
        except KeyboardInterrupt:
            self.cancel()
            raise

    def cancel(self, grace_s: float = 60.0) -> None:
        """Interrupt the running tasks (a KeyboardInterrupt in each) and wait for them to save."""
        for ref in self.in_flight:
            self.ray.cancel(ref, force=False)
        deadline = time.time() + grace_s
        while self.in_flight and time.time() < deadline:
            done, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=1.0)
            for ref in done:
                self.in_flight.pop(ref)
        print(f"interrupted; {len(self.jobs)} run(s) not started", file=sys.stderr, flush=True)
