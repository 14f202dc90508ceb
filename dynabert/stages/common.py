"""What every stage shares: its context, the runner (completion markers, resume point, seeding), and
small helpers (where a width's model lives, whether a result is a new best, whether weights are finite).
"""
import json
import os
import random
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np
import paddle

from dynabert import faults
from dynabert.collectives import Collectives
from dynabert.config import Config
from dynabert.data.task_data import TaskData
from dynabert.errors import UserError
from dynabert.model import families, pretrained
from dynabert.model.export import EXPORT_META, load_exported
from dynabert.train.checkpoint import Checkpoint
from dynabert.train.loop import LoopSettings
from dynabert.train.run_log import RunLog
from dynabert.train.stage_state import mark_done, resume_point, stage_done


@dataclass
class StageContext:
    cfg: Config
    comms: Collectives
    log: RunLog
    data: TaskData
    resume: Optional[str]  # None (fresh), "auto" or a checkpoint directory

    def path(self, *parts: str) -> str:
        return os.path.join(self.cfg.run.out_dir, *parts)

    def loop_settings(self, tag: str) -> LoopSettings:
        run = self.cfg.run
        return LoopSettings(tag=tag, seed=run.seed, log_every=run.log_every, show_progress=run.progress,
                            on_nonfinite=run.on_nonfinite, max_consecutive_skips=run.max_consecutive_skips)


def run_stage(ctx: StageContext, name: str, body: Callable[[StageContext, Optional[Checkpoint]], dict]) -> dict:
    """Run one stage: skipped when a resumed run finished it already (``checkpoints/<name>/DONE.json``),
    else ``body(ctx, checkpoint)`` from the checkpoint it resumes (None: fresh), then marked done with
    the dict ``body`` returns."""
    done = stage_done(ctx.cfg, name, ctx.comms) if ctx.resume else None
    if done is not None:
        ctx.log.info(f"{name}: already complete in {ctx.cfg.run.out_dir}")
        return done
    checkpoint = resume_point(ctx.cfg, name, ctx.resume, ctx.comms, ctx.log)
    ctx.log.start_stage(log_name(name), checkpoint.position.step if checkpoint is not None else 0)
    seed_everything(ctx.cfg.run.seed)
    info = body(ctx, checkpoint)
    mark_done(ctx.cfg, name, info, ctx.comms)
    faults.fire("stage_done", stage=log_name(name), rank=ctx.comms.rank)  # tests: a kill between two stages
    return info


def log_name(stage: str) -> str:
    """A stage's name in the run log, metrics and faults: a nested stage (``refine/width_0.5``, whose
    checkpoints are ``checkpoints/refine/width_0.5``) flattened, ``refine_width_0.5``."""
    return stage.replace("/", "_")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def teacher_source(cfg: Config) -> str:
    """Where the fine-tuned teacher is: the user's, or the one this run's finetune stage wrote."""
    return cfg.model.teacher or os.path.join(cfg.run.out_dir, "teacher")


def load_teacher(ctx: StageContext):
    """The fine-tuned teacher, the same on every rank, in eval mode.

    A teacher the user brings (``model.teacher``) is input, like the data: every node has it. The one
    this run fine-tuned was written by rank 0, maybe on a disk only rank 0 sees: rank 0 loads it, the
    others build the same architecture from the base model and receive rank 0's weights."""
    cfg, comms = ctx.cfg, ctx.comms
    path = teacher_source(cfg)

    def check() -> None:
        if not os.path.isdir(path):
            raise UserError(f"model.teacher: no fine-tuned teacher at {path}; run the finetune stage or set "
                            "model.teacher")

    if cfg.model.teacher:
        check()
        source = path
    else:
        comms.decide(check)
        source = path if comms.is_main else pretrained.model_source(cfg.model.name_or_path)
    teacher = pretrained.load_model(source, ctx.data.num_classes, cfg.model.dropout, seed=cfg.run.seed)
    if not cfg.model.teacher:
        comms.broadcast_parameters(teacher.parameters(), src=0)
    teacher.eval()
    return teacher


def load_kept(ctx: StageContext, source: str, width: float):
    """A kept sub-model (written by rank 0 during compress or refine) on every rank: rank 0 reads it, the others
    build the same shape from rank 0's description and receive its weights."""
    def describe_kept() -> dict:
        if not os.path.isdir(source):
            raise UserError(f"export.widths: no kept model for width {width:g} at {source}; run the compress "
                            "stage first (and refine, when refine.steps > 0)")
        with open(os.path.join(source, EXPORT_META)) as f:
            meta = json.load(f)
        family = families.get(meta.get("family", "bert"))
        return {"config": family.config_class.from_pretrained(source).to_dict(), "num_heads": meta["num_heads"],
                "family": family.name}

    shape = ctx.comms.decide(describe_kept)
    family = families.get(shape["family"])
    model = (load_exported(source) if ctx.comms.is_main
             else family.build(family.config_from_dict(shape["config"]), shape["num_heads"]))
    ctx.comms.broadcast_parameters(model.parameters(), src=0)
    model.eval()
    return model


def width_dir(root: str, width: float) -> str:
    return os.path.join(root, f"width_{width:g}")


def improves(result: Dict[str, float], best: Optional[dict], metric: str) -> bool:
    value = result[metric]
    return bool(np.isfinite(value)) and (best is None or value > best[metric])


def is_finite(model) -> bool:
    """A model with a NaN or Inf weight is never kept as best. One host sync: NaN and Inf propagate
    through the sum of per-parameter sums."""
    sums = [p.sum() for p in model.parameters()]
    return bool(paddle.isfinite(paddle.add_n(sums))) if sums else True


def describe(result: Dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in result.items())
