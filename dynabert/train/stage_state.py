"""Where each stage of a run stands: its checkpointer, the checkpoint it resumes from, and whether it
already finished (``checkpoints/<stage>/DONE.json``), so ``--resume auto`` skips completed stages."""
import json
import os
import shutil
from dataclasses import asdict
from typing import Callable, Optional

from dynabert.collectives import Collectives
from dynabert.config import Config, model_fingerprint
from dynabert.errors import UserError
from dynabert.io_utils import atomic_write_text
from dynabert.train.checkpoint import (
    Checkpoint,
    Checkpointer,
    LoadedCheckpoint,
    Position,
    check_compatible,
    latest_checkpoint,
    load_checkpoint,
    verify,
)
from dynabert.train.loop import Resume
from dynabert.train.run_log import RunLog


def _stage_root(cfg: Config, stage: str) -> str:
    return os.path.join(cfg.run.out_dir, "checkpoints", stage)


def checkpointer(cfg: Config, stage: str, comms: Collectives, log: Callable[[str], None] = print) -> Checkpointer:
    return Checkpointer(_stage_root(cfg, stage), cfg.run.checkpoint_every_steps, cfg.run.checkpoint_every_minutes,
                        cfg.run.keep_checkpoints, comms.is_main, {**model_fingerprint(cfg), "stage": stage}, log)


def resume_point(cfg: Config, stage: str, resume: Optional[str], comms: Collectives,
                 log: RunLog) -> Optional[Checkpoint]:
    """The checkpoint this stage continues from, or None for a fresh start (which clears old ones).

    Rank 0 alone looks at its disk, decides and loads; every rank receives the same checkpoint through
    the process group, so other nodes need no copy of rank 0's files and a stale checkpoint on another
    node's disk is never read."""
    root = _stage_root(cfg, stage)
    loaded = {}

    def choose() -> Optional[dict]:
        checkpoint = None
        if resume == "auto":
            checkpoint = latest_checkpoint(root, log.info)
        elif resume and os.path.dirname(os.path.abspath(resume)).endswith(os.sep + stage):
            problem = verify(resume)  # an explicit checkpoint of this stage (one of another stage: fresh start)
            if problem:
                raise UserError(f"--resume {resume}: not a complete checkpoint ({problem})")
            checkpoint = load_checkpoint(resume)
        if checkpoint is None:
            if os.path.isdir(root):  # a fresh start: old checkpoints of this run must not be resumed later
                if os.listdir(root):  # (a fresh run over a finished one is refused earlier: launcher/run_dir.py)
                    log.info(f"{stage}: starting afresh; removing {root} ({', '.join(sorted(os.listdir(root)))}): "
                             "nothing in it can be resumed" + (f" with --resume {resume}" if resume else ""))
                shutil.rmtree(root)
            return None
        check_compatible(checkpoint.fingerprint, {**model_fingerprint(cfg), "stage": stage}, checkpoint.path)
        loaded.update(model=checkpoint.model_state(), optimizer=checkpoint.optimizer_state(),
                      arrays=checkpoint.arrays())
        return {"path": checkpoint.path, "position": asdict(checkpoint.position), "extra": checkpoint.extra,
                "fingerprint": checkpoint.fingerprint}

    meta = comms.decide(choose)
    if meta is None:
        return None
    content = comms.broadcast_state(loaded if comms.is_main else None)
    log.info(f"{stage}: resuming from {meta['path']}")
    return LoadedCheckpoint(meta["path"], Position(**meta["position"]), meta["extra"], meta["fingerprint"],
                            content["model"], content["optimizer"], content["arrays"])


def resume_from(checkpoint: Optional[Checkpoint]) -> Optional[Resume]:
    return (Resume(checkpoint.position, checkpoint.optimizer_state(), checkpoint.extra.get("precision"))
            if checkpoint else None)


def stage_done(cfg: Config, stage: str, comms: Collectives) -> Optional[dict]:
    """The stage's completion record if it finished, as rank 0's disk says, on every rank."""
    def read() -> Optional[dict]:
        path = os.path.join(_stage_root(cfg, stage), "DONE.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    return comms.decide(read)


def mark_done(cfg: Config, stage: str, info: dict, comms: Collectives) -> None:
    if comms.is_main:
        atomic_write_text(os.path.join(_stage_root(cfg, stage), "DONE.json"), json.dumps(info, indent=2))
    comms.barrier()


