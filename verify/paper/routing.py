"""``routing-ablation``: L-DRL with the paper's noisy max-pool routing vs clean routing, on real data.

In L-DRL the reconstruction G(F(x + eps)) un-pools through the argmax of the
noisy pass ("noisy", the paper) or of the clean pass ("clean",
``ldrl_routing=clean``). The experiment trains both at the same budget
(CIFAR-10 preset at 1/8 width, diagnostics on) and reports the per-block
angle of the DTP update to BP and the accuracy, mean ± sd over seeds.
"""
from __future__ import annotations

import math

from .budget import WIDTH
from .registry import Finding, Result, Row, experiment, fmt, mean_sd
from .training import accuracies, by_group, completed, final_angles, run_sweep

ROUTINGS = ("noisy", "clean")


def _options(ctx) -> dict:
    q = ctx.quick
    return {"epochs": ctx.param("epochs", 1 if q else 2), "steps": ctx.param("steps", 2 if q else 60),
            "channels": ctx.param("channels", "[4,4,8,8,8]" if q else WIDTH),
            "seeds": ctx.seeds or ([123, 124] if q else [123, 124, 125])}


def _per_routing(rows: list) -> dict:
    out = {r: [] for r in ROUTINGS}
    for group, rs in by_group(rows).items():
        for routing in ROUTINGS:
            if group.endswith(f"ldrl_routing={routing}"):
                out[routing] += rs
    return out


def _plot(result, directory):
    from .plots import angle_bars
    ang = result.data["angles"]
    blocks = result.data["blocks"]
    ours = {r: [[a.get(b, math.nan) for a in ang[r]] for b in blocks] for r in ROUTINGS}
    return [angle_bars(directory / "routing_ablation.png", blocks, ours, None,
                       "L-DRL routing: angle of the DTP update to BP (final epoch)")]


@experiment(
    "routing-ablation",
    "L-DRL with noisy (paper) vs clean max-pool routing of G(F(x+eps)): angles to BP and accuracy",
    "Ernoult et al. 2022, Sec. 4.1 (L-DRL loss) with scalingDTP's un-pooling by the noisy pass's indices; "
    "refdtp's verify claim ldrl-maxpool-noisy-routing-floor",
    "cifar10-ldrl preset at 1/8 width [16,16,32,32,64], 2 epochs x 60 steps, seeds 123-125, diagnostics on, "
    "ldrl_routing noisy vs clean",
    "1 epoch x 2 steps, channels [4,4,8,8,8], seeds 123-124 (pipeline smoke test)",
    params={"epochs": "epochs per run", "steps": "steps per epoch", "channels": "SimpleVGG widths"},
    plot=_plot)
def routing_ablation(ctx) -> Result:
    o = _options(ctx)
    sets = ["diagnostics=true", f"channels={o['channels']}"]
    rows = run_sweep(ctx, "sweep", ["cifar10-ldrl"], o["seeds"], sets, o["epochs"], o["steps"],
                     grid=["ldrl_routing=noisy,clean"])
    per = _per_routing(rows)
    angles = {r: [final_angles(x["run_dir"]) for x in completed(per[r])] for r in ROUTINGS}
    blocks = list(next((a for r in ROUTINGS for a in angles[r]), {}))
    out = [Row(f"{r}: final test top-1", accuracies(per[r]), lower_is_better=False, unit=" %")
           for r in ROUTINGS]
    out += [Row(f"{r}: angle to BP, {b}", [a.get(b, math.nan) for a in angles[r]], unit=" deg")
            for b in blocks for r in ROUTINGS]
    hidden = [b for b in blocks if b != "total"][:-1]
    mean_angle = {r: mean_sd([sum(a[b] for b in hidden) / max(len(hidden), 1) for a in angles[r]])
                  for r in ROUTINGS}
    diff = mean_angle["noisy"][0] - mean_angle["clean"][0]
    measured = f"noisy {fmt(*mean_angle['noisy'][:2])} deg, clean {fmt(*mean_angle['clean'][:2])} deg"
    findings = [Finding("clean routing aligns the DTP update with BP better than noisy routing (mean "
                        "hidden-block angle)", measured, None if math.isnan(diff) else diff > 0)]
    notes = [f"budget {o['epochs']} epochs x {o['steps']} steps, channels {o['channels']}, "
             f"seeds {o['seeds']}",
             f"runs: {ctx.out}/sweep"]
    return Result(rows=out, findings=findings, notes=notes,
                  data={"angles": angles, "blocks": blocks,
                        "accuracy": {r: accuracies(per[r]) for r in ROUTINGS}})
