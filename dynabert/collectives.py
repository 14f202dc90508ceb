"""What the training code needs from the process group, as an object passed in.

dynabert/ never imports paddle.distributed: the launcher builds a ``Collectives`` for the job
(launcher/fleet_setup.py) and this module's ``SingleProcess`` serves the one-process case and tests.
"""
from typing import Any, Callable, List, Optional, Sequence, TypeVar

import paddle

T = TypeVar("T")


class Collectives:
    """Interface. ``rank``/``world_size`` are facts of the job, never written into the config."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_gradients(self, params: Sequence[paddle.Tensor]) -> None:
        """Average the gradients of ``params`` over all ranks, in place."""
        raise NotImplementedError

    def broadcast_parameters(self, params: Sequence[paddle.Tensor], src: int = 0) -> None:
        """Make every rank's ``params`` equal to rank ``src``'s, in place."""
        raise NotImplementedError

    def all_gather_object(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        """Leave the process group together, before the interpreter tears it down."""

    def run_on_main(self, fn: Callable[[], T]) -> Optional[T]:
        """Rank 0 runs ``fn`` (long, rank-0-only work such as importance); the others wait for it to
        finish without sitting inside a collective. Returns fn's result on rank 0, None elsewhere."""
        raise NotImplementedError


class SingleProcess(Collectives):
    rank = 0
    world_size = 1

    def all_reduce_gradients(self, params):
        pass

    def broadcast_parameters(self, params, src=0):
        pass

    def all_gather_object(self, obj):
        return [obj]

    def barrier(self):
        pass

    def run_on_main(self, fn):
        return fn()
