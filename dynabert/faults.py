"""Deterministic fault injection for tests (every package may call ``fire``): a chosen rank kills itself with
SIGKILL at a chosen point of a chosen stage; a chosen checkpoint is written slowly.

    DYNABERT_FAULT="rank=1,step=13,once=/tmp/x/fired"
    DYNABERT_FAULT="rank=0,stage=compress,step=12,once=/tmp/x/a;rank=1,stage=export,point=stage_done,once=/tmp/x/b"
    DYNABERT_SLOW_CHECKPOINT="step=6,until=12,seconds=35"

A fault is ``rank=R[,stage=S][,point=P][,step=N][,once=PATH]``; several are separated by ``;``. Points:

* ``step`` (the default): right after optimizer step N of the stage completes, i.e. after any checkpoint
  due at that step has been written and after the evaluation due there (an epoch's last step included);
* ``checkpoint_write``: while rank 0 writes the checkpoint of step N, its files written but not its
  manifest (the write is then incomplete, as a machine that died mid-write leaves it);
* ``stage_done``: after the stage's completion marker is written, before the next stage starts;
* ``model``: after the stage wrote its N-th sub-model (export) or prepared its N-th candidate (select).

A fault without ``stage`` fires in whichever stage first reaches it. The rank (global) ends with
SIGKILL. ``once`` names a marker file created just before dying: while it exists the fault does not fire
again, so a restarted job runs through it. Kill tests therefore never race the run's end, however busy
the machine. Unset: no effect.

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
from typing import Callable, List, Optional

from dynabert.errors import UserError

ENV = "DYNABERT_FAULT"
SLOW_WRITE_ENV = "DYNABERT_SLOW_CHECKPOINT"


POINTS = ("step", "checkpoint_write", "stage_done", "model")


@dataclass(frozen=True)
class Fault:
    rank: int
    step: Optional[int] = None
    once: Optional[str] = None
    stage: Optional[str] = None
    point: str = "step"

    def matches(self, point: str, stage: str, step: Optional[int]) -> bool:
        return (point == self.point and (self.stage is None or stage == self.stage)
                and (self.step is None or step == self.step))

    def fire(self, stage: str, step: Optional[int]) -> None:
        if self.once and os.path.exists(self.once):
            return
        # "step 13 of compress", "checkpoint_write 24 of compress", "model 1 of export", "stage_done of export"
        where = f"{self.point}{'' if step is None else f' {step}'} of {stage}"
        if self.once:
            with open(self.once, "w") as f:
                f.write(f"rank {self.rank} killed itself at {where}\n")
        print(f"[fault injection] rank {self.rank}: SIGKILL at {where}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def parse(spec: str) -> Fault:
    try:
        fields = dict(part.split("=", 1) for part in spec.split(",") if part.strip())
        step = fields.pop("step", None)
        fault = Fault(rank=int(fields.pop("rank")), step=None if step is None else int(step),
                      once=fields.pop("once", None), stage=fields.pop("stage", None),
                      point=fields.pop("point", "step"))
    except (KeyError, ValueError) as e:
        raise UserError(f"{ENV}={spec!r}: expected rank=R[,stage=S][,point=P][,step=N][,once=PATH] ({e})") from None
    if fields:
        raise UserError(f"{ENV}={spec!r}: unknown field(s) {', '.join(sorted(fields))}")
    if fault.point not in POINTS:
        raise UserError(f"{ENV}={spec!r}: point must be one of {', '.join(POINTS)}")
    if fault.point in ("step", "checkpoint_write") and fault.step is None:
        raise UserError(f"{ENV}={spec!r}: point {fault.point} needs step=N")
    return fault


def parse_all(spec: str) -> List[Fault]:
    return [parse(part) for part in spec.split(";") if part.strip()]


def configured() -> bool:
    """Whether any rank of this job has a fault to fire (the loop then writes checkpoints synchronously,
    so "after checkpoint N" means on disk, whichever rank dies)."""
    return bool(os.environ.get(ENV, "").strip())


def fire(point: str, *, stage: str, rank: int, step: Optional[int] = None) -> None:
    """Called at each point the faults can name; kills this process if one of its faults is due. Costs
    an environment lookup when no fault is configured."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return
    for fault in parse_all(spec):
        if fault.rank == rank and fault.matches(point, stage, step):
            fault.fire(stage, step)


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
