"""What ``select`` measures for each candidate: its metric on the run's reported split, its latency on this
machine, and a description of the machine.

Metric: on the run's own splits (``dynabert.data.record``: the rows the run read, or a refusal), the
selection split to decide and dev for the chosen candidate's reported figure, for a GLUE task or
custom data; each candidate's logits are
scored with ``dynabert.data.metrics``.

Latency: one fixed batch (``batch_size`` x ``seq_len`` random token ids, every position a real token), the
runners timed in rounds with the order rotated every round, so a slow period of a shared machine hits every
candidate alike; median and 90th percentile of the timed runs after warm-up.
"""
import os
import platform
import subprocess
import time
from importlib import metadata
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from dynabert.data.batching import eval_batches
from dynabert.data.metrics import compute_metrics
from dynabert.data.task_data import TaskData
from dynabert.deploy.quantize import INPUT_NAMES
from dynabert.machine import available_cpus, cpu_model  # noqa: F401  (shared: dynabert/machine.py)


# ------------------------------------------------------------------------------------------------
# metric on the reported split
# ------------------------------------------------------------------------------------------------
def split_of(data: TaskData, provenance: dict, name: str) -> dict:
    """{"task", "spec", "split", "source", "digest", "features", "regression", "metric_name"} of one of the
    run's splits: ``name`` is "validation" (what the run's selection looked at) or "dev" (what its table reports)."""
    spec = data.spec
    features = data.dev if name == "dev" else data.selection
    return {"task": spec.name, "spec": spec, "split": name, "source": provenance["sources"].get(name, "?"),
            "digest": provenance["splits"].get(name, {}).get("digest"), "regression": spec.is_regression,
            "metric_name": spec.main_metric, "features": features}


def predict_logits(runner: Callable, features: Sequence, *, batch_size: int, pad_token_id: int) -> np.ndarray:
    """Logits of every feature, in the features' order (batched by length to pad little)."""
    out: List[Optional[np.ndarray]] = [None] * len(features)
    for idx, batch in eval_batches(features, batch_size, 0, 1, pad_token_id):
        logits = runner({name: batch[name] for name in INPUT_NAMES})
        for i, row in zip(idx, logits):
            out[int(i)] = row
    return np.stack(out)


def evaluate(runner: Callable, split: dict, *, batch_size: int, pad_token_id: int) -> Dict[str, float]:
    logits = predict_logits(runner, split["features"], batch_size=batch_size, pad_token_id=pad_token_id)
    predictions = logits.reshape(-1) if split["regression"] else logits.argmax(axis=-1)
    labels = np.asarray([split["features"][i].label for i in range(len(split["features"]))])
    return compute_metrics(split["spec"], predictions, labels)


# ------------------------------------------------------------------------------------------------
# latency
# ------------------------------------------------------------------------------------------------
def latency_batch(*, batch_size: int, seq_len: int, vocab_size: int, cls_id: int, sep_id: int,
                  seed: int = 0) -> Dict[str, np.ndarray]:
    """``[CLS] w ... w [SEP]`` of random ordinary tokens, every position real (no padding to skip)."""
    rng = np.random.RandomState(seed)
    low = min(1000, vocab_size // 2)  # past the special and unused tokens of a BERT vocabulary
    ids = rng.randint(low, vocab_size, size=(batch_size, seq_len)).astype(np.int64)
    ids[:, 0] = cls_id
    ids[:, -1] = sep_id
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
            "attention_mask": np.ones((batch_size, seq_len), np.float32)}


def time_runners(runners: Dict[str, Callable], batch: Dict[str, np.ndarray], *, warmup: int = 2,
                 min_runs: int = 10, min_seconds: float = 2.0, max_runs: int = 100) -> Dict[str, dict]:
    """{name: {"median_ms", "p90_ms", "min_ms", "runs"}}. Every runner runs ``warmup`` times, then in rounds
    (each runner once per round, the order rotated) until each has ``min_runs`` runs and ``min_seconds`` of
    timed runs, or ``max_runs`` rounds."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name](batch)
    times: Dict[str, List[float]] = {name: [] for name in names}
    rounds = 0
    while rounds < max_runs and (rounds < min_runs or min(sum(t) for t in times.values()) < min_seconds):
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name](batch)
            times[name].append(time.perf_counter() - start)
        rounds += 1
    return {name: {"median_ms": float(np.median(t)) * 1000, "p90_ms": float(np.percentile(t, 90)) * 1000,
                   "min_ms": float(min(t)) * 1000, "runs": len(t)} for name, t in times.items()}


# ------------------------------------------------------------------------------------------------
# the machine
# ------------------------------------------------------------------------------------------------
def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def code_commit() -> Optional[str]:
    """The git commit of the dynabert checkout doing the measuring (None when installed from a package)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def machine(threads: int) -> dict:
    """Where the latencies were measured; the load average says how busy the machine was at the time."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    paddle_dist = "paddlepaddle-gpu" if _version("paddlepaddle-gpu") else "paddlepaddle"
    return {"hostname": platform.node(), "cpu_model": cpu_model(), "cpus_available": available_cpus(),
            "platform": platform.platform(), "python": platform.python_version(), "threads": int(threads),
            "packages": {name: _version(name) for name in (paddle_dist, "paddleslim", "paddle2onnx", "onnxruntime")},
            "load_average_1_5_15_min": load}
