"""A fresh start never destroys an earlier run in the same directory.

Before this check a fresh start (no ``--resume``) into a used ``run.out_dir`` silently deleted each stage's
checkpoints as it reached the stage (stage_state.resume_point, so that old checkpoints are never resumed
later) and replaced ``teacher/``, ``compress/``, ``export/`` and the results as it went: a forgotten
``--resume`` or a reused ``--out_dir`` cost the earlier run. Now such a start is refused with one line
naming both ways on: ``--resume auto`` (continue that run) and ``--overwrite`` (delete its outputs, say so
in the log, and start over).

What counts is what this run would replace: the outputs of the first stage it runs and of every later
stage (rerunning a stage makes the later stages' outputs stale). Earlier stages' outputs are this run's
inputs (compress reads ``teacher/``) and are neither counted nor removed. Never counted or removed:
``logs/`` (the launcher is writing this attempt's worker logs there), ``metrics.jsonl`` and
``tensorboard/`` (append-only records of every attempt, as on resume), ``config.yaml`` (rewritten by
every run) and the corpus cache (``dynabert-prepare`` builds it before the job; a cache is not a run).

Rank 0 looks and removes, because the run directory may be node-local and only rank 0's is written;
every rank gets the same verdict (or the same error) through ``Collectives.decide``. The check runs once,
in the worker before the pipeline (launcher/worker.py), and only for a fresh start: ``dynabert-launch``
restarts with ``--resume auto`` and passes ``--overwrite`` to its first attempt only, so a restart never
wipes the checkpoints it is about to resume from.
"""
import os
from typing import TYPE_CHECKING, List, Optional

from dynabert.config import STAGES, Config
from dynabert.errors import UserError
from dynabert.io_utils import remove_path

if TYPE_CHECKING:  # dynabert.collectives imports paddle, which dynabert-launch itself never loads
    from dynabert.collectives import Collectives

# What each stage writes under run.out_dir, in pipeline order (dynabert/pipeline.py's table of contents).
STAGE_OUTPUTS = {
    "finetune": ("checkpoints/finetune", "teacher"),
    "compress": ("checkpoints/compress", "compress"),
    "compress_depth": ("checkpoints/compress_depth", "compress_depth"),
    "refine": ("checkpoints/refine", "refine"),
    "export": ("export", "results.json", "results.md"),
    "select": ("select",),
}

CONFLICT = "--overwrite: not with --resume (--resume continues the run in run.out_dir, --overwrite deletes it)"


def stages_to_run(cfg: Config) -> List[str]:
    """The stages ``dynabert.pipeline.run`` will run, with its conditions: finetune is skipped when the user
    brings a teacher, compress_depth when compress.depths is [1.0], refine when refine.steps is 0."""
    from dynabert.stages.compress_depth import depth_on

    def runs(stage: str) -> bool:
        if stage == "finetune":
            return not cfg.model.teacher
        if stage == "compress_depth":
            return depth_on(cfg)
        if stage == "refine":
            return cfg.refine.steps > 0
        return True

    return [s for s in STAGES if s in cfg.run.stages and runs(s)]


def replaced_paths(cfg: Config) -> List[str]:
    """The outputs (relative to run.out_dir) this run would write or make stale: those of its first stage
    and of every later one."""
    running = stages_to_run(cfg)
    if not running:
        return []
    first = STAGES.index(running[0])
    return [path for stage in STAGES[first:] for path in STAGE_OUTPUTS[stage]]


def _holds(path: str) -> bool:
    """A file, or a directory with something in it besides hidden leftovers of an interrupted atomic write."""
    if os.path.isfile(path):
        return True
    return os.path.isdir(path) and any(not name.startswith(".") for name in os.listdir(path))


def previous_outputs(cfg: Config) -> List[str]:
    """What an earlier run left in run.out_dir that this run would replace (relative paths, this disk)."""
    return [rel for rel in replaced_paths(cfg) if _holds(os.path.join(cfg.run.out_dir, rel))]


def check_fresh_start(cfg: Config, comms: "Collectives", resume: Optional[str], overwrite: bool) -> None:
    """Refuse (UserError, exit 2, on every rank) a fresh start over an earlier run's outputs, or with
    ``overwrite`` remove them first. A resumed run (``resume`` set) is left alone."""
    if resume and overwrite:
        raise UserError(CONFLICT)
    # Rank 0's flags decide below: a node started with other flags would be following a decision it did not ask for.
    comms.check_agreement({"--resume": resume, "--overwrite": overwrite})
    if resume:
        return
    out_dir = cfg.run.out_dir

    def look() -> List[str]:
        found = previous_outputs(cfg)
        if found and not overwrite:
            shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
            raise UserError(f"run.out_dir {out_dir} holds an earlier run's {shown}, which this fresh start would "
                            "replace; continue that run with --resume auto, or start over with --overwrite (deletes "
                            "them); nothing was changed")
        for rel in found:
            remove_path(os.path.join(out_dir, rel))
        return found

    removed = comms.decide(look)
    if removed and comms.is_main:
        print(f"--overwrite: removed the earlier run's {', '.join(removed)} from {out_dir}", flush=True)
