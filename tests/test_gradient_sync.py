"""The gradient reduction's bookkeeping, in one process: buckets, their order, what each rank sums.

The collectives themselves run in tests/test_distributed.py (2 processes, gloo); here a stand-in reducer
that behaves like two ranks holding the same gradients (the sum is twice the buffer) shows the buckets
launch during the armed backward, strictly in order, each gradient once, and average back exactly."""
import contextlib

import numpy as np
import paddle
import pytest

from dynabert.model.outputs import HiddenStates, forward
from dynabert.model.pretrained import tiny_bert
from dynabert.model.supernet import Supernet
from dynabert.train.losses import task_loss
from dynabert.train.step import supernet_step
from launcher.gradient_sync import GradientBuckets, rank_chunks
from tests.test_cpu_kernels import padded_batch


@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (7, 3), (2, 4), (1024, 8)])
def test_rank_chunks_cover_the_buffer_once_in_near_equal_parts(n, world):
    bounds = rank_chunks(n, world)
    assert len(bounds) == world and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [e - s for s, e in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


class TwoIdenticalRanks:
    """A reducer standing in for a 2-rank sum of identical gradients; records what it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, flat):
        self.calls.append(int(flat.numel()))
        return flat * 2, int(flat.numel()) * 4


def _model_and_batch():
    paddle.seed(0)
    model = tiny_bert(seed=6)
    model.eval()
    return model, padded_batch(seed=7)


def test_buckets_launch_during_the_armed_backward_in_order_and_average_back():
    model, batch = _model_and_batch()
    params = [p for p in model.parameters() if not p.stop_gradient]
    counted = []
    reducer = TwoIdenticalRanks()
    buckets = GradientBuckets(params, bucket_bytes=8 * 1024, world=2, reduce=reducer, count=counted.append)
    assert len(buckets.buckets) >= 4
    assert sorted(i for b in buckets.buckets for i in b) == list(range(len(params)))  # each parameter once

    # an unarmed backward launches nothing
    task_loss(forward(model, batch), batch["labels"], False).backward()
    assert reducer.calls == [] and buckets.launch_log == []
    expected = [p.grad.numpy().copy() * 2 for p in params]  # a second backward doubles them
    with buckets.armed():
        task_loss(forward(model, batch), batch["labels"], False).backward()
        during = list(buckets.launch_log)
    assert during, "no bucket went out while backward ran"
    buffers = buckets.finish()
    assert buckets.launch_log == [] and len(buffers) == len(buckets.buckets)  # reset for the next step
    assert reducer.calls == [sum(int(np.prod(params[i].shape)) for i in b) for b in buckets.buckets]
    assert sum(counted) == sum(int(np.prod(p.shape)) * 4 for p in params)
    for p, want in zip(params, expected):
        np.testing.assert_array_equal(p.grad.numpy(), want)  # (2 g) / 2 ranks = g, exactly


def test_supernet_step_runs_narrowest_first_and_arms_only_the_full_widths_backward():
    teacher = tiny_bert(seed=8)
    teacher.eval()
    supernet = Supernet(teacher, (1.0, 0.75, 0.5, 0.25))
    supernet.eval()
    armed, order = [], []

    def last_backward():
        armed.append(supernet.width)
        return contextlib.nullcontext()

    def phase(name):
        order.append(name)
        return contextlib.nullcontext()

    losses = supernet_step(supernet, HiddenStates(supernet.model), teacher, HiddenStates(teacher),
                           padded_batch(seed=9), supernet.widths, 0.1, 0.1, False, phase=phase,
                           last_backward=last_backward)
    assert [n for n in order if n.startswith("width")] == ["width 0.25", "width 0.5", "width 0.75", "width 1.0"]
    assert armed == [1.0]
    assert set(losses) == {1.0, 0.75, 0.5, 0.25}
