"""Stage 0, ``prepare``: the data a run needs, tokenized once.

A split that comes from GLUE_DIR (or ``data.train_files``) is tokenized once into the on-disk corpus cache
(``dynabert/corpus_cache.py``) and opened memory-mapped: a rank holds only its current batch's rows, and a
warm start costs seconds whatever the corpus size. Every rank calls this; a file lock lets one process per
cache directory build while the others wait (no collective), so a node-local cache is built once per
node and a cache on a filesystem all nodes share is built once per job. Data from PaddleNLP's download or
the built-in synthetic set is small and stays in memory. Runs that do not train (export only) never read
the training corpus. ``dynabert-prepare`` runs this stage alone, before a job.
"""
import os
from typing import Optional, Sequence

import numpy as np

from dynabert import corpus_cache
from dynabert.config import Config
from dynabert.data import encode, get_task, glue_file, load_split, read_glue_tsv
from dynabert.run_log import RunLog
from dynabert.task_data import TaskData, carve_indices


def needs_training_data(cfg: Config) -> bool:
    stages = cfg.run.stages
    return ("finetune" in stages and not cfg.model.teacher) or "compress" in stages or "compress_depth" in stages


def cache_dir(cfg: Config) -> str:
    return cfg.data.cache_dir or os.path.join(cfg.run.out_dir, "cache")


def prepare_data(cfg: Config, tokenizer, log: RunLog, *, needs_train: Optional[bool] = None) -> TaskData:
    spec = get_task(cfg.data.task)
    dev_split = spec.dev_splits[0]  # MNLI: dev_matched
    honest = cfg.data.select_on == "validation"
    if needs_train is None:
        needs_train = needs_training_data(cfg)
    dev = load_features(cfg, spec.name, dev_split, tokenizer, log, limit=cfg.data.dev_limit)
    train: Sequence = []
    selection: Sequence = [] if honest else dev
    if needs_train:
        # The honest protocol draws validation rows from the whole training set, so it reads all of it.
        rows = load_features(cfg, spec.name, "train", tokenizer, log, extra=cfg.data.train_files,
                             limit=None if honest else cfg.data.train_limit)
        if honest:
            train_idx, held = carve_indices(len(rows), cfg.data.validation_rows, cfg.run.seed, cfg.data.train_limit)
            train, selection = take(rows, train_idx), take(rows, held)
            log.info(f"data: {len(held)} training rows held out for validation (importance and selection); "
                     f"{len(train_idx)} rows trained on; {dev_split} is read only for the report")
        else:
            train = rows
            log.info(f"data: importance and selection on {dev_split} (the tutorial's protocol)")
    else:
        log.info("data: this run does not train; the training corpus is not read")
    pad_to = cfg.data.max_seq_len if cfg.data.padding == "max_length" else None
    return TaskData(spec.name, spec.is_regression, spec.num_classes, train, selection, dev,
                    "validation" if honest else "dev", tokenizer.pad_token_id, pad_to)


def load_features(cfg: Config, task: str, split: str, tokenizer, log: RunLog, *, limit=None, extra=()) -> Sequence:
    """A split's features: the corpus cache for GLUE_DIR files, else PaddleNLP's download or the built-in
    set, tokenized in memory."""
    path, _ = glue_file(task, split, cfg.data.glue_dir)
    if path is not None:
        cached = corpus_cache.prepare(task, split, path, tokenizer=tokenizer, max_seq_len=cfg.data.max_seq_len,
                                      cache_dir=cache_dir(cfg), extra_files=extra, limit=limit, log=log.info)
        more = f" + {len(corpus_cache.expand_files(extra))} extra file(s)" if extra else ""
        log.info(f"data {split}: GLUE_DIR {path}{more}: {len(cached)} rows, tokenized in {cached.path}")
        return cached
    examples, source = load_split(task, split, cfg.data.glue_dir, limit, cfg.data.allow_download)
    for file in corpus_cache.expand_files(extra):
        examples += read_glue_tsv(file, get_task(task), "train")
    examples = examples[:limit] if limit else examples
    log.info(f"data {split}: {source}" + (f" + {len(extra)} extra file pattern(s)" if extra else ""))
    return encode(examples, tokenizer, cfg.data.max_seq_len)


class Rows:
    """A subset of a cached split, by row index, without copying rows (only the index and lengths)."""

    def __init__(self, base, indices: np.ndarray):
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)
        self.lengths = np.asarray(base.lengths)[self.indices]
        self.labels = np.asarray(base.labels)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.base[int(self.indices[i])]


def take(rows: Sequence, indices: np.ndarray) -> Sequence:
    if isinstance(rows, list):
        return [rows[int(i)] for i in indices]
    return Rows(rows, indices)
