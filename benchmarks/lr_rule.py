"""The compress learning rate's decision rule (issue 27; docs/recipe.md, written before the runs it decides).

    python -m benchmarks.lr_rule STUDY.json [STUDY.json ...]   # one recipe_study.json per budget

Per budget: each run's score at a width is the selected sub-model's dev accuracy minus its seed's teacher's,
in points; per rate and width, the mean over the seeds. Among the rates whose width-0.25 mean is within
0.5 points of the best rate's width-0.25 mean, the one with the highest mean over the four widths; within
0.1 point of each other on that, the smaller rate.
"""
import json
import sys
from typing import Dict, List

WIDTHS = ("1.0", "0.75", "0.5", "0.25")
NARROWEST_SLACK = 0.5  # points
TIE = 0.1              # points


def rate_of(setting: str) -> float:
    """The rate a setting named lr<rate> ran at (lr5e-5 -> 5e-05)."""
    if not setting.startswith("lr"):
        raise ValueError(f"not a rate setting: {setting!r}")
    return float(setting[2:])


def means(runs: List[dict]) -> Dict[float, Dict[str, float]]:
    """{rate: {width: mean over seeds of (width - teacher) in points, "all": mean over widths, "n": seeds}}."""
    by_rate: Dict[float, List[dict]] = {}
    for run in runs:
        if run["setting"].startswith("lr"):
            by_rate.setdefault(rate_of(run["setting"]), []).append(run)
    out = {}
    for rate, rs in sorted(by_rate.items()):
        row = {w: sum(100 * (r["widths"][w] - r["teacher"]) for r in rs) / len(rs) for w in WIDTHS}
        row["all"] = sum(row[w] for w in WIDTHS) / len(WIDTHS)
        row["n"] = len(rs)
        out[rate] = row
    return out


def choose(table: Dict[float, Dict[str, float]]) -> float:
    best_narrow = max(row["0.25"] for row in table.values())
    eligible = {rate: row for rate, row in table.items() if row["0.25"] >= best_narrow - NARROWEST_SLACK}
    top = max(row["all"] for row in eligible.values())
    return min(rate for rate, row in eligible.items() if row["all"] >= top - TIE)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    for path in argv:
        with open(path) as f:
            study = json.load(f)
        table = means(study["runs"])
        print(f"{path}: points vs teacher, mean over seeds")
        print("rate     n  " + "  ".join(f"w{w:>5}" for w in WIDTHS) + "    all")
        for rate, row in table.items():
            print(f"{rate:<8g} {row['n']}  " + "  ".join(f"{row[w]:+6.2f}" for w in WIDTHS) + f"  {row['all']:+6.2f}")
        print(f"chosen: {choose(table):g}")


if __name__ == "__main__":
    main()
