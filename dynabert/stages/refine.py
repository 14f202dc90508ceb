"""Stage 2b (optional, ``refine.steps`` > 0): each kept width, as the standalone smaller model compress cut
out, distilled alone from the teacher for ``refine.steps`` optimizer steps, data-parallel.

In the supernet every width shares its weights with the others, and the narrowest learns slowest (issue 27):
alone, a sub-model can move its weights for itself. The loss is compress's for that width (the same weights
of hidden states, logits and labels). Each width is a stage of its own, ``refine/width_W``, with its own
checkpoints and completion marker (``checkpoints/refine/width_W``), so a killed run resumes inside the width
it was refining and skips the finished ones.

What is kept (``refine/width_W``, written by rank 0) is the best evaluation on the selection split, the
unrefined model (step 0) included: refining never exports a model that scored worse there than compress's.
"""
import dataclasses
import math
import os
from typing import List, Optional

from dynabert.config import Config
from dynabert.data.batching import GlobalBatches
from dynabert.data.metrics import main_metric_name
from dynabert.model.export import save_exported
from dynabert.model.outputs import HiddenStates, PaddingGradients, forward
from dynabert.model.pretrained import tokenizer_of
from dynabert.stages.common import (
    StageContext,
    describe,
    improves,
    is_finite,
    load_kept,
    load_teacher,
    log_name,
    run_stage,
    width_dir,
)
from dynabert.train.checkpoint import Checkpoint
from dynabert.train.evaluation import metrics_on
from dynabert.train.loop import LoopHooks, global_throughput, train
from dynabert.train.precision import Precision
from dynabert.train.stage_state import checkpointer, resume_from
from dynabert.train.step import distill_step

NAME = "refine"


def refine_on(cfg: Config) -> bool:
    return cfg.refine.steps > 0


def refined_widths(cfg: Config) -> List[float]:
    """The widths this run refines, widest first: ``refine.widths``, else every exported one."""
    if not refine_on(cfg):
        return []
    return sorted(cfg.refine.widths or cfg.export.widths or cfg.compress.widths, reverse=True)


def kept_dir(cfg: Config, width: float) -> str:
    """Where the model export reads for ``width`` lives: refine's when the width was refined, else compress's."""
    stage = NAME if width in refined_widths(cfg) else os.path.join("compress", "best")
    return width_dir(os.path.join(cfg.run.out_dir, stage), width)


def stage_name(width: float) -> str:
    return f"{NAME}/width_{width:g}"


def refine(ctx: StageContext) -> dict:
    """Every refined width, each a resumable stage of its own. Returns {width: its completion record}."""
    teachers = []  # loaded once, by the first width that trains (a resumed run's finished widths need none)

    def body(c: StageContext, checkpoint: Optional[Checkpoint], width: float) -> dict:
        if not teachers:
            teachers.append(load_teacher(c))
        return refine_width(c, checkpoint, width, teachers[0])

    return {f"{w:g}": run_stage(ctx, stage_name(w), lambda c, checkpoint, w=w: body(c, checkpoint, w))
            for w in refined_widths(ctx.cfg)}


def refine_optim(cfg: Config, steps_per_epoch: int):
    """``refine.optim`` with its length: ``refine.steps``, as many epochs as that takes."""
    epochs = math.ceil(cfg.refine.steps / steps_per_epoch)
    return dataclasses.replace(cfg.refine.optim, epochs=float(epochs), max_steps=cfg.refine.steps)


def refine_width(ctx: StageContext, checkpoint: Optional[Checkpoint], width: float, teacher) -> dict:
    """``teacher``: the fine-tuned teacher in eval mode (shared by the widths; its hooks are removed here)."""
    cfg, comms, log, data = ctx.cfg, ctx.comms, ctx.log, ctx.data
    name, ccfg = log_name(stage_name(width)), cfg.compress
    metric = main_metric_name(data.spec)
    student = load_kept(ctx, width_dir(ctx.path("compress", "best"), width), width)
    out = width_dir(ctx.path(NAME), width)
    best = checkpoint.extra["best"] if checkpoint else {"metrics": None}
    if checkpoint:
        student.set_state_dict(checkpoint.model_state())
    student_states, teacher_states = HiddenStates(student), HiddenStates(teacher)

    def on_eval(step: int) -> None:
        student.eval()
        with student_states.paused(), teacher_states.paused():
            result = metrics_on(data.selection, lambda b: forward(student, b), data, cfg, comms)
        student.train()
        log.record(f"{name}_eval", step, result)
        best["recent"] = (best.get("recent", []) + [result[metric]])[-2:]
        log.info(f"{name} eval step {step} ({data.selection_name}): {describe(result)}")
        if improves(result, best["metrics"], metric) and is_finite(student):
            best["metrics"] = {**result, "step": step}
            comms.run_on_main(lambda: save_exported(student, width, tokenizer_of(cfg), out, inference_model=False))

    if checkpoint is None:
        on_eval(0)  # the unrefined model: what refining has to beat
    batches = GlobalBatches(data.distill, cfg.refine.optim.batch_size, cfg.run.seed, comms.rank, comms.world_size,
                            data.pad_token_id, data.pad_to, key="refine.optim.batch_size",
                            group_by_length=cfg.data.group_by_length)
    precision = Precision(cfg.run.precision)
    padding = PaddingGradients(student)
    saver = checkpointer(cfg, stage_name(width), comms, log.info)
    student.train()
    outcome = train(lambda b, step: distill_step(student, student_states, teacher, teacher_states, b,
                                                 lambda_distill=ccfg.lambda_distill, lambda_logit=ccfg.lambda_logit,
                                                 lambda_task=ccfg.lambda_task, regression=data.regression,
                                                 backward=precision.backward, padding=padding),
                    named_params=list(student.named_parameters()), optim=refine_optim(cfg, len(batches)),
                    batches=batches, comms=comms, log=log, settings=ctx.loop_settings(name),
                    hooks=LoopHooks(evaluate=on_eval, checkpointer=saver, checkpoint_state=lambda: {"best": best}),
                    resume=resume_from(checkpoint), precision=precision)
    for hooks in (student_states, teacher_states, padding):
        hooks.remove()
    comms.barrier()  # rank 0 has written the kept model
    kept, recent = best["metrics"], best.get("recent", [])
    still_rising = len(recent) == 2 and recent[1] > recent[0]
    if still_rising:
        log.info(f"{name}: warning: {metric} on {data.selection_name} was still rising at the last evaluation "
                 f"({recent[0]:.4f} -> {recent[1]:.4f}); it may gain from more refine.steps")
    log.info(f"{name}: kept step {kept['step']} ({data.selection_name} {metric} {kept[metric]:.4f}; "
             f"{'the unrefined model' if kept['step'] == 0 else 'refined'})")
    return {"best": kept, "still_rising": still_rising, "throughput": global_throughput(outcome.throughput, comms),
            "skipped_steps": outcome.skipped_steps}
