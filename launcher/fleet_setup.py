"""Process-group set-up: the one place that calls ``fleet.init``, and the collectives handed to dynabert/.

Gradient averaging is one fused all-reduce per optimizer step: every width's backward accumulates into
the local gradients, then all gradients are flattened into one buffer, summed across ranks and divided
by the world size. Upstream's DataParallel without no_sync all-reduces after every width's backward
(4x the traffic, defect 9) and loses OFA's distillation hooks (defect 6); we do not wrap the model at all.
On GPU the cost of one buffer is one extra copy of the gradients (440 MB for BERT-base, fp32) and no
overlap of communication with the last backward; NCCL's bandwidth on one large message makes up for it.
"""
import os
import time
from typing import Any, List, Sequence

import paddle
import paddle.distributed as dist

from dynabert.collectives import Collectives, SingleProcess


def world_size_from_env() -> int:
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def init_collectives() -> Collectives:
    """Single process: no process group at all. Under paddle.distributed.launch: fleet (NCCL on GPUs,
    gloo on CPU, as the launcher configured), then Paddle's collectives."""
    if not paddle.is_compiled_with_cuda() or os.environ.get("PADDLE_DISTRI_BACKEND") == "gloo":
        paddle.set_device("cpu")  # --device cpu on a GPU build: the launcher alone cannot force it
    if world_size_from_env() <= 1:
        return SingleProcess()
    from paddle.distributed import fleet

    fleet.init(is_collective=True)
    return PaddleCollectives()


class PaddleCollectives(Collectives):
    def __init__(self):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        # What this process sent through all-reduce, for the log and the tests.
        self.all_reduce_calls = 0
        self.all_reduce_bytes = 0
        self._main_jobs = 0

    def all_reduce_gradients(self, params: Sequence[paddle.Tensor]) -> None:
        params = [p for p in params if not p.stop_gradient]
        grads = [p.grad if p.grad is not None else paddle.zeros_like(p) for p in params]
        flat = paddle.concat([g.reshape([-1]) for g in grads])
        dist.all_reduce(flat)  # sum over ranks (module attribute lookup, so tests can count calls)
        self.all_reduce_calls += 1
        self.all_reduce_bytes += flat.numel().item() * flat.element_size()
        flat = flat / self.world_size
        offset = 0
        for p, g in zip(params, grads):
            n = int(g.numel())
            averaged = flat[offset:offset + n].reshape(g.shape)
            offset += n
            if p.grad is None:
                p._set_grad_ivar(averaged)
            else:
                paddle.assign(averaged, p.grad)

    def broadcast_parameters(self, params: Sequence[paddle.Tensor], src: int = 0) -> None:
        with paddle.no_grad():
            for p in params:
                dist.broadcast(p, src=src)

    def all_gather_object(self, obj: Any) -> List[Any]:
        out: List[Any] = []
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()

    def shutdown(self) -> None:
        """A barrier, then an explicit destroy: a rank whose peer had already exited was seen to abort
        (SIGABRT, no message) while the interpreter tore gloo down, after finishing its work."""
        dist.barrier()
        dist.destroy_process_group()

    def run_on_main(self, fn):
        """Gloo (CPU) gives up on a collective after 30 s (gloo's default, not configurable through Paddle
        2.6's ProcessGroupGloo), and rank-0-only work such as importance takes longer. So the other ranks
        do not wait in a collective: they poll a counter in the job's TCP store, the one
        init_parallel_env created (its ``add`` never blocks), until rank 0 bumps it."""
        self._main_jobs += 1
        key = f"dynabert/run_on_main/{self._main_jobs}"
        store = paddle.base.core.create_or_get_global_tcp_store()
        if self.rank == 0:
            try:
                return fn()
            finally:
                store.add(key, 1)  # also on failure: the launcher then stops everyone with rank 0's error
        while store.add(key, 0) < 1:
            time.sleep(0.2)
        return None
