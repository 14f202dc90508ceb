"""A run's data: training rows, the split that selection looks at, and dev (built by stages/prepare.py).

The honest protocol (``data.select_on: validation``, the default) carves a validation split of
``data.validation_rows`` training rows, drawn with ``run.seed`` and never trained on; importance and
every checkpoint selection look only at it, and dev is read once per reported model. The tutorial's
protocol (``select_on: dev``) uses dev for all three, which flatters the table: the reported figure is
a maximum over many looks at the same rows.
"""
import hashlib
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np

from dynabert.collectives import Collectives
from dynabert.config import Config
from dynabert.errors import UserError
from dynabert.evaluation import evaluate


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
