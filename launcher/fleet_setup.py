"""Process-group set-up: the one place that creates process groups (``fleet.init`` on GPUs, the global
gloo group alone on CPUs), and the collectives handed to dynabert/.

Gradient averaging is one fused all-reduce per optimizer step: every width's backward accumulates into
the local gradients, then all gradients are flattened into one buffer, summed across ranks and divided
by the world size. Upstream's DataParallel without no_sync all-reduces after every width's backward
(4x the traffic) and loses OFA's distillation hooks (defects 9 and 6 of docs/upstream-defects.md); we do not
wrap the model at all.
On GPU the cost of one buffer is one extra copy of the gradients (440 MB for BERT-base, fp32) and no
overlap of communication with the last backward; NCCL's bandwidth on one large message makes up for it.

Every collective runs under a watchdog: a rank whose collective has not returned within
``DYNABERT_COLLECTIVE_TIMEOUT`` seconds (default 1800, 0 = off) prints one line naming itself and exits
with code 4, so a rank waiting on a dead peer ends and its node's ``dynabert-launch --max_restarts`` can
restart it. Paddle 2.6's own NCCL timeout (``PADDLE_PG_TIMEOUT``) only logs, and its HTTP master does not
tell healthy nodes that another one failed (docs/gpu-readiness.md).
"""
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Sequence

import numpy as np
import paddle
import paddle.distributed as dist

from dynabert.collectives import Collectives, SingleProcess
from launcher.launch_cmd import COLLECTIVE_TIMEOUT_ENV, EXIT_COLLECTIVE_TIMEOUT, collective_timeout


def world_size_from_env() -> int:
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def init_collectives() -> Collectives:
    """Single process: no process group at all. Under paddle.distributed.launch: fleet on GPUs (NCCL),
    the global process group alone on CPU (gloo, defect 12), then Paddle's collectives."""
    gloo = not paddle.is_compiled_with_cuda() or os.environ.get("PADDLE_DISTRI_BACKEND") == "gloo"
    if gloo:
        paddle.set_device("cpu")  # --device cpu on a GPU build: the launcher alone cannot force it
    if world_size_from_env() <= 1:
        return SingleProcess()
    if gloo:
        # Defect 12 (docs/upstream-defects.md): every gloo process group after the first rendezvouses on
        # the first one's store keys, so a rank can read its peer's stale address and both wait 150 s,
        # then fail. fleet.init always adds a second group (its data-parallel group), which data
        # parallelism does not need: every collective here runs on the global group.
        dist.init_parallel_env()
    else:
        from paddle.distributed import fleet

        fleet.init(is_collective=True)
    return PaddleCollectives()


def _exit_stuck(message: str) -> None:
    """The main thread is blocked inside Paddle (which releases the GIL there): only ending the process
    from this thread frees it. No cleanup: a collective in flight cannot be unwound."""
    os.write(sys.stderr.fileno(), (message + "\n").encode())
    os._exit(EXIT_COLLECTIVE_TIMEOUT)


