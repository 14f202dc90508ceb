"""`dynabert-bench`'s report: per world size figures from the ranks' step records, then a terminal table
(Markdown), JSON with the machine description, and a PNG. No paddle here (the orchestrator never loads it).

A step's time is the slowest rank's (the gradient all-reduce makes every rank wait for it); throughput is
all ranks' samples over the slowest rank's total time, as ``trainer.global_throughput`` computes it.
"""
import json
import os
import platform
import socket
import subprocess
from typing import Dict, List, Optional, Sequence

import numpy as np

from dynabert.io_utils import atomic_write_text
from dynabert.machine import cpu_model  # noqa: F401  (shared: dynabert/machine.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHER = "other"


def step_figures(ranks: Sequence[dict], key: str = "steps") -> dict:
    """Throughput and step-time statistics of one side (``key``: "steps" or "reference_steps")."""
    rows = [r[key] for r in ranks]
    n = min(len(r) for r in rows)
    step_seconds = [max(r[i]["seconds"] for r in rows) for i in range(n)]
    wall = max(sum(s["seconds"] for s in r[:n]) for r in rows)
    samples = sum(s["samples"] for r in rows for s in r[:n])
    tokens = sum(s["tokens"] for r in rows for s in r[:n])
    return {"samples_per_s": samples / wall, "tokens_per_s": tokens / wall,
            "per_rank_samples_per_s": [sum(s["samples"] for s in r[:n]) / sum(s["seconds"] for s in r[:n])
                                       for r in rows],
            "median_step_s": float(np.median(step_seconds)), "p90_step_s": float(np.percentile(step_seconds, 90)),
            "step_seconds": step_seconds,
            "padding_fraction": 1.0 - tokens / max(1, sum(s["padded_tokens"] for r in rows for s in r[:n]))}


def breakdown(steps: Sequence[dict]) -> Dict[str, float]:
    """Mean seconds per step of each phase on one rank, in step order, and what no phase covers."""
    names: List[str] = []
    for s in steps:
        names += [k for k in s["phases"] if k not in names]
    out = {k: float(np.mean([s["phases"].get(k, 0.0) for s in steps])) for k in names}
    out[OTHER] = float(np.mean([s["seconds"] for s in steps])) - sum(out.values())
    return out


def world_size_summary(result: dict) -> dict:
    ranks = sorted(result["ranks"], key=lambda r: r["rank"])
    per_rank = [breakdown(r["steps"]) for r in ranks]
    out = {"world_size": result["world_size"], "nnodes": result["nnodes"],
           "nproc_per_node": result["world_size"] // result["nnodes"],
           "threads_per_process": ranks[0]["threads"], **step_figures(ranks),
           "breakdown_s": {k: float(np.mean([b[k] for b in per_rank])) for k in per_rank[0]},
           "breakdown_s_per_rank": per_rank,
           "peak_memory_bytes_per_rank": [r["memory"]["bytes"] for r in ranks],
           "memory_kind": ranks[0]["memory"]["kind"],
           "all_reduce_calls_per_step": ranks[0]["all_reduce_calls_per_step"],
           "all_reduce_bytes_per_step": ranks[0]["all_reduce_bytes_per_step"],
           **utilisation(ranks),
           "devices": [f"{r['host']}:{r['device']}" + (f" ({r['device_name']})" if r.get("device_name") else "")
                       for r in ranks],
           "reference": None, "ratio_project_over_reference": None}
    if ranks[0].get("reference_steps"):
        ref = step_figures(ranks, "reference_steps")
        out["reference"] = ref
        out["ratio_project_over_reference"] = out["median_step_s"] / ref["median_step_s"]
    return out


