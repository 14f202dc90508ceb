"""What data a run used, written beside it (``<out_dir>/data.json``), so that a later ``dynabert-select`` scores
on the same rows or refuses.

The record names each split's source (a GLUE_DIR file, PaddleNLP's download, the built-in synthetic set, an
augmented corpus), where the corpus cache was, and a digest of what each split held (rows, token lengths,
labels). ``config.yaml`` alone cannot say it: ``data.glue_dir: null`` means "whatever $GLUE_DIR was".
"""
import dataclasses
import hashlib
import json
import os
from typing import Callable, Optional, Sequence

import numpy as np

from dynabert.config import Config
from dynabert.data.task_data import TaskData, cache_dir, label_array, length_array, load_task_data
from dynabert.errors import UserError
from dynabert.io_utils import atomic_write_text

RECORD = "data.json"
FORMAT = 1


def split_digest(split: Sequence) -> str:
    lengths, labels = length_array(split), label_array(split)
    return hashlib.sha256(np.int64(len(lengths)).tobytes() + lengths.tobytes() + labels.tobytes()).hexdigest()[:16]


def describe(data: TaskData, cfg: Config) -> dict:
    glue_dir = cfg.data.glue_dir if cfg.data.glue_dir is not None else os.environ.get("GLUE_DIR", "")
    splits = {"train": data.train, data.selection_name: data.selection, "dev": data.dev, "augmented": data.augmented}
    return {"format": FORMAT, "task": data.task, "selection_split": data.selection_name,
            "validation_rows": cfg.data.validation_rows if data.selection_name == "validation" else 0,
            "seed": cfg.run.seed, "glue_dir": os.path.abspath(glue_dir) if glue_dir else None,
            "cache_dir": os.path.abspath(cache_dir(cfg)), "sources": dict(data.sources),
            "splits": {name: {"rows": len(rows), "digest": split_digest(rows)} for name, rows in splits.items()
                       if len(rows)}}


def write(out_dir: str, record: dict) -> None:
    atomic_write_text(os.path.join(out_dir, RECORD), json.dumps(record, indent=2) + "\n")


def load_run_data(run_dir: str, cfg: Config, tokenizer, *, glue_dir: Optional[str],
                  log: Callable[[str], None]) -> tuple:
    """(TaskData, record) of a finished run, read as the run read it (its cache when present). Refuses, in
    one line, data that is gone or differs from the record, unless ``glue_dir`` names other data on purpose
    (the record then says so). Never falls back to a download or the synthetic set the run did not use."""
    path = os.path.join(run_dir, RECORD)
    record = None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    elif glue_dir is None:
        raise UserError(f"{path}: missing, so the data this run used is unknown (runs record it since the select "
                        "stage scores on the selection split); give --glue-dir to score on a GLUE directory")
    data_cfg = cfg.data
    if glue_dir is not None:
        data_cfg = dataclasses.replace(data_cfg, glue_dir=glue_dir, allow_download=False)
    else:
        recorded = record.get("glue_dir")
        if recorded and not os.path.isdir(recorded):
            raise UserError(f"{path}: the run's data {recorded} is gone; give --glue-dir to score on other data")
        used_download = any("PaddleNLP download" in s for s in record.get("sources", {}).values())
        data_cfg = dataclasses.replace(data_cfg, glue_dir=recorded or "", allow_download=used_download,
                                       cache_dir=record.get("cache_dir") if os.path.isdir(record.get("cache_dir")
                                                                                          or "") else None)
    run_cfg = dataclasses.replace(cfg, data=data_cfg, run=dataclasses.replace(cfg.run, out_dir=run_dir))
    data = load_task_data(run_cfg, tokenizer, needs_train=True, log=log)
    now = describe(data, run_cfg)
    if record is not None and glue_dir is None:
        for split in (record["selection_split"], "dev"):
            before, after = record["splits"].get(split, {}), now["splits"].get(split, {})
            if before.get("digest") != after.get("digest"):
                raise UserError(f"{path}: the run's {split} rows differ from what it recorded ({before.get('rows')} "
                                f"rows, digest {before.get('digest')}; now {after.get('rows')} rows, digest "
                                f"{after.get('digest')}, from {data.sources.get(split, '?')}); give --glue-dir to "
                                "score on other data on purpose")
    now["differs_from_run"] = bool(glue_dir is not None)
    return data, now
