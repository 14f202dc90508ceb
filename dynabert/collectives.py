"""What the training code needs from the process group, as an object passed in.

dynabert/ never imports paddle.distributed: the launcher builds a ``Collectives`` for the job
(launcher/fleet_setup.py) and this module's ``SingleProcess`` serves the one-process case and tests.
"""
import contextlib
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import paddle

from dynabert.errors import TrainingDiverged, UserError

T = TypeVar("T")


class Collectives:
    """Interface. ``rank``/``world_size`` are facts of the job, never written into the config."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_gradients(self, params: Sequence[paddle.Tensor], dtype: str = "fp32") -> Optional[paddle.Tensor]:
        """Average the gradients of ``params`` over all ranks, in place, sent in ``dtype`` (fp32, bf16,
        fp16; summed in fp32). Returns the fused gradient buffer if the implementation made one (the loop
        checks finiteness on it), else None."""
        raise NotImplementedError

    def gradient_buckets(self, params: Sequence[paddle.Tensor], *, bucket_bytes: int,
                         dtype: str = "fp32") -> "GradientBuckets":
        """What reduces the gradients of ``params`` bucket by bucket during the backward run inside
        ``armed()``; ``finish()`` after it completes the reduction (``all_reduce_gradients``'s result, in
        buckets: a list of buffers, or None)."""
        raise NotImplementedError

    def broadcast_parameters(self, params: Sequence[paddle.Tensor], src: int = 0) -> None:
        """Make every rank's ``params`` equal to rank ``src``'s, in place."""
        raise NotImplementedError

    def all_gather_object(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        raise NotImplementedError

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` (small, picklable) on every rank."""
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def wait_for_peers(self, name: str) -> None:
        """A barrier that may wait as long as it takes (ranks arrive minutes apart, e.g. after building a
        corpus cache on their own node): it waits on the job's store, not in a collective."""
        raise NotImplementedError

    def post(self, key: str, value: int) -> None:
        """Rank 0 publishes an integer under ``key`` (in the job's key-value store: no collective)."""
        raise NotImplementedError

    def read(self, key: str) -> int:
        """The integer rank 0 last posted under ``key`` (0 if none); never blocks."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Leave the process group together, before the interpreter tears it down."""

    def run_on_main(self, fn: Callable[[], T]) -> Optional[T]:
        """Rank 0 runs ``fn`` (long, rank-0-only work such as importance); the others wait for it to
        finish without sitting inside a collective. Returns fn's result on rank 0, None elsewhere."""
        raise NotImplementedError

    def fail(self, exit_code: int, message: str, *, may_follow_a_peer: bool = False) -> Tuple[int, str]:
        """This rank is about to end with ``exit_code`` and the one-line ``message``. Returns the code and
        message to end with: these, or with ``may_follow_a_peer`` (an unexpected exception, such as a
        collective broken by a peer that left) a failure another rank reported first. The entry point
        prints the message, then calls ``leave``, which tells the other ranks, so none waits for this one."""
        return exit_code, message

    def leave(self) -> None:
        """After ``fail``: tell the other ranks and give them a moment to read it before this process ends."""

    # ---- built from the primitives above -------------------------------------------------------------
    def decide(self, fn: Callable[[], T]) -> T:
        """Rank 0 runs ``fn`` (however long it takes: the others wait on the store, not in a collective)
        and every rank returns its result. A UserError from ``fn`` is raised on every rank alike, so no
        rank is left waiting for a peer that stopped. This is how rank 0 decides and everyone follows
        (resume point, stage completion, what a file on rank 0's disk says)."""
        def guarded():
            try:
                return ("ok", fn())
            except UserError as e:
                return ("error", str(e), e.exit_code)

        outcome = self.broadcast_object(self.run_on_main(guarded) if self.world_size > 1 else guarded())
        if outcome[0] == "error":
            raise (TrainingDiverged if outcome[2] == TrainingDiverged.exit_code else UserError)(outcome[1])
        return outcome[1]

    def broadcast_state(self, state: Optional[dict], src: int = 0) -> dict:
        """Rank ``src``'s nested dict of arrays and plain values on every rank: the structure and small
        values travel as one object, each array as a tensor broadcast (a checkpoint's model and optimizer
        state, never pickled whole). Arrays come back as NumPy arrays."""
        arrays: Dict[str, np.ndarray] = {}

        def skeleton(node, path):
            if isinstance(node, dict):
                return {k: skeleton(v, f"{path}/{k}") for k, v in node.items()}
            if isinstance(node, (np.ndarray, paddle.Tensor)):
                arrays[path] = np.asarray(node.numpy() if isinstance(node, paddle.Tensor) else node)
                return ("__array__", path, arrays[path].shape, str(arrays[path].dtype))
            return node

        shape = self.broadcast_object(skeleton(state, "") if self.rank == src else None, src)
        if self.world_size == 1:
            return state
        specs = []

        def collect(node):
            if isinstance(node, dict):
                for v in node.values():
                    collect(v)
            elif isinstance(node, tuple) and len(node) == 4 and node[0] == "__array__":
                specs.append(node)

        collect(shape)
        tensors = [paddle.to_tensor(arrays[path]) if self.rank == src else paddle.zeros(list(dims), dtype)
                   for _, path, dims, dtype in specs]
        self.broadcast_parameters(tensors, src)
        received = {spec[1]: t.numpy() for spec, t in zip(specs, tensors)}

        def fill(node):
            if isinstance(node, dict):
                return {k: fill(v) for k, v in node.items()}
            if isinstance(node, tuple) and len(node) == 4 and node[0] == "__array__":
                return received[node[1]]
            return node

        return fill(shape)

    def check_agreement(self, facts: Dict[str, Any]) -> None:
        """Every rank must hold the same ``facts`` (config, data, resume point...); otherwise stop on every
        rank with one line naming the ranks and what differs, never train on silently divergent ranks."""
        if self.world_size == 1:
            return
        parts = self.all_gather_object(facts)
        for key in facts:
            differ = [r for r, p in enumerate(parts) if p.get(key) != parts[0].get(key)]
            if differ:
                shown = ", ".join(f"rank {r}: {parts[r].get(key)!r}" for r in [0, *differ[:3]])
                raise UserError(f"ranks disagree on {key} ({shown}); every node must run the same config on "
                                "the same data")


class GradientBuckets:
    """Interface (and the one-process implementation: nothing to reduce)."""

    def armed(self) -> ContextManager:
        return contextlib.nullcontext()

    def finish(self) -> Optional[List[paddle.Tensor]]:
        return None


class SingleProcess(Collectives):
    rank = 0
    world_size = 1

    def __init__(self):
        self._posted = {}

    def all_reduce_gradients(self, params, dtype="fp32"):
        return None

    def gradient_buckets(self, params, *, bucket_bytes, dtype="fp32"):
        return GradientBuckets()

    def broadcast_parameters(self, params, src=0):
        pass

    def all_gather_object(self, obj):
        return [obj]

    def broadcast_object(self, obj, src=0):
        return obj

    def wait_for_peers(self, name):
        pass

    def post(self, key, value):
        self._posted[key] = value

    def read(self, key):
        return self._posted.get(key, 0)

    def barrier(self):
        pass

    def run_on_main(self, fn):
        return fn()
