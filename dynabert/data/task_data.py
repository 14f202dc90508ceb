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
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from dynabert.config import Config
from dynabert.data import cache as corpus_cache
from dynabert.data.augmented import source_rows, variants_kept
from dynabert.data.features import encode
from dynabert.data.readers import read_examples
from dynabert.data.sources import load_split, task_file
from dynabert.data.tasks import TaskSpec, task_spec
from dynabert.errors import UserError


@dataclass
class TaskData:
    task: str
    regression: bool
    num_classes: int
    train: Sequence       # the task's own training rows (less the validation rows): the teacher learns these
    selection: Sequence   # what importance and checkpoint selection look at
    dev: Sequence         # what the results table reports
    selection_name: str   # "validation" or "dev"
    pad_token_id: int
    pad_to: Optional[int]  # None: dynamic padding
    spec: TaskSpec        # the task's labels and metric (compute_metrics, main_metric_name take it)
    augmented: Sequence = ()  # data.train_files' rows: distillation only (unless train_files_in_finetune)
    sources: Dict[str, str] = field(default_factory=dict)  # split -> where its rows came from, for the record

    @property
    def distill(self) -> Sequence:
        """What the compress stages train on: the task's rows and the augmented corpus."""
        return Joined(self.train, self.augmented) if len(self.augmented) else self.train


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
    for split in (data.train, data.selection, data.dev, data.augmented):
        lengths, labels = length_array(split), label_array(split)
        h.update(np.int64(len(lengths)).tobytes() + lengths.tobytes() + labels.tobytes())
    return h.hexdigest()[:16]


def cache_dir(cfg: Config) -> str:
    return cfg.data.cache_dir or os.path.join(cfg.run.out_dir, "cache")


def load_task_data(cfg: Config, tokenizer, *, needs_train: bool, log: Callable[[str], None],
                   verify: bool = False) -> TaskData:
    """The run's ``TaskData``: dev always; the training rows, the selection split and the augmented corpus
    only when the run trains (``needs_train``), so a run that does not train never reads the training
    corpus. Validation rows are carved from the task's own training rows only, never from the augmented
    corpus (whose rows are variants of the training rows: README, "Data"). ``verify``: hash the cached
    splits' files against their manifests (``corpus_cache.prepare``)."""
    spec = task_spec(cfg)
    dev_split = spec.dev_splits[0]  # MNLI: dev_matched
    honest = cfg.data.select_on == "validation"
    sources: Dict[str, str] = {}
    dev = load_features(cfg, spec, dev_split, tokenizer, log, limit=cfg.data.dev_limit, sources=sources,
                        verify=verify)
    sources["dev"] = sources.pop(dev_split)  # (MNLI: dev_matched) the reported split, whatever its file
    train: Sequence = []
    augmented: Sequence = []
    selection: Sequence = [] if honest else dev
    if needs_train:
        # The honest protocol draws validation rows from the whole training set, so it reads all of it.
        rows = load_features(cfg, spec, "train", tokenizer, log, limit=None if honest else cfg.data.train_limit,
                             sources=sources, verify=verify)
        if honest:
            train_idx, held = carve_indices(len(rows), cfg.data.validation_rows, cfg.run.seed, cfg.data.train_limit)
            train, selection = take(rows, train_idx), take(rows, held)
            sources["validation"] = f"{len(held)} rows of {sources['train']} held out with run.seed {cfg.run.seed}"
            log(f"data: {len(held)} training rows held out for validation (importance and selection); "
                f"{len(train_idx)} rows trained on; {dev_split} is read only for the report")
        else:
            train = rows
            log(f"data: importance and selection on {dev_split} (the tutorial's protocol)")
        if cfg.data.train_files:
            augmented = load_augmented(cfg, spec, tokenizer, log, sources=sources, verify=verify)
            if honest:
                augmented = drop_variants_of_held_out(cfg, spec, augmented, held, log)
            log(f"data: {len(augmented)} rows of data.train_files for distillation"
                + (" and the teacher's fine-tuning" if cfg.data.train_files_in_finetune else
                   " only (the teacher is fine-tuned on the task's own rows)"))
            if cfg.data.train_files_in_finetune:
                train, augmented = Joined(train, augmented), []
    else:
        log("data: this run does not train; the training corpus is not read")
    pad_to = cfg.data.max_seq_len if cfg.data.padding == "max_length" else None
    return TaskData(spec.name, spec.is_regression, spec.num_classes, train, selection, dev,
                    "validation" if honest else "dev", tokenizer.pad_token_id, pad_to, spec, augmented, sources)


