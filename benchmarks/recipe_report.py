"""The recipe study's report (benchmarks/recipe_study.py): per setting and width, mean and spread over seeds of
the dev metric and of its difference to the same seed's teacher, the issue's targets, the difference to
`tutorial` on the same seed, and the markdown tables."""
import json
import statistics
from typing import Dict, List, Optional

from benchmarks import common

TARGETS = {0.25: -0.03, 0.5: -0.01}  # issue 15: 3-seed mean dev delta to the teacher at least this


def summarize(values: List[float]) -> dict:
    """Mean, sample standard deviation (n-1; null for one value), min and max."""
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "values": list(values)}


def aggregate(records: List[dict], settings: Dict[str, dict]) -> dict:
    """The tables' numbers. ``settings``: per name, in table order, {"what", "changes"}."""
    teachers: Dict[int, List[float]] = {}
    for r in records:
        teachers.setdefault(r["seed"], []).append(r["teacher"])
    per_seed = {seed: values[0] for seed, values in sorted(teachers.items())}
    out = {"teacher": {"per_seed": {str(s): v for s, v in per_seed.items()},
                       "same_in_every_run_of_a_seed": all(len(set(v)) == 1 for v in teachers.values()),
                       "summary": summarize(list(per_seed.values())) if per_seed else None},
           "settings": {}}
    for name, described in settings.items():
        mine = [r for r in records if r["setting"] == name]
        entry = {**described, "seeds": [r["seed"] for r in mine], "widths": {}, "targets": {}}
        for w in (sorted({w for r in mine for w in r["widths"]}, key=float, reverse=True)):
            runs = [r for r in mine if w in r["widths"]]
            entry["widths"][w] = {"metric": summarize([r["widths"][w] for r in runs]),
                                  "delta": summarize([r["widths"][w] - r["teacher"] for r in runs])}
        for width, bar in TARGETS.items():
            delta = entry["widths"].get(str(width), {}).get("delta")
            entry["targets"][str(width)] = {"bar": bar, "mean_delta": delta and delta["mean"],
                                            "met": bool(delta and delta["mean"] >= bar)}
        out["settings"][name] = entry
    out["paired"] = paired(records, list(settings))
    return out


def paired(records: List[dict], names: List[str], baseline: str = "tutorial") -> dict:
    """Per setting and width, the setting minus the baseline on the same seed (the same teacher, validation
    split and data order): most of the spread over seeds is the teachers', and it cancels here."""
    runs = {(r["setting"], r["seed"]): r["widths"] for r in records}
    out = {}
    for name in names:
        seeds = sorted(seed for (n, seed) in runs if n == name and (baseline, seed) in runs)
        if name == baseline or not seeds:
            continue
        widths = sorted({w for seed in seeds for w in runs[(name, seed)]}, key=float, reverse=True)
        out[name] = {"baseline": baseline, "seeds": seeds,
                     "widths": {w: summarize([runs[(name, s)][w] - runs[(baseline, s)][w] for s in seeds
                                              if w in runs[(name, s)] and w in runs[(baseline, s)]])
                                for w in widths}}
    return out


def _cell(s: Optional[dict], signed: bool = False) -> str:
    if not s:
        return ""
    return ("{:+.4f}" if signed else "{:.4f}").format(s["mean"]) + ("" if s["std"] is None else f" ± {s['std']:.4f}")


def _f(x: Optional[float], signed: bool = False) -> str:
    return "" if x is None else ("{:+.4f}" if signed else "{:.4f}").format(x)


def markdown(result: dict) -> str:
    base, agg, metric = result["base"], result["aggregate"], result["metric"]
    widths = sorted({w for s in agg["settings"].values() for w in s["widths"]}, key=float, reverse=True)
    smoke = " (SMOKE: tiny random BERT, synthetic data; not a measurement)" if result["smoke"] else ""
    lines = [f"# Distillation recipe study{smoke}", "", f"Protocol: {result['protocol']}.", "",
             f"Budget per run (`{result['config']}`): {base['model']} on {base['task']}, {base['train_rows']} training "
             f"rows, global batch {base['batch_size']}, max_seq_len {base['max_seq_len']}, {base['epochs']:g} compress "
             f"epoch(s) at learning rate {base['learning_rate']:g} unless a setting says otherwise; "
             f"{result['nproc_per_node']} process(es) x {result['threads_per_process']} thread(s). Teacher: "
             f"{result['teacher_source']}. Seeds: {', '.join(map(str, result['seeds']))}.", ""]
    t = agg["teacher"]["summary"]
    if t:
        lines += [f"Teacher dev {metric}: {_cell(t)} (min {t['min']:.4f}, max {t['max']:.4f}).", ""]
    lines += [f"Δ = dev {metric} of the width minus the same seed's teacher; mean ± sample std over seeds (n-1). "
              "Targets (issue 15, mean Δ): " + ", ".join(f"w{w} ≥ {bar:+g}" for w, bar in TARGETS.items()) + ".", ""]
    rows = [[name, len(s["seeds"])] + [_cell(s["widths"].get(w, {}).get("delta"), signed=True) for w in widths]
            + ["yes" if s["targets"][str(w)]["met"] else "no" for w in TARGETS] for name, s in agg["settings"].items()]
    lines += [common.md_table(["setting", "seeds"] + [f"Δ w{w}" for w in widths] + [f"target w{w}" for w in TARGETS],
                              rows), ""]
    if agg.get("paired"):
        lines += ["Paired with `tutorial` on the same seed (same teacher): the setting's dev "
                  f"{metric} minus the tutorial's, mean ± sample std over the seeds both have:", ""]
        lines += [common.md_table(["setting", "seeds"] + [f"w{w}" for w in widths],
                                  [[name, len(p["seeds"])] + [_cell(p["widths"].get(w), signed=True) for w in widths]
                                   for name, p in agg["paired"].items()]), ""]
    long_rows = [[name, w, c["metric"]["n"], _f(c["metric"]["mean"]), _f(c["metric"]["std"]), _f(c["metric"]["min"]),
                  _f(c["metric"]["max"]), _f(c["delta"]["mean"], True), _f(c["delta"]["std"]),
                  _f(c["delta"]["min"], True), _f(c["delta"]["max"], True)]
                 for name, s in agg["settings"].items() for w, c in s["widths"].items()]
    lines += [common.md_table(["setting", "width", "n", "mean", "std", "min", "max", "Δ mean", "Δ std", "Δ min",
                               "Δ max"], long_rows), "", "Settings (every run pins the tutorial's weights first):", ""]
    lines += [f"- `{name}`: {s['what']}: `{json.dumps(s['changes'])}`" for name, s in agg["settings"].items()]
    runs = [[r["setting"], r["seed"], r["compress_steps"], r.get("passes", ""), r["best_step"], _f(r["teacher"])]
            + [_f(r["widths"].get(w)) for w in widths] + [round((r["seconds"] or {}).get("compress", 0))]
            for r in result["runs"]]
    lines += ["", "Runs:", "", common.md_table(["setting", "seed", "steps", "passes", "kept step", "teacher"]
                                               + [f"w{w}" for w in widths] + ["compress s"], runs)]
    earlier = sorted({r["from"] for r in result["runs"] if r.get("from")})
    if earlier:
        lines += ["", f"Runs taken from --previous ({', '.join(earlier)}): "
                  + ", ".join(f"{r['setting']} seed {r['seed']}" for r in result["runs"] if r.get("from"))]
    if result["missing"]:
        lines += ["", "Not run yet: " + ", ".join(f"{m['setting']} seed {m['seed']}" for m in result["missing"])]
    return "\n".join(lines)