class CollectiveWatchdog:
    """Calls ``on_timeout(message)`` from a background thread when a ``guard``-ed block has not finished
    within ``timeout_s`` seconds (by default: one line on stderr, then exit code 4). ``timeout_s`` 0: off.
    One guarded block at a time (collectives are issued by the main thread, one after another)."""

    def __init__(self, timeout_s: float, rank: int, on_timeout: Callable[[str], None] = _exit_stuck,
                 clock: Callable[[], float] = time.monotonic):
        self.timeout_s, self.rank = timeout_s, rank
        self._on_timeout, self._clock = on_timeout, clock
        self._cond = threading.Condition()
        self._pending: Optional[tuple] = None  # (what, deadline) of the block in progress
        self._thread: Optional[threading.Thread] = None

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        if self.timeout_s <= 0:
            yield
            return
        with self._cond:
            self._pending = (what, self._clock() + self.timeout_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="collective-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._pending = None
                self._cond.notify()

    def overdue(self, now: float) -> Optional[str]:
        """The message to report if the block in progress has passed its deadline at time ``now``."""
        if self._pending is None or now < self._pending[1]:
            return None
        return (f"error: rank {self.rank}: {self._pending[0]} has not returned after {self.timeout_s:g} s;"
                f" a peer rank has probably died or hung ({COLLECTIVE_TIMEOUT_ENV} sets the limit, 0 disables)")

    def _watch(self) -> None:
        with self._cond:
            while True:
                message = self.overdue(self._clock())
                if message:
                    break
                self._cond.wait(None if self._pending is None else max(0.0, self._pending[1] - self._clock()))
        self._on_timeout(message)


class PaddleCollectives(Collectives):
    def __init__(self, watchdog: Optional[CollectiveWatchdog] = None):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        # What this process sent through all-reduce, for the log and the tests.
        self.all_reduce_calls = 0
        self.all_reduce_bytes = 0
        self._main_jobs = 0
        self._watchdog = watchdog or CollectiveWatchdog(collective_timeout(os.environ), self.rank)

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """Guard ``what``, including, on a GPU, the device finishing it: NCCL calls return once queued,
        so a dead peer would otherwise block a later host sync, outside the guard."""
        with self._watchdog.guard(what):
            yield
            if self._watchdog.timeout_s > 0 and isinstance(paddle.framework._current_expected_place(),
                                                           paddle.CUDAPlace):
                done = paddle.device.Event()
                done.record()
                while not done.query():  # polling keeps this thread out of a blocking CUDA wait
                    time.sleep(0.0005)

    def all_reduce_gradients(self, params: Sequence[paddle.Tensor]) -> paddle.Tensor:
        """One fused all-reduce of every gradient; returns the fused buffer (averaged), on which the loop
        checks finiteness with one kernel. Memory: one extra copy of the gradients (the buffer); the
        division is in place. No host sync here (sizes are computed once, from shapes)."""
        params = [p for p in params if not p.stop_gradient]
        sizes = [int(np.prod(p.shape)) for p in params]
        grads = [p.grad if p.grad is not None else paddle.zeros_like(p) for p in params]
        flat = paddle.concat([g.reshape([-1]) for g in grads])
        with self._collective("all_reduce of the gradients"):
            dist.all_reduce(flat)  # sum over ranks
        self.all_reduce_calls += 1
        self.all_reduce_bytes += sum(sizes) * flat.element_size()
        flat.scale_(1.0 / self.world_size)
        offset = 0
        for p, g, n in zip(params, grads, sizes):
            averaged = flat[offset:offset + n].reshape(g.shape)
            offset += n
            if p.grad is None:
                p._set_grad_ivar(averaged)
            else:
                paddle.assign(averaged, p.grad)
        return flat

    def broadcast_parameters(self, params: Sequence[paddle.Tensor], src: int = 0) -> None:
        with paddle.no_grad(), self._collective(f"broadcast of {len(params)} parameter(s) from rank {src}"):
            for p in params:
                dist.broadcast(p, src=src)

    def all_gather_object(self, obj: Any) -> List[Any]:
        out: List[Any] = []
        with self._collective("all_gather_object"):
            dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        with self._collective(f"broadcast_object from rank {src}"):
            dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        with self._collective("barrier"):
            dist.barrier()

    def wait_for_peers(self, name: str) -> None:
        store = paddle.base.core.create_or_get_global_tcp_store()
        key = f"dynabert/wait_for_peers/{name}"
        store.add(key, 1)
        while store.add(key, 0) < self.world_size:
            time.sleep(0.2)

    def post(self, key: str, value: int) -> None:
        store = paddle.base.core.create_or_get_global_tcp_store()
        store.add(key, value - store.add(key, 0))  # the store only adds: move the counter to ``value``

    def read(self, key: str) -> int:
        return paddle.base.core.create_or_get_global_tcp_store().add(key, 0)

    def shutdown(self) -> None:
        """A barrier, then an explicit destroy: a rank whose peer had already exited was seen to abort
        (SIGABRT, no message) while the interpreter tore gloo down, after finishing its work."""
        with self._collective("the final barrier"):
            dist.barrier()
            dist.destroy_process_group()

    def run_on_main(self, fn):
        """Gloo (CPU) gives up on a collective after 30 s (gloo's default, not configurable through Paddle
        2.6's ProcessGroupGloo), and rank-0-only work such as importance takes longer. So the other ranks
        do not wait in a collective: they poll a counter in the job's TCP store, the one
        init_parallel_env created (its ``add`` never blocks), until rank 0 bumps it. No watchdog here: the
        store lives in rank 0's process, so if rank 0 dies the others' ``add`` fails at once."""
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