def utilisation(ranks: Sequence[dict]) -> dict:
    """Model FLOPs per step (all ranks; dynabert/model/flops.py), the FLOP/s achieved per rank over the timed
    steps (the slowest rank's time, as throughput), and MFU: that over the matmul rate the rank measured on
    the spot, at the model's own shapes and at a large square one."""
    n = min(len(r["steps"]) for r in ranks)
    flops = sum(s.get("flops", 0) for r in ranks for s in r["steps"][:n])
    if not flops or not all("matmul_peak_flops" in r for r in ranks):
        return {"flops_per_step": None, "flops_per_s_per_rank": None, "matmul_peak_flops_per_rank": None,
                "mfu": None}
    wall = max(sum(s["seconds"] for s in r["steps"][:n]) for r in ranks)
    per_rank = flops / wall / len(ranks)
    peak = {kind: float(np.median([r["matmul_peak_flops"][kind] for r in ranks]))
            for kind in ranks[0]["matmul_peak_flops"]}
    return {"flops_per_step": flops / n, "flops_per_s_per_rank": per_rank, "matmul_peak_flops_per_rank": peak,
            "peak_dtype": ranks[0].get("peak_dtype"), "mfu": {kind: per_rank / v for kind, v in peak.items()}}


def add_efficiency(rows: List[dict]) -> None:
    """Per-process throughput against the smallest world size's (1.0 = linear scaling)."""
    base = min(rows, key=lambda r: r["world_size"])
    for r in rows:
        r["scaling_efficiency"] = (r["samples_per_s"] / r["world_size"]) / (base["samples_per_s"] / base["world_size"])


