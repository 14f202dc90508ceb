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
        self._writers: Dict[str, object] = {}  # one tensorboardX writer per stage: tensorboard/<stage>/
        self._jsonl = None
        if enabled:
            os.makedirs(out_dir, exist_ok=True)
            self._jsonl = open(self._jsonl_path, "a", encoding="utf-8")

    @property
    def _jsonl_path(self) -> str:
        return os.path.join(self.out_dir, "metrics.jsonl")

    def start_stage(self, stage: str, step: int) -> None:
        """A stage (re)starts after ``step`` optimizer steps (0: from the beginning). What an interrupted
        attempt recorded past that point is dropped, so that a resumed run records each step once:
        metrics.jsonl is rewritten without those rows (temporary file, then rename), and the stage's
        TensorBoard run purges its events from ``step`` on (tensorboardX's ``purge_step``)."""
        if not self.enabled:
            return
        self._jsonl.close()
        with open(self._jsonl_path, encoding="utf-8") as f:
            lines = f.readlines()
        kept = [line for line in lines if not _replayed(line, stage, step)]
        if len(kept) != len(lines):
            atomic_write_text(self._jsonl_path, "".join(kept))
            self.info(f"{stage}: {len(lines) - len(kept)} metrics row(s) after step {step} of an interrupted "
                      "attempt dropped from metrics.jsonl")
        self._jsonl = open(self._jsonl_path, "a", encoding="utf-8")
        if stage in self._writers:
            self._writers.pop(stage).close()
        self._writers[stage] = self._tensorboard(stage, purge_step=step + 1 if step else 0)

    def _tensorboard(self, stage: str, purge_step: Optional[int] = None):
        from tensorboardX import SummaryWriter  # imported here: other ranks never need it

        # Event files are named by the second they were opened in: the suffix keeps a writer opened again
        # within that second (a quick restart) from truncating the first one's file.
        return SummaryWriter(os.path.join(self.out_dir, "tensorboard", stage), purge_step=purge_step,
                             filename_suffix=f".{os.getpid()}.{len(self._writers)}.{purge_step}")

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
        stage = stage_of(kind)
        if stage not in self._writers:
            self._writers[stage] = self._tensorboard(stage)
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self._writers[stage].add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def stage_of(kind: str) -> str:
    """The stage a record belongs to: ``compress`` for ``compress`` and ``compress_eval/w0.5``."""
    head = kind.split("/", 1)[0]
    return head[:-len("_eval")] if head.endswith("_eval") else head


def _replayed(line: str, stage: str, step: int) -> bool:
    """Whether a metrics.jsonl row is the stage's and lies past ``step`` (a fresh start drops them all)."""
    try:
        row = json.loads(line)
    except ValueError:
        return True  # a line cut short by the kill
    return stage_of(str(row.get("kind", ""))) == stage and (step == 0 or row.get("step", 0) > step)


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
