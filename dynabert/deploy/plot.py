"""Metric against latency as a PNG: one point per candidate, the Pareto front joined, the chosen one ringed."""
import os
from typing import Optional, Sequence

MARKERS = {"fp32": "o", "int8": "^"}
COLOURS = {"paddle": "tab:blue", "onnxruntime": "tab:orange"}


def plot_candidates(rows: Sequence[dict], path: str, *, metric_name: str, title: str,
                    chosen: Optional[str] = None) -> str:
    """``rows`` as in ``dynabert.deploy.choose`` plus ``runtime``, ``precision``, ``label`` and ``pareto``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for runtime, colour in COLOURS.items():
        for precision, marker in MARKERS.items():
            pts = [r for r in rows if r["runtime"] == runtime and r["precision"] == precision]
            if pts:
                ax.scatter([r["latency_ms"] for r in pts], [r["metric"] for r in pts], c=colour, marker=marker,
                           s=45, label=f"{runtime} {precision}", zorder=3)
    for r in rows:
        ax.annotate(r["label"], (r["latency_ms"], r["metric"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["latency_ms"])
    if front:
        ax.step([r["latency_ms"] for r in front], [r["metric"] for r in front], where="post", color="grey",
                linestyle="--", linewidth=1, label="Pareto front", zorder=2)
    picked = [r for r in rows if r["name"] == chosen]
    if picked:
        ax.scatter([picked[0]["latency_ms"]], [picked[0]["metric"]], s=220, facecolors="none",
                   edgecolors="red", linewidths=1.5, label="chosen", zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("latency per batch, median (ms, log scale)")
    ax.set_ylabel(metric_name)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    # a reader never sees half a PNG; a killed writer's file is a recognisable leftover (io_utils)
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
