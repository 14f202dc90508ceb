"""A run's data: training rows, the split that selection looks at, and dev, in one call (``load_task_data``).

The path runs one way: the task's facts are looked up once (``TaskSpec``); a reader turns a file into
examples, the tokenizer turns those into ids, and the corpus cache (``data/cache.py``) stores them and
opens them memory-mapped; data from PaddleNLP's download or the built-in set is small and stays in memory.

The honest protocol (``data.select_on: validation``, the default) carves a validation split of
``data.validation_rows`` training rows, drawn with ``run.seed`` and never trained on; importance and
every checkpoint selection look only at it, and dev is read once per reported model. The tutorial's
protocol (``select_on: dev``) uses dev for all three, which flatters the table: the reported figure is
a maximum over many looks at the same rows.
"""
import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from dynabert.config import Config
from dynabert.data import cache as corpus_cache
from dynabert.data.features import encode
from dynabert.data.readers import read_glue_tsv
from dynabert.data.sources import glue_file, load_split
from dynabert.data.tasks import TaskSpec, get_task
from dynabert.errors import UserError


@dataclass
class TaskData:
    task: str
    regression: bool
    num_classes: int
    train: Sequence
    selection: Sequence   # what importance and checkpoint selection look at
    dev: Sequence         # what the results table reports
    selection_name: str   # "validation" or "dev"
    pad_token_id: int
    pad_to: Optional[int]  # None: dynamic padding


def carve_indices(n: int, rows: int, seed: int, train_limit: Optional[int]) -> tuple:
    """(train, validation) row indices: ``rows`` rows drawn with ``seed`` are validation; the rest keep
    their file order, and ``train_limit`` then keeps the first of those."""
    if rows >= n:
        raise UserError(f"data.validation_rows: {rows} rows asked for, but the training set has only {n}; "
                        "lower it or set data.select_on=dev")
    held = np.sort(np.random.RandomState(seed).permutation(n)[:rows])
    keep = np.ones(n, dtype=bool)
    keep[held] = False
    train = np.flatnonzero(keep)
    return (train[:train_limit] if train_limit else train), held


def data_fingerprint(data: TaskData) -> str:
    """A short digest of what each split holds (row count, token lengths, labels): ranks that read
    different files, or the same files differently, disagree on it."""
    h = hashlib.sha256()
    for split in (data.train, data.selection, data.dev):
        lengths = getattr(split, "lengths", None)
        lengths = np.asarray(lengths if lengths is not None else [len(f.input_ids) for f in split], dtype=np.int64)
        labels = getattr(split, "labels", None)
        labels = np.asarray(labels if labels is not None else [f.label for f in split], dtype=np.float64)
        h.update(np.int64(len(lengths)).tobytes() + lengths.tobytes() + labels.tobytes())
    return h.hexdigest()[:16]


def cache_dir(cfg: Config) -> str:
    return cfg.data.cache_dir or os.path.join(cfg.run.out_dir, "cache")


def load_task_data(cfg: Config, tokenizer, *, needs_train: bool, log: Callable[[str], None],
                   verify: bool = False) -> TaskData:
    """The run's ``TaskData``: dev always; the training rows and the selection split only when the run
    trains (``needs_train``), so a run that does not train never reads the training corpus. ``verify``:
    hash the cached splits' files against their manifests (``corpus_cache.prepare``)."""
    spec = get_task(cfg.data.task)
    dev_split = spec.dev_splits[0]  # MNLI: dev_matched
    honest = cfg.data.select_on == "validation"
    dev = load_features(cfg, spec, dev_split, tokenizer, log, limit=cfg.data.dev_limit, verify=verify)
    train: Sequence = []
    selection: Sequence = [] if honest else dev
    if needs_train:
        # The honest protocol draws validation rows from the whole training set, so it reads all of it.
        rows = load_features(cfg, spec, "train", tokenizer, log, extra=cfg.data.train_files,
                             limit=None if honest else cfg.data.train_limit, verify=verify)
        if honest:
            train_idx, held = carve_indices(len(rows), cfg.data.validation_rows, cfg.run.seed, cfg.data.train_limit)
            train, selection = take(rows, train_idx), take(rows, held)
            log(f"data: {len(held)} training rows held out for validation (importance and selection); "
                f"{len(train_idx)} rows trained on; {dev_split} is read only for the report")
        else:
            train = rows
            log(f"data: importance and selection on {dev_split} (the tutorial's protocol)")
    else:
        log("data: this run does not train; the training corpus is not read")
    pad_to = cfg.data.max_seq_len if cfg.data.padding == "max_length" else None
    return TaskData(spec.name, spec.is_regression, spec.num_classes, train, selection, dev,
                    "validation" if honest else "dev", tokenizer.pad_token_id, pad_to)


def load_features(cfg: Config, spec: TaskSpec, split: str, tokenizer, log: Callable[[str], None], *, limit=None,
                  extra=(), verify: bool = False) -> Sequence:
    """A split's features: the corpus cache for GLUE_DIR files, else PaddleNLP's download or the built-in
    set, tokenized in memory."""
    path, _ = glue_file(spec, split, cfg.data.glue_dir)
    if path is not None:
        cached = corpus_cache.prepare(spec, split, path, tokenizer=tokenizer, max_seq_len=cfg.data.max_seq_len,
                                      cache_dir=cache_dir(cfg), extra_files=extra, limit=limit, log=log,
                                      verify=verify)
        more = f" + {len(corpus_cache.expand_files(extra))} extra file(s)" if extra else ""
        log(f"data {split}: GLUE_DIR {path}{more}: {len(cached)} rows, tokenized in {cached.path}")
        return cached
    examples, source = load_split(spec, split, cfg.data.glue_dir, limit, cfg.data.allow_download)
    for file in corpus_cache.expand_files(extra):
        examples += read_glue_tsv(file, spec, "train")
    examples = examples[:limit] if limit else examples
    log(f"data {split}: {source}" + (f" + {len(extra)} extra file pattern(s)" if extra else ""))
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