def load_features(cfg: Config, spec: TaskSpec, split: str, tokenizer, log: Callable[[str], None], *, limit=None,
                  sources: Optional[Dict[str, str]] = None, verify: bool = False) -> Sequence:
    """A split's features: the corpus cache for files (GLUE_DIR's, custom data's), else PaddleNLP's download
    or the built-in set, tokenized in memory. ``sources[split]`` says which."""
    path, _ = task_file(spec, split, cfg.data.glue_dir)
    if path is not None:
        cached = corpus_cache.prepare(spec, split, path, tokenizer=tokenizer, max_seq_len=cfg.data.max_seq_len,
                                      cache_dir=cache_dir(cfg), limit=limit, log=log, verify=verify)
        source = f"{'' if spec.is_custom else 'GLUE_DIR '}{os.path.abspath(path)}"
        log(f"data {split}: {source}: {len(cached)} rows, tokenized in {cached.path}")
    else:
        examples, source = load_split(spec, split, cfg.data.glue_dir, limit, cfg.data.allow_download)
        log(f"data {split}: {source}")
        cached = encode(examples, tokenizer, cfg.data.max_seq_len)
    if sources is not None:
        sources[split] = source
    return cached


def load_augmented(cfg: Config, spec: TaskSpec, tokenizer, log: Callable[[str], None], *,
                   sources: Optional[Dict[str, str]] = None, verify: bool = False) -> Sequence:
    """data.train_files' rows (the format of the task's training file), tokenized once into a cache of their
    own."""
    files = corpus_cache.expand_files(cfg.data.train_files)
    if not files:
        raise UserError(f"data.train_files: no file matches {', '.join(cfg.data.train_files)}")
    if sources is not None:
        sources["augmented"] = ", ".join(os.path.abspath(f) for f in files)
    if task_file(spec, "train", cfg.data.glue_dir)[0] is None:  # no files to cache beside: in memory
        examples = [e for f in files for e in read_examples(f, spec, "train")]
        return encode(examples, tokenizer, cfg.data.max_seq_len)
    return corpus_cache.prepare(spec, "train", files[0], extra_files=files[1:], tokenizer=tokenizer,
                                max_seq_len=cfg.data.max_seq_len, cache_dir=cache_dir(cfg), log=log,
                                name=f"{spec.cache_prefix}.augmented", verify=verify)


def drop_variants_of_held_out(cfg: Config, spec: TaskSpec, augmented: Sequence, held: np.ndarray,
                              log: Callable[[str], None]) -> Sequence:
    """The augmented rows not made from a held-out training row, when the files say which row each was made
    from (``source_row``, dynabert/data/augmented.py); all of them, with a warning, when they do not."""
    folder = cache_dir(cfg)
    store = os.path.join(folder, f"{spec.cache_prefix}.augmented.source_rows.npz") if os.path.isdir(folder) else None
    rows = source_rows(corpus_cache.expand_files(cfg.data.train_files), store)
    if rows is None:
        log("data: warning: data.train_files has no source_row column, so variants of the held-out validation "
            "rows cannot be told apart and may be trained on (README, \"Data\")")
        return augmented
    if len(rows) != len(augmented):
        raise UserError(f"data.train_files: {len(rows)} source_row values for {len(augmented)} rows")
    keep = variants_kept(rows, held)
    log(f"data: {len(augmented) - len(keep)} augmented rows made from held-out validation rows dropped "
        f"(source_row); {len(keep)} kept")
    return take(augmented, keep)


class Joined:
    """Two splits as one, without copying rows (the augmented corpus after the task's own rows)."""

    def __init__(self, first: Sequence, second: Sequence):
        self.first, self.second = first, second
        self.lengths = np.concatenate([length_array(first), length_array(second)])
        self.labels = np.concatenate([label_array(first), label_array(second)])

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, i):
        i = int(i)
        return self.first[i] if i < len(self.first) else self.second[i - len(self.first)]


def length_array(split: Sequence) -> np.ndarray:
    lengths = getattr(split, "lengths", None)
    return np.asarray(lengths if lengths is not None else [len(f.input_ids) for f in split], dtype=np.int64)


def label_array(split: Sequence) -> np.ndarray:
    labels = getattr(split, "labels", None)
    return np.asarray(labels if labels is not None else [f.label for f in split], dtype=np.float64)


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
