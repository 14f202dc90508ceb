"""Global batches, sharded across ranks, reproducible from (seed, epoch).

Every rank draws the same permutation and cuts the same global batches; rank r takes the r-th slice.
With dynamic padding each slice is padded to the longest sequence of the whole *global* batch, so the
per-rank mean losses, averaged over ranks, equal the one-process mean over the global batch exactly:
N processes with batch B follow the same trajectory as one process with batch N*B.
"""
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import paddle

from dynabert.data.features import collate
from dynabert.errors import UserError


def local_batch_size(num_examples: int, global_batch: int, world_size: int, key: str) -> int:
    """This rank's share of a global batch; the batch must split evenly and fit in the data."""
    if global_batch % world_size:
        raise UserError(f"{key}: global batch size {global_batch} does not divide among {world_size} workers")
    if num_examples < global_batch:
        raise UserError(f"{key}: the training set has {num_examples} examples, fewer than one global "
                        f"batch of {global_batch}")
    return global_batch // world_size


MEGABATCH = 50  # batches sorted together by length when grouping (as in Hugging Face's group_by_length)


class GlobalBatches:
    """Training batches of one epoch for one rank. The last incomplete global batch is dropped (it could
    not be split evenly across ranks), so every rank takes the same number of steps."""

    def __init__(self, features: Sequence, global_batch: int, seed: int, rank: int, world_size: int,
                 pad_token_id: int, pad_to: Optional[int] = None, key: str = "batch_size",
                 group_by_length: bool = False):
        self.features = features
        self.group_by_length = group_by_length
        self.global_batch = global_batch
        self.local_batch = local_batch_size(len(features), global_batch, world_size, key)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.pad_token_id, self.pad_to = pad_token_id, pad_to
        self.lengths = _lengths(features) if group_by_length or pad_to is None else None

    def __len__(self) -> int:
        return len(self.features) // self.global_batch

    def global_indices(self, epoch: int) -> np.ndarray:
        """[steps, global_batch] example indices of an epoch, in step order; identical on every rank."""
        batches, order = self._epoch(epoch)
        return batches[order]

    def _epoch(self, epoch: int):
        """(batches [steps, global_batch], the order of the steps). Memory: one index per example (int32
        below 2**31 examples), no copies of it: a 5M-row corpus costs 20 MB here.

        With ``group_by_length``, each run of ``MEGABATCH`` consecutive batches of the shuffled order is
        sorted by length before it is cut, and the batches are then shuffled: batches hold sentences of
        similar length, so dynamic padding wastes little (SST-2: mean 13 tokens, but a random batch of 32
        pads to ~35), while every example still appears once per epoch in a seeded random order."""
        rng = np.random.RandomState((self.seed, epoch))
        n = len(self.features)
        order = np.arange(n, dtype=np.int32 if n < 2 ** 31 else np.int64)
        rng.shuffle(order)  # the same draw as rng.permutation(n)
        order = order[: len(self) * self.global_batch]
        if self.group_by_length:
            size = MEGABATCH * self.global_batch
            for start in range(0, len(order), size):
                chunk = order[start:start + size]
                chunk[:] = chunk[np.argsort(self.lengths[chunk], kind="stable")]
        steps = rng.permutation(len(self)) if self.group_by_length else np.arange(len(self))
        return order.reshape(len(self), self.global_batch), steps

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
        batches, steps = self._epoch(epoch)
        for step in steps[start_step:]:
            indices = batches[step]
            pad_to = self.pad_to
            if pad_to is None:  # dynamic: longest of the global batch, so every rank agrees
                pad_to = int(self.lengths[indices].max())
            mine = indices[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]
            batch = collate([self.features[i] for i in mine], self.pad_token_id, pad_to=pad_to)
            # Per-token losses are normalised by the global batch's real tokens (this rank's share of them),
            # not this rank's own count, so the mean over ranks is the one-process token mean exactly.
            batch["token_share"] = np.float32(self._tokens(indices) / self.world_size)
            yield batch

    def _tokens(self, indices) -> int:
        if self.lengths is not None:
            return int(self.lengths[indices].sum())
        return sum(len(self.features[i].input_ids) for i in indices)


def eval_batches(features: Sequence, batch_size: int, rank: int, world_size: int,
                 pad_token_id: int) -> Iterator[tuple]:
    """This rank's share of an evaluation set: (example indices, batch). Examples are sorted by length
    (less padding) and cut into batches; the batches are dealt to the ranks by cost (padded tokens),
    most expensive first, each to the least loaded rank, so every rank gets about the same work
    (contiguous blocks gave the last rank all the longest batches and made everyone wait for it). Every
    rank computes the same deal. No example is duplicated or dropped."""
    lengths = _lengths(features)
    order = np.argsort(lengths, kind="stable")
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    load = [0] * world_size
    mine = []
    for b in sorted(range(len(batches)), key=lambda b: -len(batches[b]) * int(lengths[batches[b][-1]])):
        owner = min(range(world_size), key=lambda r: (load[r], r))
        load[owner] += len(batches[b]) * int(lengths[batches[b][-1]])
        if owner == rank:
            mine.append(b)
    for b in sorted(mine):
        yield batches[b], collate([features[i] for i in batches[b]], pad_token_id)


def _lengths(features: Sequence) -> np.ndarray:
    lengths = getattr(features, "lengths", None)  # a corpus cache knows them without reading rows
    return np.asarray(lengths if lengths is not None else [len(f.input_ids) for f in features])


def to_tensors(batch: Dict[str, np.ndarray]) -> Dict[str, paddle.Tensor]:
    return {k: paddle.to_tensor(v) for k, v in batch.items()}
