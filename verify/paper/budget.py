"""``algorithms-at-budget``: BP, L-DRL, DRL, vanilla DTP and TP at one fixed training budget.

Default: CIFAR-10, SimpleVGG at 1/8 width (channels [16, 16, 32, 32, 64]),
2 epochs x 60 steps of batch 128 (120 steps), seeds 123-125, the presets
otherwise unchanged (cifar10-bp / -ldrl / -drl / -dtp / -tp), diagnostics on.
``--set dataset=mnist`` (or fmnist) uses the LeNet preset of that dataset
with each algorithm. The paper's qualitative claims are measured and reported
with what was found; a diverged baseline is a recorded finding.
"""
from __future__ import annotations

import math

from .registry import Finding, Result, Row, experiment, fmt, mean_sd
from .training import (
    accuracies,
    by_group,
    completed,
    final_angles,
    run_sweep,
    status_text,
)

ALGORITHMS = ("bp", "ldrl", "drl", "dtp", "tp")
WIDTH = "[16,16,32,32,64]"


def _options(ctx) -> dict:
    q = ctx.quick
    o = {"dataset": ctx.param("dataset", "cifar10"), "epochs": ctx.param("epochs", 1 if q else 2),
         "steps": ctx.param("steps", 2 if q else 60),
         "channels": ctx.param("channels", "[4,4,8,8,8]" if q else WIDTH),
         "algorithms": ctx.param("algorithms", ",".join(ALGORITHMS)).split(",")}
    unknown = sorted(set(o["algorithms"]) - set(ALGORITHMS))
    if unknown or o["dataset"] not in ("cifar10", "mnist", "fmnist"):
        raise ValueError(f"algorithms must be among {ALGORITHMS} and dataset cifar10, mnist or fmnist")
    o["seeds"] = ctx.seeds or ([123, 124] if q else [123, 124, 125])
    return o


def _sweep(ctx, o: dict) -> dict:
    """{algorithm: summary rows} of the sweep."""
    sets = ["diagnostics=true"]
    if o["dataset"] == "cifar10":
        presets, algos = [f"cifar10-{a}" for a in o["algorithms"]], ()
        sets.append(f"channels={o['channels']}")
    else:
        presets, algos = [f"{o['dataset']}-ldrl"], o["algorithms"]
    rows = run_sweep(ctx, "sweep", presets, o["seeds"], sets, o["epochs"], o["steps"], algorithms=algos)
    return by_group(rows, "algorithm")


def _rows(per_alg: dict) -> list:
    out = []
    for alg, rows in per_alg.items():
        out.append(Row(f"{alg}: final test top-1", accuracies(rows), lower_is_better=False, unit=" %"))
    for alg, rows in per_alg.items():
        if alg == "bp":
            continue
        angles = [final_angles(r["run_dir"]) for r in completed(rows)]
        for block in (angles[0] if angles else {}):
            out.append(Row(f"{alg}: angle to BP, {block}", [a.get(block, math.nan) for a in angles],
                           unit=" deg"))
    return out


def _findings(per_alg: dict, o: dict) -> list:
    acc = {a: mean_sd(accuracies(rows)) for a, rows in per_alg.items()}
    budget = f"{o['epochs']} x {o['steps']} steps"
    out = []
    if "bp" in acc and "ldrl" in acc:
        gap = acc["bp"][0] - acc["ldrl"][0]
        out.append(Finding(f"L-DRL within 1 point of BP at equal steps ({budget})",
                           f"BP {fmt(*acc['bp'][:2], 2)} %, L-DRL {fmt(*acc['ldrl'][:2], 2)} %, "
                           f"gap {gap:.2f} points",
                           None if math.isnan(gap) else abs(gap) <= 1.0))
    for other in ("dtp", "tp", "drl"):
        if "ldrl" in acc and other in acc:
            out.append(_ahead(acc, other, per_alg[other]))
    for alg, rows in per_alg.items():
        text = status_text(rows)
        if text:
            out.append(Finding(f"{alg} trains at this budget", text, False))
    return out


def _ahead(acc: dict, other: str, rows: list) -> Finding:
    """'L-DRL ahead of <other>': by mean accuracy, or because every <other> run diverged."""
    ours = f"L-DRL {fmt(*acc['ldrl'][:2], 2)} %"
    diverged = sum(r["status"] == "diverged" for r in rows)
    if acc[other][2] == 0:
        holds = (diverged == len(rows) and acc["ldrl"][2] > 0) or None
        return Finding(f"L-DRL ahead of {other}", f"{ours}; {other}: {diverged}/{len(rows)} runs diverged, "
                       f"none completed", holds)
    lead = acc["ldrl"][0] - acc[other][0]
    text = f"{ours}, {other} {fmt(*acc[other][:2], 2)} % over {acc[other][2]} completed run(s) (lead " \
           f"{lead:.2f} points)" + (f"; {diverged}/{len(rows)} {other} runs diverged" if diverged else "")
    return Finding(f"L-DRL ahead of {other}", text, None if math.isnan(lead) else lead > 0)


def _plot(result, directory):
    from .plots import accuracy_bars
    acc = result.data["accuracy"]
    return [accuracy_bars(directory / "algorithms_at_budget.png", list(acc), list(acc.values()),
                          f"test top-1 at {result.data['budget']}")]


@experiment(
    "algorithms-at-budget",
    "BP, L-DRL, DRL, vanilla DTP and TP trained at one fixed budget: accuracy and per-block angle to BP",
    "Ernoult et al. 2022, Sec. 5 (Table 1: L-DRL close to BP, ahead of DTP / TP / DRL on CIFAR-10)",
    "CIFAR-10, SimpleVGG at 1/8 width [16,16,32,32,64], 2 epochs x 60 steps of 128 (120 steps), seeds "
    "123-125, presets cifar10-{bp,ldrl,drl,dtp,tp} otherwise unchanged, diagnostics on (a reduced budget: "
    "the paper trains 90 epochs at full width)",
    "1 epoch x 2 steps, channels [4,4,8,8,8], seeds 123-124 (a smoke test of the pipeline; numbers mean "
    "nothing)",
    params={"dataset": "cifar10 (SimpleVGG presets) or mnist / fmnist (LeNet preset with each algorithm)",
            "epochs": "epochs per run", "steps": "steps per epoch", "channels": "SimpleVGG widths (cifar10)",
            "algorithms": "comma list among bp,ldrl,drl,dtp,tp"},
    plot=_plot)
def algorithms_at_budget(ctx) -> Result:
    o = _options(ctx)
    per_alg = _sweep(ctx, o)
    budget = f"{o['epochs']} epochs x {o['steps']} steps, {o['dataset']}"
    notes = [f"budget: {budget}, seeds {o['seeds']}"
             + (f", channels {o['channels']}" if o["dataset"] == "cifar10" else ", LeNet"),
             "no published numbers at this budget: rows are measurements; the paper's claims are below",
             f"runs: {ctx.out}/sweep (summary.md, curves.png, alignment.png)"]
    return Result(rows=_rows(per_alg), findings=_findings(per_alg, o), notes=notes,
                  data={"budget": budget, "accuracy": {a: accuracies(r) for a, r in per_alg.items()},
                        "angles": {a: [final_angles(r["run_dir"]) for r in completed(rows)]
                                   for a, rows in per_alg.items()}})
