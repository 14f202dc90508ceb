"""Stage 2b (``compress_depth``, on when ``compress.depths`` is not [1.0]): DynaBERT's second stage.

The student starts from the width stage's supernet and learns to run with fewer layers too; the teacher
is a frozen copy of that supernet, at the student's width and full depth (dynabert/model/depth.py has the layer
rule and the pairing, with the original code's line numbers). Every (width, depth) of a batch is trained in
the same optimizer step: gradients accumulate, one all-reduce (``dynabert.train.loop.train``). Checkpoints,
exact resume and non-finite handling are the loop's; evaluation is per (width, depth) on the selection
split, kept as the width stage keeps it (``compress.select``), into ``compress_depth/best/width_W_depth_D``
(``width_W`` at depth 1.0). ``export_depth`` then exports and reports every (width, depth).
"""
import json
import os
from typing import List, Optional, Tuple

import paddle

from dynabert import faults
from dynabert.config import Config
from dynabert.errors import UserError
from dynabert.model.depth import DepthSupernet, depth_dir_name
from dynabert.model.export import EXPORT_META, extract_submodel_at_depth, save_exported
from dynabert.model.outputs import HiddenStates, KeptHiddenStates, PaddingGradients, forward
from dynabert.model.pretrained import tokenizer_of
from dynabert.model.supernet import Supernet
from dynabert.stages.common import StageContext, describe, load_kept, load_teacher
from dynabert.stages.export import remove_earlier_exports
from dynabert.stages.supernet_training import BestKeeper, finish_training, training_batches
from dynabert.train.checkpoint import Checkpoint
from dynabert.train.evaluation import metrics_on
from dynabert.train.loop import LoopHooks, gradient_buckets, train
from dynabert.train.precision import Precision
from dynabert.train.preflight import check_free_space
from dynabert.train.stage_state import checkpointer, resume_from
from dynabert.train.step import depth_step

NAME = "compress_depth"


def depth_on(cfg: Config) -> bool:
    return tuple(cfg.compress.depths) != (1.0,)


def width_stage_supernet(ctx: StageContext) -> str:
    """Where the student starts. With ``compress.select: supernet`` the width stage's kept best supernet: the
    original starts its second stage from the directory its first stage wrote, which it rewrites only when
    the summed dev accuracy of all widths improves (run_glue.py L233-247). With ``per_width`` there is no
    single best supernet, so the last one."""
    best = ctx.path("compress", "best", "supernet.pdparams")
    return best if ctx.cfg.compress.select == "supernet" else ctx.path("compress", "supernet.pdparams")


def load_width_supernets(ctx: StageContext) -> Tuple[Supernet, Supernet]:
    """(student, teacher): two copies of the width stage's supernet, the same on every rank. Rank 0 reads the
    file (maybe on a disk only it sees) and the others receive the weights."""
    cfg, comms = ctx.cfg, ctx.comms
    path = width_stage_supernet(ctx)

    def check() -> None:
        if not os.path.isfile(path):
            raise UserError(f"compress.depths: no width-stage supernet at {path}; run the compress stage first")

    comms.decide(check)
    base = load_teacher(ctx)  # the architecture; every weight is replaced below
    student, teacher = Supernet(base, cfg.compress.widths), Supernet(base, cfg.compress.widths)
    del base
    comms.run_on_main(lambda: student.set_state_dict(paddle.load(path)))
    comms.broadcast_parameters(student.parameters(), src=0)
    teacher.set_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.stop_gradient = True
    teacher.eval()
    return student, teacher


def sub_key(width: float, depth: float) -> str:
    return f"{width:g}_{depth:g}"


