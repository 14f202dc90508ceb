"""Which candidate to serve: the Pareto front of metric against latency, and the best under constraints.

A row is a dict with at least ``name``, ``metric`` (higher is better), ``latency_ms`` (lower is better),
``parameters`` and ``size_mb``. Constraints (any combination, each optional): ``max_latency_ms``, ``min_metric``,
``max_params``, ``max_size_mb``. The best row is the one with the highest metric among those meeting every
constraint; ties go to the lower latency, then the smaller size, then the name (so the choice is repeatable).
When none meets them, the error names the closest rows and by how much each misses.
"""
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

from dynabert.errors import UserError

METRIC_DIGITS = 9  # metrics equal to this many digits are a tie (the same predictions in two runtimes)


@dataclass(frozen=True)
class Constraints:
    max_latency_ms: Optional[float] = None
    min_metric: Optional[float] = None
    max_params: Optional[int] = None
    max_size_mb: Optional[float] = None

    def as_dict(self) -> Dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        flags = {"max_latency_ms": "--max-latency-ms", "min_metric": "--min-metric", "max_params": "--max-params",
                 "max_size_mb": "--max-size-mb"}
        return ", ".join(f"{flags[k]} {v:g}" for k, v in self.as_dict().items()) or "no constraints"


def pareto_front(rows: Sequence[dict]) -> List[int]:
    """Indices of the rows no other row dominates (metric >= and latency <=, one of them strictly)."""
    front = []
    for i, a in enumerate(rows):
        dominated = any(
            b["metric"] >= a["metric"] and b["latency_ms"] <= a["latency_ms"]
            and (b["metric"] > a["metric"] or b["latency_ms"] < a["latency_ms"])
            for j, b in enumerate(rows) if j != i)
        if not dominated:
            front.append(i)
    return front


def shortfalls(row: dict, constraints: Constraints) -> Dict[str, float]:
    """{constraint: relative amount by which ``row`` misses it} (empty: it meets all of them)."""
    c, out = constraints, {}
    if c.max_latency_ms is not None and row["latency_ms"] > c.max_latency_ms:
        out["max_latency_ms"] = (row["latency_ms"] - c.max_latency_ms) / c.max_latency_ms
    if c.min_metric is not None and row["metric"] < c.min_metric:
        out["min_metric"] = (c.min_metric - row["metric"]) / max(abs(c.min_metric), 1e-12)
    if c.max_params is not None and row["parameters"] > c.max_params:
        out["max_params"] = (row["parameters"] - c.max_params) / max(c.max_params, 1)
    if c.max_size_mb is not None and row["size_mb"] > c.max_size_mb:
        out["max_size_mb"] = (row["size_mb"] - c.max_size_mb) / c.max_size_mb
    return out


def _preference(row: dict):
    return (-round(row["metric"], METRIC_DIGITS), row["latency_ms"], row["size_mb"], row["name"])


def _miss_text(row: dict, misses: Dict[str, float]) -> str:
    what = {"max_latency_ms": f"latency {row['latency_ms']:.1f} ms", "min_metric": f"metric {row['metric']:.4f}",
            "max_params": f"{row['parameters']:,} parameters", "max_size_mb": f"{row['size_mb']:.1f} MB"}
    return "; ".join(f"{what[k]} misses by {v:.0%}" for k, v in misses.items())


def choose(rows: Sequence[dict], constraints: Constraints, *, closest: int = 3) -> dict:
    """The best row meeting ``constraints``. None meets them: UserError (exit 2) naming the ``closest`` rows,
    ordered by their summed relative shortfall."""
    if not rows:
        raise UserError("no candidates to choose from")
    meeting = [r for r in rows if not shortfalls(r, constraints)]
    if meeting:
        return min(meeting, key=_preference)
    ranked = sorted(rows, key=lambda r: (sum(shortfalls(r, constraints).values()), _preference(r)))
    near = ", ".join(f"{r['name']} ({_miss_text(r, shortfalls(r, constraints))})" for r in ranked[:closest])
    raise UserError(f"no candidate meets {constraints.describe()}; closest: {near}")
