"""A run's data: training rows, the split that selection looks at, and dev, tokenised once.

The honest protocol (``data.select_on: validation``, the default) carves a validation split of
``data.validation_rows`` training rows, drawn with ``run.seed`` and never trained on; importance and
every checkpoint selection look only at it, and dev is read once per reported model. The tutorial's
protocol (``select_on: dev``) uses dev for all three, which flatters the table: the reported figure is
a maximum over many looks at the same rows.
"""
import hashlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from dynabert.collectives import Collectives
from dynabert.config import Config
from dynabert.data import Example, encode, get_task, load_split
from dynabert.errors import UserError
from dynabert.evaluation import evaluate
from dynabert.run_log import RunLog


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


def carve_validation(examples: List[Example], rows: int, seed: int, train_limit: Optional[int],
                     ) -> tuple:
    """(train, validation): ``rows`` examples drawn with ``seed`` become validation; the rest keep their
    file order, and ``train_limit`` then keeps the first of those."""
    if rows >= len(examples):
        raise UserError(f"data.validation_rows: {rows} rows asked for, but the training set has only "
                        f"{len(examples)}; lower it or set data.select_on=dev")
    picked = np.random.RandomState(seed).permutation(len(examples))[:rows]
    held = np.zeros(len(examples), dtype=bool)
    held[picked] = True
    validation = [examples[i] for i in sorted(picked)]
    train = [e for e, h in zip(examples, held) if not h]
    return (train[:train_limit] if train_limit else train), validation


def prepare_data(cfg: Config, tokenizer, log: RunLog) -> TaskData:
    spec = get_task(cfg.data.task)
    dev_split = spec.dev_splits[0]  # MNLI: dev_matched
    honest = cfg.data.select_on == "validation"
    # The honest protocol draws validation rows from the whole training file, so it reads all of it.
    train_rows, source = load_split(spec.name, "train", cfg.data.glue_dir,
                                    None if honest else cfg.data.train_limit, cfg.data.allow_download)
    log.info(f"data train: {source}")
    dev_rows, source = load_split(spec.name, dev_split, cfg.data.glue_dir, cfg.data.dev_limit,
                                  cfg.data.allow_download)
    log.info(f"data {dev_split}: {source}")
    validation_rows: List[Example] = []
    if honest:
        train_rows, validation_rows = carve_validation(train_rows, cfg.data.validation_rows, cfg.run.seed,
                                                       cfg.data.train_limit)
        log.info(f"data: {len(validation_rows)} training rows held out for validation (importance and "
                 f"selection); {len(train_rows)} rows trained on; {dev_split} is read only for the report")
    else:
        log.info(f"data: importance and selection on {dev_split} (the tutorial's protocol)")
    train = encode(train_rows, tokenizer, cfg.data.max_seq_len)
    dev = encode(dev_rows, tokenizer, cfg.data.max_seq_len)
    selection = encode(validation_rows, tokenizer, cfg.data.max_seq_len) if honest else dev
    pad_to = cfg.data.max_seq_len if cfg.data.padding == "max_length" else None
    return TaskData(spec.name, spec.is_regression, spec.num_classes, train, selection, dev,
                    "validation" if honest else "dev", tokenizer.pad_token_id, pad_to)


def metrics_on(features: Sequence, model_fn, data: TaskData, cfg: Config, comms: Collectives) -> Dict[str, float]:
    """Metrics of ``model_fn(batch) -> logits`` over ``features`` (sharded over ranks, gathered)."""
    return evaluate(model_fn, features, data.task, data.regression, cfg.run.eval_batch_size, comms,
                    data.pad_token_id)


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
