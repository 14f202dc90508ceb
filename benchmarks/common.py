"""Helpers shared by the benchmarks: thread set-up, machine description, result files, memory, timing.

Nothing here imports paddle at module level: ``set_threads`` must run before the first ``import paddle``
(Paddle reads OMP_NUM_THREADS / MKL_NUM_THREADS once, and ``import paddle`` sets OMP to 1 when unset).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from typing import Dict, Iterable, List, Optional

from dynabert.io_utils import atomic_write_text  # no paddle import: safe before set_threads
from dynabert.machine import available_cpus, cpu_model  # noqa: F401  (shared: dynabert/machine.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def parser(prog: str, doc: str, *, batch: bool = False) -> argparse.ArgumentParser:
    """The flags every single-process benchmark takes (--out, --smoke, --device, --threads); with ``batch``
    also the step-time workload's --global-batch and --seq-len."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--threads", type=int, default=None)
    if batch:
        p.add_argument("--global-batch", type=int, default=32)
        p.add_argument("--seq-len", type=int, default=64)
    return p


def set_threads(n: int) -> None:
    """Fix the CPU thread count of this process. Must run before paddle is imported."""
    if "paddle" in sys.modules:
        raise RuntimeError("set_threads must run before paddle is imported (Paddle reads the thread "
                           "count once, at import)")
    for var in THREAD_VARS:
        os.environ[var] = str(int(n))


def apply_threads(threads: Optional[int]) -> None:
    """--threads N, else OMP_NUM_THREADS, else every CPU; must run before paddle is imported."""
    if threads:
        set_threads(threads)
    else:
        threads_from_env(available_cpus())


def threads_from_env(default: int) -> int:
    """The thread count a parent set for us (OMP and MKL must agree), else ``default``; then fixed."""
    omp, mkl = os.environ.get("OMP_NUM_THREADS"), os.environ.get("MKL_NUM_THREADS")
    if omp and mkl and omp == mkl and omp.isdigit():
        n = int(omp)
    else:
        n = default
    set_threads(n)
    return n


def thread_env() -> Dict[str, Optional[str]]:
    return {var: os.environ.get(var) for var in THREAD_VARS}


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> Optional[str]:
    """HEAD of the project checkout (read-only ``git rev-parse``); None outside a git checkout."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def load_average():
    """The machine's load when the result was written: other processes on the same cores slow every
    timing (the A/B alternation protects the ratios, not the absolute numbers)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: str = "cpu") -> dict:
    paddle_dist = "paddlepaddle-gpu" if _version("paddlepaddle-gpu") else "paddlepaddle"
    return {
        "cpu_model": cpu_model(),
        "cpus_available": available_cpus(),
        "cpus_total": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "paddle": f"{paddle_dist}=={_version(paddle_dist)}",
        "paddlenlp": _version("paddlenlp"),
        "paddleslim": _version("paddleslim"),
        "device": device,
        "threads": thread_env(),
        "load_average_1_5_15_min": load_average(),
        "git_commit": git_commit(),
    }


# ------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------
def _status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set of this process so far (VmHWM; ru_maxrss where /proc is missing)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is None:
        import psutil
        return psutil.Process().memory_info().rss
    return kb * 1024


# ------------------------------------------------------------------------------------------------
# statistics and files
# ------------------------------------------------------------------------------------------------
def median(values: Iterable[float]) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def write_json(path: str, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def write_result(out_dir: str, name: str, data: dict, markdown: str) -> None:
    """``<name>.json`` and ``<name>.md`` in ``out_dir``; both carry the machine description."""
    write_json(os.path.join(out_dir, f"{name}.json"), data)
    machine = data.get("machine") or {}
    footer = "\n\n" + machine_markdown(machine) if machine else ""
    atomic_write_text(os.path.join(out_dir, f"{name}.md"), markdown.rstrip() + footer + "\n")


def machine_markdown(m: dict) -> str:
    threads = ", ".join(f"{k}={v}" for k, v in (m.get("threads") or {}).items())
    return (f"Machine: {m.get('cpu_model')}, {m.get('cpus_available')} CPUs available; {m.get('paddle')}, "
            f"paddlenlp {m.get('paddlenlp')}, paddleslim {m.get('paddleslim')}; Python {m.get('python')}; "
            f"device {m.get('device')}; threads {threads}; load average (1/5/15 min) "
            f"{m.get('load_average_1_5_15_min')} when written; git commit {m.get('git_commit')}.")


def md_table(header: List[str], rows: List[List]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
