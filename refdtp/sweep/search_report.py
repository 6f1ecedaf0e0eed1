"""The results of a search: ``search.json`` and ``search.md``, rebuilt from the Optuna study."""
from __future__ import annotations

import math
from pathlib import Path

from ..training.records import write_json
from ..training.storage import atomic_write


def trial_rows(study) -> list:
    """One dict per trial: number, state, value, params, status, sets, message, run_dirs."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "status": a.get("status", t.state.name.lower()),
                     "params": dict(t.params), "sets": list(a.get("sets", [])),
                     "message": a.get("message", ""), "run_dirs": list(a.get("run_dirs", [])),
                     "minutes": a.get("minutes"), "baseline": bool(a.get("baseline"))})
    return rows


def _key(row: dict) -> tuple:
    v = row["value"]
    return (v is None or not math.isfinite(v), -(v if v is not None and math.isfinite(v) else 0.0),
            row["number"])


def best_row(rows: list):
    """The completed trial with the best objective whose runs all ended well (else the best completed)."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    good = [r for r in done if r["status"] == "completed"] or done
    return min(good, key=_key) if good else None


def summarize(study, spec: dict) -> dict:
    """The search.json content."""
    rows = trial_rows(study)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    failed = [r for r in done if r["status"] != "completed"]
    return {"study": study.study_name, "spec": spec, "n_trials": len(rows), "n_finished": len(done),
            "n_failed": len(failed), "n_running": sum(r["state"] == "RUNNING" for r in rows),
            "best": best_row(rows), "trials": sorted(rows, key=_key)}


def _pct(v) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"


def _fmt_param(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(data: dict) -> str:
    """search.md: the spec, the best configuration, and every trial sorted by objective."""
    spec, best = data["spec"], data["best"]
    names = list(spec["space"])
    lines = [f"# Search `{data['study']}`", "",
             f"preset `{spec['preset']}`, algorithm `{spec['algorithm']}`, seeds {spec['seeds']}, "
             f"epochs {spec['epochs'] or 'preset'}, steps/epoch {spec['steps'] or 'all'}, "
             f"objective `{spec['objective']}`",
             f"fixed: `{' '.join(spec['sets']) or '-'}`",
             "space: " + ", ".join(f"`{k}={v}`" for k, v in spec["space"].items()), "",
             f"{data['n_finished']} finished trial(s), {data['n_failed']} failed or diverged "
             f"(scored 0), {data['n_running']} unfinished", ""]
    if best is not None:
        lines += [f"**best: trial {best['number']}, {spec['objective']} {_pct(best['value'])} %** "
                  f"({best['status']})", "", "```",
                  f"--preset {spec['preset']} --set algorithm={spec['algorithm']} {' '.join(best['sets'])}",
                  "```", ""]
    head = ["trial", f"{spec['objective']} %", "status"] + names + ["minutes", "message"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in data["trials"]:
        mins = r["minutes"]
        cells = [f"{r['number']}{' (preset)' if r.get('baseline') else ''}", _pct(r["value"]), r["status"]]
        cells += [_fmt_param(r["params"][n]) if n in r["params"] else "" for n in names]
        cells += ["" if mins is None else f"{mins:.1f}", (r["message"] or "").replace("|", "/")[:80]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(out: Path, study, spec: dict) -> dict:
    """Write search.json and search.md atomically; returns the summary."""
    data = summarize(study, spec)
    write_json(out / "search.json", data)
    atomic_write(out / "search.md", markdown(data).encode())
    return data
