"""The step's one gradient reduction over the process group: fused, in fp32 or compressed, at once or in
buckets while the last backward runs. ``PaddleCollectives`` (launcher/fleet_setup.py) calls these.

Every accumulated gradient is reduced exactly once per optimizer step, whichever way: the averaged result
is the same (to round-off for the compressed dtypes), so every rank still holds identical parameters.
"""
import contextlib
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.distributed as dist

PADDLE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def flatten(params: Sequence[paddle.Tensor]) -> Tuple[paddle.Tensor, List[paddle.Tensor], List[int]]:
    """One fp32 buffer holding every gradient in order (zeros for a parameter without one)."""
    sizes = [int(np.prod(p.shape)) for p in params]
    grads = [p.grad if p.grad is not None else paddle.zeros_like(p) for p in params]
    return paddle.concat([g.reshape([-1]) for g in grads]), grads, sizes


def scatter_back(params: Sequence[paddle.Tensor], grads: Sequence[paddle.Tensor], sizes: Sequence[int],
                 flat: paddle.Tensor) -> None:
    """Each parameter's gradient becomes its slice of ``flat``."""
    offset = 0
    for p, g, n in zip(params, grads, sizes):
        part = flat[offset:offset + n].reshape(g.shape)
        offset += n
        if p.grad is None:
            p._set_grad_ivar(part)
        else:
            paddle.assign(part, p.grad)


