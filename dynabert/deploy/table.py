"""The candidate table: one row per candidate (dicts, as ``choose`` expects), its markdown, and the metric cache.

Derived columns: ``delta_vs_fp32`` (an int8 row's metric minus the same sub-model's fp32 metric in the same
runtime), ``vs_reference`` (latency over the widest fp32 sub-model's on Paddle Inference, the export stage's own
model), ``fastest_runtime`` (the quickest runtime for that sub-model and precision) and ``pareto``.
"""
import json
import os
from typing import Callable, Dict, List, Sequence

from dynabert.deploy.candidates import Candidate
from dynabert.io_utils import atomic_write_text


def candidate_rows(candidates: Sequence[Candidate], *, metrics: Dict[str, dict], latency: Dict[str, dict],
                   metric_name: str) -> List[dict]:
    rows = []
    for c in candidates:
        m, t = c.model, latency[c.name]
        rows.append({
            "name": c.name, "key": m.key, "label": f"{m.key.replace('width_', 'w')} {c.precision}",
            "width": m.width, "depth": m.depth, "layers": m.layers, "runtime": c.runtime, "precision": c.precision,
            "parameters": m.parameters, "encoder_parameters": m.encoder_parameters, "size_bytes": c.size_bytes,
            "size_mb": c.size_bytes / 1e6, "metric": metrics[c.name][metric_name], "metrics": metrics[c.name],
            "latency_ms": t["median_ms"], "p90_ms": t["p90_ms"], "min_ms": t["min_ms"], "runs": t["runs"],
            "pareto": False, "fastest_runtime": False, "delta_vs_fp32": None, "vs_reference": None,
            "files": dict(c.files)})
    by = {(r["key"], r["runtime"], r["precision"]): r for r in rows}
    for r in rows:
        fp32 = by.get((r["key"], r["runtime"], "fp32"))
        if r["precision"] != "fp32" and fp32 is not None:
            r["delta_vs_fp32"] = r["metric"] - fp32["metric"]
    for key, precision in {(r["key"], r["precision"]) for r in rows}:
        group = [r for r in rows if r["key"] == key and r["precision"] == precision]
        min(group, key=lambda r: r["latency_ms"])["fastest_runtime"] = True
    references = [r for r in rows if r["precision"] == "fp32"]
    if references:
        ref = max(references, key=lambda r: (r["width"], r["depth"] or 1.0, r["runtime"] == "paddle"))
        for r in rows:
            r["vs_reference"] = r["latency_ms"] / ref["latency_ms"]
    return rows


def markdown_table(rows: Sequence[dict], *, metric_name: str, split: str, settings: dict, machine: dict) -> str:
    has_depth = any(r["depth"] is not None for r in rows)
    header = (["candidate", "width"] + (["depth"] if has_depth else [])
              + ["runtime", "precision", "parameters", "size MB", f"{split} {metric_name}", "int8 - fp32",
                 "median ms", "p90 ms", "x ref", "Pareto", "fastest runtime"]
              + ([f"dev {metric_name}"] if any("dev_metric" in r for r in rows) else []))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:"
                                                              for i in range(len(header))) + "|"]
    for r in rows:
        delta = "" if r["delta_vs_fp32"] is None else f"{r['delta_vs_fp32'] * 100:+.2f} pt"
        cells = ([r["name"], f"{r['width']:g}"] + ([f"{r['depth']:g}" if r["depth"] is not None else ""]
                                                   if has_depth else [])
                 + [r["runtime"], r["precision"], f"{r['parameters']:,}", f"{r['size_mb']:.1f}",
                    f"{r['metric']:.4f}", delta, f"{r['latency_ms']:.1f}", f"{r['p90_ms']:.1f}",
                    "" if r["vs_reference"] is None else f"{r['vs_reference']:.2f}",
                    "*" if r["pareto"] else "", "yes" if r["fastest_runtime"] else ""]
                 + ([f"{r['dev_metric']:.4f}"] if "dev_metric" in r else []))
        lines.append("| " + " | ".join(cells) + " |")
    s = settings
    intro = (f"Latency: median and p90 over at least {s['timing']['min_runs']} timed runs after "
             f"{s['timing']['warmup']} warm-ups, batch {s['batch_size']} x {s['seq_len']} tokens (all real), "
             f"{s['threads']} thread(s); x ref: latency over the widest fp32 model on Paddle Inference. "
             f"int8: Paddle via PaddleSlim post-training quantization, onnxruntime via {s['onnx_int8']} "
             f"quantization; calibration on {s['calibration']['rows']} training rows. Machine: "
             f"{machine['cpu_model']}, {machine['cpus_available']} CPUs, load average "
             f"{machine['load_average_1_5_15_min']} (1/5/15 min) when measured.")
    return intro + "\n\n" + "\n".join(lines) + "\n"


class MetricCache:
    """Metrics per candidate, kept in a JSON file and reused while the candidate's files and the split are
    unchanged (a second ``select`` at another batch size does not evaluate again)."""

    def __init__(self, path: str, split: dict, max_seq_len: int):
        self.path = path
        self.split_key = {"task": split["task"], "split": split["split"], "source": split["source"],
                          "digest": split["digest"], "examples": len(split["features"]),
                          "max_seq_len": int(max_seq_len)}
        try:
            with open(path, encoding="utf-8") as f:
                self._stored = json.load(f)
        except (OSError, ValueError):
            self._stored = {}
        self.values: Dict[str, dict] = {}

    def _fingerprint(self, c: Candidate) -> dict:
        files = {k: [os.path.getsize(p), os.stat(p).st_mtime_ns] for k, p in sorted(c.files.items())}
        return {"files": files, **self.split_key}

    def get(self, c: Candidate, compute: Callable[[], dict]) -> dict:
        stored = self._stored.get(c.name)
        fingerprint = self._fingerprint(c)
        if stored and stored.get("fingerprint") == fingerprint:
            self.values[c.name] = stored["metrics"]
        else:
            self.values[c.name] = compute()
            self._stored[c.name] = {"fingerprint": fingerprint, "metrics": self.values[c.name]}
        return self.values[c.name]

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self._stored, indent=1) + "\n")