# ------------------------------------------------------------------------------------------------
# machine
# ------------------------------------------------------------------------------------------------
def git_commit() -> Optional[str]:
    """The project checkout's HEAD (read-only), with "+changes" when files differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def machine(first: dict, cpus: int) -> dict:
    """The orchestrating node and rank 0's software (first: rank 0's record of the first world size)."""
    return {"host": socket.gethostname(), "cpu_model": cpu_model(), "cpus_available": cpus,
            "platform": platform.platform(), "python": platform.python_version(),
            "paddle": first.get("paddle"), "cuda": first.get("cuda"), "cudnn": first.get("cudnn"),
            "gpu_driver": first.get("gpu_driver"), "git_commit": git_commit(), "load_average": load_average()}


def load_average() -> Optional[List[float]]:
    """1/5/15-minute load: other work on the same cores slows every figure (say so next to them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------
def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:#.3g}"  # 3.00, not 3: columns of like precision


def _mib(n: float) -> str:
    return f"{n / 2 ** 20:,.0f} MiB"


def markdown(report: dict) -> str:
    rows = report["results"]
    mem = "peak GPU memory/rank" if rows[0]["memory_kind"] == "gpu_max_allocated" else "peak RSS/rank"
    head = ["world size", "processes", "threads each", "samples/s", "tokens/s", "per-rank samples/s",
            "median step s", "p90 step s", mem, "efficiency"]
    table = [[r["world_size"], f"{r['nnodes']} nodes x {r['nproc_per_node']}" if r["nnodes"] > 1 else r["world_size"],
              r["threads_per_process"],
              _num(r["samples_per_s"]), _num(r["tokens_per_s"]),
              " / ".join(_num(x) for x in r["per_rank_samples_per_s"]), f"{r['median_step_s']:.3f}",
              f"{r['p90_step_s']:.3f}", " / ".join(_mib(b) for b in r["peak_memory_bytes_per_rank"]),
              f"{r['scaling_efficiency']:.2f}"] for r in rows]
    parts = list(rows[0]["breakdown_s"])
    bhead = ["world size"] + parts + ["step (mean)"]
    btable = [[r["world_size"]] + [f"{r['breakdown_s'][k]:.3f}" for k in parts]
              + [f"{sum(r['breakdown_s'].values()):.3f}"] for r in rows]
    w = report["workload"]
    lines = [f"# dynabert-bench: {w['model']} ({w['model_shape']}) on {report['device']}", "",
             f"Widths {w['widths']}; global batch {w['global_batch']} (config's compress.optim.batch_size, split "
             f"over the ranks); max_seq_len {w['max_seq_len']}, {w['padding']} padding"
             f"{', grouped by length' if w['group_by_length'] else ''}; precision {w['precision']}. "
             f"{report['warmup_steps']} warm-up + {report['timed_steps']} timed steps per world size.",
             f"Data: {w['data']}.", "", _md(head, table), "",
             "Step breakdown, seconds per step (mean over timed steps and ranks; all-reduce includes waiting for "
             "the slowest rank):", "", _md(bhead, btable)]
    if rows[0].get("mfu"):
        uhead = ["world size", "GFLOP per step", "GFLOP/s per rank", "matmul peak GFLOP/s (model shapes / 2048^3)",
                 "MFU (model shapes)", "MFU (2048^3)"]
        utable = [[r["world_size"], f"{r['flops_per_step'] / 1e9:,.1f}", f"{r['flops_per_s_per_rank'] / 1e9:,.1f}",
                   f"{r['matmul_peak_flops_per_rank']['model'] / 1e9:,.1f} / "
                   f"{r['matmul_peak_flops_per_rank']['square'] / 1e9:,.1f}",
                   f"{r['mfu']['model']:.0%}", f"{r['mfu']['square']:.0%}"] for r in rows]
        lines += ["", "How close to the machine's limit: model FLOPs per step (the teacher's forward and every width's "
                  "forward and backward, matmul and attention terms: docs/benchmarking.md), the rate achieved per "
                  f"rank, and the matmul rate each rank measured on the spot ({rows[0]['peak_dtype']}, beside the "
                  "others, as in the step); MFU is the first over the second.", "", _md(uhead, utable)]
    if rows[0]["reference"]:
        lines += ["", "Tutorial loop (benchmarks/seed_reference.py) on the same batches: "
                  + "; ".join(f"world size {r['world_size']}: {r['reference']['samples_per_s']:.3g} samples/s, "
                              f"median step {r['reference']['median_step_s']:.3f} s, project/reference "
                              f"{r['ratio_project_over_reference']:.3f}" for r in rows)]
    m = report["machine"]
    lines += ["", f"Machine: {m['cpu_model']} ({m['cpus_available']} CPUs; load average {m['load_average']} at the "
              f"end), {m['platform']}, Python {m['python']}, "
              f"paddle {m['paddle']}" + (f", CUDA {m['cuda']}, cuDNN {m['cudnn']}, driver {m['gpu_driver']}"
                                         if m.get("cuda") and m["cuda"] != "False" else "")
              + f"; git {m['git_commit']}."]
    return "\n".join(lines)


def _md(header: List, rows: List[List]) -> str:
    out = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    return "\n".join(out + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def plot(report: dict, path: str) -> None:
    """Left: global samples/s (and ideal linear scaling) and efficiency against world size. Right: the
    step breakdown, stacked, per world size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    sizes = [r["world_size"] for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax.plot(sizes, [r["samples_per_s"] for r in rows], "o-", label="samples/s")
    base = rows[0]["samples_per_s"] / sizes[0]
    ax.plot(sizes, [base * s for s in sizes], "--", color="grey", label="linear scaling")
    ax.set_xlabel("world size (processes)")
    ax.set_ylabel("global samples/s")
    ax.set_xticks(sizes)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    eff = ax.twinx()
    eff.plot(sizes, [r["scaling_efficiency"] for r in rows], "s:", color="tab:red", label="efficiency")
    eff.set_ylabel("scaling efficiency")
    eff.set_ylim(0, 1.2)
    handles = ax.get_legend_handles_labels()
    more = eff.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper left")
    parts = list(rows[0]["breakdown_s"])
    colours = plt.get_cmap("tab10")
    bottom = np.zeros(len(rows))
    for i, part in enumerate(parts):
        values = np.asarray([max(0.0, r["breakdown_s"].get(part, 0.0)) for r in rows])
        bx.bar([str(s) for s in sizes], values, bottom=bottom, label=part, color=colours(i % 10))
        bottom += values
    bx.set_xlabel("world size (processes)")
    bx.set_ylabel("seconds per step (mean)")
    bx.legend(fontsize=8)
    fig.suptitle(f"dynabert-bench: {report['workload']['model']}, global batch {report['workload']['global_batch']},"
                 f" {report['device']}", fontsize=9)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write(report: dict, out_dir: str) -> Dict[str, str]:
    paths = {ext: os.path.join(out_dir, f"bench.{ext}") for ext in ("json", "md", "png")}
    atomic_write_text(paths["json"], json.dumps(report, indent=2) + "\n")
    atomic_write_text(paths["md"], markdown(report) + "\n")
    plot(report, paths["png"])
    return paths
