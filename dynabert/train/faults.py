"""Deterministic fault injection for tests: a chosen rank kills itself with SIGKILL at a chosen step;
a chosen checkpoint is written slowly.

    DYNABERT_FAULT="rank=1,step=13,once=/tmp/x/fired"
    DYNABERT_SLOW_CHECKPOINT="step=6,until=12,seconds=35"

The rank (global) ends with SIGKILL right after optimizer step ``step`` completes, i.e. after any
checkpoint due at that step has been written. ``once`` names a marker file created just before dying:
while it exists the fault does not fire again, so a restarted job that resumes before ``step`` runs
through. Kill tests therefore never race the run's end, however busy the machine. Unset: no effect.

The slow checkpoint is held open (its files written, its manifest not yet) until the training loop has
completed step ``until`` -- an event, not a duration: the ranks trained on while it was being written
(were they waiting for it, the job would never get there) -- and then ``seconds`` longer. With ``until``
at the next checkpoint's step, rank 0 is by then waiting for this write and the other ranks for rank 0:
for longer than gloo's 30 s collective timeout if ``seconds`` is, so the job only ends well if none of
them waits inside a collective.
"""
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, Optional

from dynabert.errors import UserError

ENV = "DYNABERT_FAULT"
SLOW_WRITE_ENV = "DYNABERT_SLOW_CHECKPOINT"


@dataclass(frozen=True)
class Fault:
    rank: int
    step: int
    once: Optional[str] = None

    def maybe_fire(self, step: int) -> None:
        if step != self.step or (self.once and os.path.exists(self.once)):
            return
        if self.once:
            with open(self.once, "w") as f:
                f.write(f"rank {self.rank} killed itself at step {step}\n")
        print(f"[fault injection] rank {self.rank}: SIGKILL at step {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def parse(spec: str) -> Fault:
    try:
        fields = dict(part.split("=", 1) for part in spec.split(",") if part.strip())
        fault = Fault(rank=int(fields.pop("rank")), step=int(fields.pop("step")), once=fields.pop("once", None))
    except (KeyError, ValueError) as e:
        raise UserError(f"{ENV}={spec!r}: expected rank=R,step=S[,once=PATH] ({e})") from None
    if fields:
        raise UserError(f"{ENV}={spec!r}: unknown field(s) {', '.join(sorted(fields))}")
    return fault


def configured() -> bool:
    """Whether any rank of this job has a fault to fire (the loop then writes checkpoints synchronously,
    so "after checkpoint N" means on disk, whichever rank dies)."""
    return bool(os.environ.get(ENV, "").strip())


def from_env(rank: int) -> Optional[Fault]:
    """The fault for this rank, if the environment asks for one."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    fault = parse(spec)
    return fault if fault.rank == rank else None


@dataclass(frozen=True)
class SlowWrite:
    step: int       # the checkpoint written after this optimizer step
    until: int      # held open until the training loop has completed this step,
    seconds: float  # ... then this much longer

    def hold(self, checkpoint_step: int, progress: Callable[[], int]) -> None:
        if checkpoint_step != self.step:
            return
        while progress() < self.until:
            time.sleep(0.05)
        reached = progress()
        time.sleep(self.seconds)  # the simulated slow filesystem (the ordering above is by event)
        print(f"[fault injection] checkpoint of step {self.step} held open until step {reached}, then "
              f"{self.seconds:g} s", flush=True)


def slow_write_from_env() -> Optional[SlowWrite]:
    spec = os.environ.get(SLOW_WRITE_ENV, "").strip()
    if not spec:
        return None
    try:
        fields = dict(part.split("=", 1) for part in spec.split(",") if part.strip())
        slow = SlowWrite(step=int(fields.pop("step")), until=int(fields.pop("until")),
                         seconds=float(fields.pop("seconds")))
    except (KeyError, ValueError) as e:
        raise UserError(f"{SLOW_WRITE_ENV}={spec!r}: expected step=S,until=U,seconds=T ({e})") from None
    if fields:
        raise UserError(f"{SLOW_WRITE_ENV}={spec!r}: unknown field(s) {', '.join(sorted(fields))}")
    return slow