def rank_chunks(n: int, world: int) -> List[Tuple[int, int]]:
    """[start, end) of the part of an ``n``-element buffer rank r sums, for r in 0..world-1 (equal parts,
    the last ones one element shorter when ``world`` does not divide ``n``)."""
    base, extra = divmod(n, world)
    bounds, start = [], 0
    for r in range(world):
        end = start + base + (1 if r < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def sum_over_ranks(flat: paddle.Tensor, dtype: str, *, world: int, nccl: bool) -> Tuple[paddle.Tensor, int]:
    """The sum over ranks of every rank's fp32 ``flat``, and the bytes this rank put in the reduction.

    fp32: one all-reduce, in place. bf16/fp16: each rank's buffer is rounded once to the small type and
    summed in fp32, never in the small type. With NCCL: an all-to-all of the small buffers (rank r gets
    everyone's part r), rank r sums its part in fp32, then an all-gather of the summed parts in the small type
    (rounded a second time); each rank sends half the bytes of an fp32 ring all-reduce. Gloo has neither
    all-to-all nor reduce-scatter in Paddle 2.6.2: every rank all-gathers every rank's small buffer and sums
    all of it in fp32 (the same bytes as the NCCL way with 2 ranks, (world - 1) / 2 times more beyond)."""
    if dtype == "fp32":
        dist.all_reduce(flat)
        return flat, int(flat.numel()) * flat.element_size()
    small = flat.astype(PADDLE_DTYPES[dtype])
    nbytes = int(small.numel()) * small.element_size()
    if not nccl:
        gathered: List[paddle.Tensor] = []
        dist.all_gather(gathered, small)
        return paddle.add_n([g.astype("float32") for g in gathered]), nbytes  # rank order: same sum everywhere
    bounds = rank_chunks(int(small.numel()), world)
    width = max(end - start for start, end in bounds)  # all-to-all wants equal parts: pad the short ones
    parts = [paddle.concat([small[s:e], paddle.zeros([width - (e - s)], small.dtype)]) if e - s < width
             else small[s:e] for s, e in bounds]
    received: List[paddle.Tensor] = []
    dist.alltoall(parts, received)
    mine = paddle.add_n([r.astype("float32") for r in received]).astype(small.dtype)
    summed: List[paddle.Tensor] = []
    dist.all_gather(summed, mine)
    return paddle.concat([summed[r][:e - s] for r, (s, e) in enumerate(bounds)]).astype("float32"), nbytes


class GradientBuckets:
    """Reduces the gradients bucket by bucket as the armed backward (the step's last) finishes them.

    Buckets are filled in reverse parameter order (the order backward reaches them) up to ``bucket_bytes``
    and launched strictly in bucket order, so every rank issues the same collectives in the same order.
    A parameter's hook (Paddle's ``_register_backward_hook``: after the gradient is accumulated) fires
    once per armed backward; ``finish`` launches what has not gone yet (parameters that got no gradient in
    that backward), waits, averages in place and returns the reduced buffers. With NCCL and fp32 each bucket
    goes out asynchronously on the communication stream while backward continues; on gloo (Paddle runs its
    collectives in the calling thread) and for the compressed dtypes the bucket is reduced where it
    launches: the same result, without the overlap."""

    def __init__(self, params: Sequence[paddle.Tensor], *, bucket_bytes: int, world: int,
                 reduce: Callable[[paddle.Tensor], Tuple[paddle.Tensor, int]],
                 launch_async: Optional[Callable[[paddle.Tensor], object]] = None,
                 count: Callable[[int], None] = lambda nbytes: None):
        """``reduce(flat)``: the sum over ranks and the bytes sent, in the calling thread;
        ``launch_async(flat)``: starts an in-place sum and returns its task (NCCL, fp32), else None."""
        self.params = [p for p in params if not p.stop_gradient]
        self.world, self._reduce, self._launch_async, self._count = world, reduce, launch_async, count
        order = list(reversed(range(len(self.params))))
        self.buckets: List[List[int]] = [[]]
        filled = 0
        for i in order:
            nbytes = int(np.prod(self.params[i].shape)) * 4
            if self.buckets[-1] and filled + nbytes > bucket_bytes:
                self.buckets.append([])
                filled = 0
            self.buckets[-1].append(i)
            filled += nbytes
        self._bucket_of = {i: b for b, members in enumerate(self.buckets) for i in members}
        self._armed = False
        self._reset()
        for i, p in enumerate(self.params):
            p._register_backward_hook(self._hook(i))

    def _reset(self) -> None:
        self._missing = [len(m) for m in self.buckets]
        self._next = 0
        self.launch_log: List[int] = []  # bucket indices in launch order, this step (tests read it)
        self._launched: List[Tuple[paddle.Tensor, List[paddle.Tensor], List[int], Optional[object]]] = []

    def _hook(self, index: int) -> Callable[[], None]:
        def ready():
            if not self._armed:
                return
            self._missing[self._bucket_of[index]] -= 1
            while self._next < len(self.buckets) and self._missing[self._next] == 0:
                self._launch(self._next)
        return ready

    def _launch(self, b: int) -> None:
        members = [self.params[i] for i in self.buckets[b]]
        flat, grads, sizes = flatten(members)
        task = None
        if self._launch_async is not None:
            task = self._launch_async(flat)
            self._count(int(flat.numel()) * flat.element_size())
        else:
            flat, nbytes = self._reduce(flat)
            self._count(nbytes)
        self._launched.append((flat, grads, sizes, task))
        self._next = b + 1
        self.launch_log.append(b)

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """Wrap the step's last backward in this."""
        self._reset()
        self._armed = True
        try:
            yield
        finally:
            self._armed = False

    def finish(self) -> List[paddle.Tensor]:
        """After the armed backward: every bucket reduced and averaged, each gradient its averaged slice."""
        while self._next < len(self.buckets):
            self._launch(self._next)
        out = []
        for b, (flat, grads, sizes, task) in enumerate(self._launched):
            if task is not None:
                task.wait()
            flat.scale_(1.0 / self.world)
            scatter_back([self.params[i] for i in self.buckets[b]], grads, sizes, flat)
            out.append(flat)
        self._reset()
        return out


def buckets_for(params: Sequence[paddle.Tensor], *, bucket_bytes: int, dtype: str, world: int, nccl: bool,
                count: Callable[[int], None]) -> GradientBuckets:
    """The process group's buckets: asynchronous fp32 all-reduces with NCCL, else ``sum_over_ranks``."""
    def reduce(flat):
        return sum_over_ranks(flat, dtype, world=world, nccl=nccl)

    def launch_async(flat):
        return dist.all_reduce(flat, sync_op=False)

    return GradientBuckets(params, bucket_bytes=bucket_bytes, world=world, reduce=reduce,
                           launch_async=launch_async if (nccl and dtype == "fp32") else None, count=count)
