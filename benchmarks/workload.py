"""What the benchmarks run on, defined once: model, data, fixed batch, widths and loss weights.

Full mode: the real pretrained MiniLM-L6-H384 (``dynabert.model.pretrained.default_model_dir()``) with a 2-class
classifier (seeded initialisation) and real SST-2 text from $GLUE_DIR, tokenised with MiniLM's vocabulary.
Smoke mode: ``dynabert.model.pretrained.tiny_bert`` and random token ids, so no file is needed.
Import this only after the thread count is fixed (it imports paddle).
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import paddle

from dynabert.config import CompressConfig, Config, OptimConfig, RunConfig
from dynabert.data.features import Feature, collate, encode
from dynabert.data.sources import load_split
from dynabert.model import pretrained

WIDTHS = (1.0, 0.75, 0.5, 0.25)   # the tutorial's width_mult_list, largest first
LAMBDA_DISTILL = 0.1              # DistillConfig(lambda_distill=0.1) in the tutorial
LAMBDA_LOGIT = 0.1                # lambda_logit = 0.1 in the tutorial (and the project's default)
LAMBDA_TASK = 0.0                 # the tutorial has no loss on the labels (the project's default adds it at 0.1)
SEED = 0
SMOKE_VOCAB = 64


@dataclass
class Workload:
    smoke: bool
    model_dir: Optional[str]
    train: List[Feature]
    dev: List[Feature]
    pad_token_id: int
    data_source: str
    max_seq_len: int

    @property
    def model_name(self) -> str:
        return "tiny_bert (2 layers, hidden 16, 4 heads; random weights)" if self.smoke else \
            "MiniLM-L6-H384 (all-MiniLM-L6-v2 pretrained weights, 6 layers, hidden 384, 12 heads, FFN 1536)"


def default_glue_dir() -> Optional[str]:
    """$GLUE_DIR, else the shared data directory next to the project (what the Makefile exports)."""
    env = os.environ.get("GLUE_DIR")
    if env:
        return env
    guess = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "glue"))
    return guess if os.path.isdir(os.path.join(guess, "SST-2")) else None


def _random_features(n: int, rng: np.random.RandomState, max_len: int) -> List[Feature]:
    out = []
    for _ in range(n):
        length = int(rng.randint(4, max_len + 1))
        ids = [2] + rng.randint(5, SMOKE_VOCAB, size=length - 2).tolist() + [3]
        out.append(Feature(ids, [0] * length, int(rng.randint(0, 2))))
    return out


def load_workload(smoke: bool, train_limit: int = 4096, dev_limit: Optional[int] = None,
                  max_seq_len: int = 64) -> Workload:
    if smoke:
        rng = np.random.RandomState(SEED)
        return Workload(True, None, _random_features(256, rng, 30), _random_features(64, rng, 30), 0,
                        "random token ids (smoke mode)", max_seq_len)
    model_dir = pretrained.default_model_dir()
    tokenizer = pretrained.load_tokenizer(model_dir)
    glue_dir = default_glue_dir()
    train, src_train = load_split("sst-2", "train", glue_dir, train_limit, allow_download=False)
    dev, src_dev = load_split("sst-2", "dev", glue_dir, dev_limit, allow_download=False)
    return Workload(False, model_dir, encode(train, tokenizer, max_seq_len), encode(dev, tokenizer, max_seq_len),
                    tokenizer.pad_token_id, f"train: {src_train}; dev: {src_dev}", max_seq_len)


def new_teacher(w: Workload, state: Optional[Dict] = None) -> paddle.nn.Layer:
    """A fresh teacher instance (eval mode); ``state`` (e.g. the reordered weights) replaces its weights."""
    if w.smoke:
        model = pretrained.tiny_bert(num_classes=2, seed=SEED, vocab_size=SMOKE_VOCAB)
    else:
        model = pretrained.load_model(w.model_dir, 2, dropout=None, seed=SEED)
    if state is not None:
        model.set_state_dict(state)
    model.eval()
    return model


def fixed_batch(w: Workload, global_batch: int, seq_len: int, rank: int = 0,
                world_size: int = 1) -> Dict[str, np.ndarray]:
    """This rank's slice of one fixed global batch: ``global_batch`` training rows (a seeded draw),
    every row padded to ``seq_len`` tokens."""
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} does not divide among {world_size} ranks")
    rows = np.random.RandomState(SEED).permutation(len(w.train))[:global_batch]
    local = global_batch // world_size
    mine = rows[rank * local:(rank + 1) * local]
    return collate([w.train[i] for i in mine], w.pad_token_id, pad_to=seq_len)


def unpadded_batch(w: Workload, global_batch: int, seq_len: int, rank: int = 0,
                   world_size: int = 1) -> Dict[str, np.ndarray]:
    """This rank's slice of a global batch WITHOUT padding, for the step-0 equivalence check: training rows
    of at least ``seq_len`` tokens (a seeded draw), each cut to its first ``seq_len - 1`` tokens plus its
    final [SEP]. The project's hidden-state loss averages over real tokens and the tutorial's over every
    position (dynabert/train/losses.py); only on a batch without padding are the two the same number."""
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} does not divide among {world_size} ranks")
    long_enough = [i for i, f in enumerate(w.train) if len(f.input_ids) >= seq_len]
    if len(long_enough) < global_batch:
        raise ValueError(f"only {len(long_enough)} training rows have {seq_len}+ tokens; {global_batch} needed")
    rows = np.random.RandomState(SEED).permutation(long_enough)[:global_batch]
    local = global_batch // world_size
    cut = [Feature(f.input_ids[:seq_len - 1] + f.input_ids[-1:], f.token_type_ids[:seq_len], f.label)
           for f in (w.train[i] for i in rows[rank * local:(rank + 1) * local])]
    batch = collate(cut, w.pad_token_id)
    assert batch["attention_mask"].all(), "the equivalence batch must have no padding"
    return batch


def bench_config(global_batch: int, learning_rate: float = 5e-5) -> Config:
    """The project's config for this workload: the tutorial's widths, loss weights (no label term) and sampling
    (every width every step, like for like), the trainer's default optimizer settings (AdamW, warm-up 0.1, weight
    decay 0.01, clipping at 1.0)."""
    return Config(compress=CompressConfig(widths=WIDTHS, lambda_distill=LAMBDA_DISTILL, lambda_logit=LAMBDA_LOGIT,
                                          lambda_task=LAMBDA_TASK, width_sampling="all",
                                          optim=OptimConfig(batch_size=global_batch, learning_rate=learning_rate)),
                  run=RunConfig(seed=SEED))


def save_state(model: paddle.nn.Layer, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    paddle.save({k: v.numpy() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)


def load_state(path: str) -> Dict[str, np.ndarray]:
    return paddle.load(path, return_numpy=True)


def parameter_bytes(params) -> int:
    return int(sum(int(np.prod(p.shape)) * p.element_size() for p in params))
