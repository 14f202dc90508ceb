"""The ready-to-serve directory ``select`` writes for the chosen candidate, and loading it back.

    <dir>/card.json                 what it is and how it measured (see ``card``)
    <dir>/model.pdmodel, .pdiparams Paddle Inference runtimes (fp32: the exported program; int8: PaddleSlim's)
    <dir>/model.onnx                the onnxruntime runtime (fp32 or int8)
    <dir>/vocab.txt (or vocab.json + merges.txt: RoBERTa's BPE), tokenizer_config.json, special_tokens_map.json

``load_served(path)`` also accepts a plain export directory (``<run>/export/width_W``): its Paddle inference
model in fp32.
"""
import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Dict, Optional

from dynabert.deploy.candidates import Candidate
from dynabert.deploy.runtime import Runner, load_runner
from dynabert.errors import UserError
from dynabert.io_utils import atomic_directory
from dynabert.model.export import EXPORT_META
from dynabert.model.pretrained import max_positions

CARD = "card.json"
CARD_FORMAT = "dynabert-served-model/1"
TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
DEFAULT_MAX_SEQ_LEN = 128  # a plain export does not record the run's data.max_seq_len
SERVED_NAMES = {"model": "model.pdmodel", "params": "model.pdiparams", "onnx": "model.onnx"}


def _figure(split: dict, metrics: dict, metric_name: str) -> dict:
    return {"split": split["split"], "value": float(metrics[metric_name]), "examples": len(split["features"]),
            "source": split["source"], "digest": split["digest"],
            "all": {k: float(v) for k, v in metrics.items()}}


def card(candidate: Candidate, *, row: dict, decided_on: dict, reported_on: dict, reported: dict, machine: dict,
         latency: dict, run_dir: str, commit: Optional[str], max_seq_len: int, constraints: dict,
         data_differs_from_run: bool = False) -> dict:
    """The JSON card: every field a person (or a serving system) needs to know what was chosen and why. Each
    figure names its split, the data's source and digest: ``selected_on`` decided the choice, ``value``
    (dev, read once for this model) is the one to report."""
    m, spec = candidate.model, decided_on["spec"]
    return {
        "format": CARD_FORMAT,
        "task": spec.name,
        "labels": list(spec.labels) if spec.labels else None,
        "text_columns": [spec.text_a, spec.text_b],  # the input's columns (dynabert-predict reads them too)
        "max_seq_len": int(max_seq_len),
        "max_position_embeddings": max_positions(m.path)[0],  # the longest input it takes (dynabert-predict)
        "metric": {"name": spec.main_metric, **_figure(reported_on, reported, spec.main_metric),
                   "selected_on": _figure(decided_on, row["metrics"], spec.main_metric),
                   "data_differs_from_run": bool(data_differs_from_run)},
        "latency": {"median_ms": float(latency["median_ms"]), "p90_ms": float(latency["p90_ms"]),
                    "runs": int(latency["runs"]), "batch_size": int(latency["batch_size"]),
                    "seq_len": int(latency["seq_len"]), "threads": int(latency["threads"])},
        "machine": machine,
        "parameters": int(m.parameters),
        "encoder_parameters": int(m.encoder_parameters),
        "size_bytes": int(candidate.size_bytes),
        "width": float(m.width),
        "depth": None if m.depth is None else float(m.depth),
        "layers": int(m.layers),
        "num_heads": int(m.num_heads),
        "precision": candidate.precision,
        "runtime": candidate.runtime,
        "files": {k: SERVED_NAMES[k] for k in candidate.files},
        "source": {"run_dir": os.path.abspath(run_dir), "export_dir": os.path.abspath(m.path),
                   "git_commit": commit},
        "selection": {"constraints": constraints, "pareto": bool(row["pareto"])},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_served(candidate: Candidate, out_dir: str, card_data: dict) -> str:
    """Copy the candidate's model files and the tokenizer, write the card; all or nothing (atomic swap)."""
    with atomic_directory(out_dir) as tmp:
        for key, path in candidate.files.items():
            shutil.copyfile(path, os.path.join(tmp, SERVED_NAMES[key]))
        for name in TOKENIZER_FILES:
            source = os.path.join(candidate.model.path, name)
            if os.path.isfile(source):
                shutil.copyfile(source, os.path.join(tmp, name))
        with open(os.path.join(tmp, CARD), "w", encoding="utf-8") as f:
            json.dump(card_data, f, indent=2)
            f.write("\n")
    return out_dir


@dataclass
class Served:
    runner: Runner
    tokenizer: object
    card: Dict  # for a plain export directory: a minimal card (no metric or latency)

    @property
    def labels(self):
        return self.card.get("labels")


def _read_card(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
        raise UserError(f"{path}: not a dynabert model card (format {CARD_FORMAT!r} expected)")
    for key in ("runtime", "precision", "files"):
        if key not in data:
            raise UserError(f"{path}: no {key!r}")
    return data


def _export_card(path: str) -> dict:
    """A plain export directory: its Paddle inference model in fp32. Its labels are those its metadata records
    (an export made before they were recorded: the class indices; one output: a regression score)."""
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    with open(os.path.join(path, EXPORT_META), encoding="utf-8") as f:
        task = json.load(f).get("task") or {}
    return {"runtime": "paddle", "precision": "fp32", "task": task.get("name"), "labels": task.get("labels"),
            "text_columns": task.get("text_columns"),
            "max_seq_len": min(DEFAULT_MAX_SEQ_LEN, int(config.get("max_position_embeddings", 512))),
            "files": {"model": "inference/model.pdmodel", "params": "inference/model.pdiparams"}}


def load_served(path: str, *, threads: int = 1) -> Served:
    """A served directory (card.json) or a plain export directory, ready to run."""
    from dynabert.model.pretrained import load_tokenizer

    if not os.path.isdir(path):
        raise UserError(f"{path}: no such model directory")
    if os.path.isfile(os.path.join(path, CARD)):
        data = _read_card(os.path.join(path, CARD))
    elif os.path.isfile(os.path.join(path, EXPORT_META)):
        data = _export_card(path)
    else:
        raise UserError(f"{path}: neither a served model ({CARD}) nor an exported sub-model ({EXPORT_META})")
    files = {k: os.path.join(path, v) for k, v in data["files"].items()}
    runner = load_runner(data["runtime"], data["precision"], files, threads=threads)
    return Served(runner, load_tokenizer(path), data)