def compress_depth(ctx: StageContext, checkpoint: Optional[Checkpoint]) -> dict:
    """Returns the completion record: the kept evaluations ("best"), the throughput, skipped steps."""
    cfg, comms, log, data = ctx.cfg, ctx.comms, ctx.log, ctx.data
    ccfg = cfg.compress
    width_supernet, teacher = load_width_supernets(ctx)
    student = DepthSupernet(width_supernet, ccfg.depths)
    log.info(f"{NAME}: {len(student.widths)} widths x {len(student.depths)} depths, layers kept: "
             + ", ".join(f"{d:g} -> {student.kept(d)}" for d in student.depths))
    check_free_space(cfg, student.model, comms)
    if checkpoint:
        student.set_state_dict(checkpoint.model_state())
    student_states, teacher_states = KeptHiddenStates(student.model), HiddenStates(teacher.model)
    padding = PaddingGradients(student.model)
    def save_pairs(pairs) -> None:
        tokenizer = tokenizer_of(cfg)
        for width, depth in pairs:
            save_exported(extract_submodel_at_depth(student, width, depth), width, tokenizer,
                          os.path.join(keeper.root, depth_dir_name(width, depth)), inference_model=False, depth=depth)

    keeper = BestKeeper(ctx, supernet=student, root=ctx.path(NAME, "best"), entries="models",
                        name_of=lambda pair: sub_key(*pair), save_models=save_pairs,
                        state=checkpoint.extra["best"] if checkpoint else None,
                        narrowest=(min(student.widths), min(student.depths)), patience=ccfg.optim.patience)

    def on_eval(step: int) -> None:
        student.eval()
        results = {}
        with student_states.paused():
            for width in student.widths:
                student.set_width(width)
                for depth in student.depths:
                    with student.at_depth(depth):
                        result = metrics_on(data.selection, lambda b: forward(student, b), data, cfg, comms)
                    results[(width, depth)] = result
                    log.record(f"{NAME}_eval/w{width:g}_d{depth:g}", step, result)
                    log.info(f"{NAME} eval step {step} width {width:g} depth {depth:g} ({data.selection_name}): "
                             f"{describe(result)}")
        keeper.offer(step, results)
        student.train()

    precision = Precision(cfg.run.precision)

    named_params = student.named_parameters()
    overlap = gradient_buckets(comms, named_params, ccfg.optim)

    def step_fn(batch, step):  # every width at every depth (compress.width_sampling is the width stage's)
        return depth_step(student, student_states, teacher, teacher_states, batch, widths=student.widths,
                          depths=student.depths, lambda_distill=ccfg.lambda_distill, lambda_logit=ccfg.lambda_logit,
                          regression=data.regression, lambda_task=ccfg.lambda_task, backward=precision.backward,
                          padding=padding, last_backward=overlap and overlap.armed)

    student.train()
    outcome = train(step_fn, named_params=named_params, optim=ccfg.optim, batches=training_batches(ctx),
                    comms=comms, log=log, settings=ctx.loop_settings(NAME),
                    hooks=LoopHooks(evaluate=on_eval, checkpointer=checkpointer(cfg, NAME, comms, log.info),
                                    checkpoint_state=lambda: {"best": keeper.state}, stop=keeper.patience_exhausted),
                    resume=resume_from(checkpoint), precision=precision, overlap=overlap)
    return finish_training(ctx, NAME, student, outcome, keeper, (student_states, teacher_states))


def export_depth(ctx: StageContext) -> List[dict]:
    """The export stage when the depth stage ran: every kept (width, depth) of ``compress_depth/best`` as a
    standalone model with fewer layers in ``export/width_W_depth_D`` (``width_W`` at depth 1.0), evaluated
    once on dev. One row per pair, widest then deepest first."""
    widths = sorted(ctx.cfg.export.widths or ctx.cfg.compress.widths, reverse=True)
    names = [depth_dir_name(w, d) for w in widths for d in ctx.cfg.compress.depths]
    ctx.comms.run_on_main(lambda: remove_earlier_exports(ctx.path("export"), names, ctx.log.info))
    rows = []
    for width in widths:
        for depth in sorted(ctx.cfg.compress.depths, reverse=True):
            rows.append(export_pair(ctx, width, depth))
            faults.fire("model", stage="export", rank=ctx.comms.rank, step=len(rows))  # tests: a kill mid-export
    ctx.comms.barrier()
    return rows


def export_pair(ctx: StageContext, width: float, depth: float) -> dict:
    cfg, comms = ctx.cfg, ctx.comms
    name = depth_dir_name(width, depth)
    source = ctx.path(NAME, "best", name)
    comms.decide(lambda: _check_kept(source, width, depth))
    model = load_kept(ctx, source, width)
    result = metrics_on(ctx.data.dev, lambda b: forward(model, b), ctx.data, cfg, comms)
    out = ctx.path("export", name)
    meta = comms.broadcast_object(comms.run_on_main(lambda: save_exported(
        model, width, tokenizer_of(cfg), out, depth=depth, inference_model=cfg.export.inference_model,
        task=ctx.data.spec.summary())))
    ctx.log.info(f"export width {width:g} depth {depth:g} ({meta['num_layers']} layers): "
                 f"{meta['parameters']:,} parameters, dev {describe(result)}")
    return {**meta, "metrics": result}


def _check_kept(source: str, width: float, depth: float) -> None:
    meta = os.path.join(source, EXPORT_META)
    if not os.path.isfile(meta):
        raise UserError(f"compress.depths: no compressed model for width {width:g} depth {depth:g} at {source}; "
                        "run the compress_depth stage first")
    with open(meta) as f:
        if json.load(f).get("depth") != depth:
            raise UserError(f"compress.depths: {meta} is not a depth-{depth:g} model")
