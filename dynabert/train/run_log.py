"""What a run writes besides models: console lines, a JSON-lines log, tensorboardX events, a results table.

Only the main rank writes files or draws progress bars; other ranks get a logger that writes nothing
(except their own throughput, which each rank prints to its worker log).
"""
import json
import os
import time
from typing import Dict, Optional

from dynabert.io_utils import atomic_write_text


class RunLog:
    def __init__(self, out_dir: str, enabled: bool, rank: int = 0):
        self.out_dir = out_dir
        self.enabled = enabled
        self.rank = rank
        self._writer = None
        self._jsonl = None
        if enabled:
            os.makedirs(out_dir, exist_ok=True)
            from tensorboardX import SummaryWriter  # imported here: other ranks never need it
            self._writer = SummaryWriter(os.path.join(out_dir, "tensorboard"))
            self._jsonl = open(os.path.join(out_dir, "metrics.jsonl"), "a", encoding="utf-8")

    def info(self, message: str) -> None:
        """Main rank prints; the others print to their own worker log with a rank prefix."""
        print(message if self.rank == 0 else f"[rank {self.rank}] {message}", flush=True)

    def record(self, kind: str, step: int, values: Dict[str, float]) -> None:
        """One JSON line and one tensorboard scalar per value, tagged ``kind/name``."""
        if not self.enabled:
            return
        row = {"time": round(time.time(), 3), "kind": kind, "step": step, **values}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self._writer.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._jsonl.close()
            self._writer = self._jsonl = None


def progress(iterable, enabled: bool, total: Optional[int] = None, desc: str = ""):
    if not enabled:
        return iterable
    import sys

    from tqdm import tqdm
    # Under the launcher rank 0 writes to a log file that is tailed to the terminal: update it rarely.
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False, mininterval=interval)


def results_markdown(rows, teacher_metric: Optional[float], metric_name: str, protocol: Optional[dict] = None,
                     *, depth: bool = False) -> str:
    """The results table, a row per width (rows carry width, parameters, encoder_parameters and metric, the
    value of ``metric_name``); with ``depth``, a row per (width, depth), rows also carrying depth and
    num_layers."""
    lines = [f"Protocol: {protocol['description']}.", ""] if protocol else []
    keys = "| width | depth | layers |" if depth else "| width |"
    lines += [f"{keys} parameters | encoder parameters | dev {metric_name} | teacher {metric_name} | delta |",
              "|---:" * (keys.count("|") + 4) + "|"]
    for r in rows:
        t = "" if teacher_metric is None else f"{teacher_metric:.4f}"
        d = "" if teacher_metric is None else f"{r['metric'] - teacher_metric:+.4f}"
        cells = f"| {r['width']} | {r['depth']} | {r['num_layers']} |" if depth else f"| {r['width']} |"
        lines.append(f"{cells} {r['parameters']:,} | {r['encoder_parameters']:,} | {r['metric']:.4f} | {t} | {d} |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str, results: dict, markdown: str) -> None:
    atomic_write_text(os.path.join(out_dir, "results.json"), json.dumps(results, indent=2) + "\n")
    atomic_write_text(os.path.join(out_dir, "results.md"), markdown)
