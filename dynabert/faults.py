"""Deterministic fault injection for tests: a chosen rank kills itself with SIGKILL at a chosen step.

    DYNABERT_FAULT="rank=1,step=13,once=/tmp/x/fired"

The rank (global) ends with SIGKILL right after optimizer step ``step`` completes, i.e. after any
checkpoint due at that step has been written. ``once`` names a marker file created just before dying:
while it exists the fault does not fire again, so a restarted job that resumes before ``step`` runs
through. Kill tests therefore never race the run's end, however busy the machine. Unset: no effect.
"""
import os
import signal
from dataclasses import dataclass
from typing import Optional

from dynabert.errors import UserError

ENV = "DYNABERT_FAULT"


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
