"""Training and evaluation batches: sharding across ranks, padding, length grouping, balance."""
import numpy as np
import pytest

from dynabert.data.batching import GlobalBatches, eval_batches
from dynabert.data.features import Feature
from dynabert.errors import UserError


def features(n=403, seed=0):
    rng = np.random.RandomState(seed)
    lengths = np.clip(rng.lognormal(2.5, 0.6, size=n).astype(int), 3, 64)  # SST-2-like: many short, few long
    return [Feature([2] + [7] * (int(L) - 2) + [3], [0] * int(L), i % 2) for i, L in enumerate(lengths)]


@pytest.mark.parametrize("group", [False, True])
def test_ranks_partition_each_global_batch_and_agree(group):
    data = features()
    ranks = [GlobalBatches(data, 32, seed=3, rank=r, world_size=4, pad_token_id=0, group_by_length=group)
             for r in range(4)]
    assert len(ranks[0]) == len(data) // 32
    seen = []
    for step, parts in enumerate(zip(*(b.epoch(1) for b in ranks))):
        lengths = {p["input_ids"].shape[1] for p in parts}
        assert len(lengths) == 1  # every rank pads to the longest row of the whole global batch
        seen.extend(int(x) for x in ranks[0].global_indices(1)[step])
        assert all(len(p["labels"]) == 8 for p in parts)
    assert len(seen) == len(set(seen)) == len(ranks[0]) * 32  # no example twice in an epoch
    np.testing.assert_array_equal(ranks[0].global_indices(1), ranks[3].global_indices(1))
    assert not np.array_equal(ranks[0].global_indices(1), ranks[0].global_indices(2))


def test_length_grouping_cuts_padding():
    data = features(2000)
    def padded_tokens(group):
        batches = GlobalBatches(data, 32, seed=0, rank=0, world_size=1, pad_token_id=0, group_by_length=group)
        return sum(b["input_ids"].size for b in batches.epoch(0))
    real = sum(len(f.input_ids) for f in data[: 2000 // 32 * 32])
    assert padded_tokens(True) < 0.5 * padded_tokens(False)
    assert padded_tokens(True) < 1.3 * real


def test_resume_mid_epoch_yields_the_remaining_batches():
    data = features()
    b = GlobalBatches(data, 16, seed=1, rank=0, world_size=1, pad_token_id=0, group_by_length=True)
    full = list(b.epoch(0))
    rest = list(b.epoch(0, start_step=5))
    assert len(rest) == len(full) - 5
    for x, y in zip(full[5:], rest):
        np.testing.assert_array_equal(x["input_ids"], y["input_ids"])


def test_batch_that_does_not_divide_is_refused_with_the_key():
    with pytest.raises(UserError, match="compress.optim.batch_size: global batch size 30 does not divide among 4"):
        GlobalBatches(features(), 30, seed=0, rank=0, world_size=4, pad_token_id=0, key="compress.optim.batch_size")


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_shards_cover_every_example_once_and_are_balanced(world_size):
    data = features(1001)
    per_rank = [list(eval_batches(data, 64, r, world_size, 0)) for r in range(world_size)]
    indices = [int(i) for shard in per_rank for idx, _ in shard for i in idx]
    assert sorted(indices) == list(range(len(data)))
    tokens = [sum(b["input_ids"].size for _, b in shard) for shard in per_rank]
    # Contiguous blocks of the length-sorted set gave the last rank ~2x the tokens of the first.
    assert max(tokens) < 1.25 * min(tokens), tokens
