"""Stage 3: export each kept width as a standalone smaller model, and report it on dev.

This is the only place dev is read under the honest protocol: each exported model, and the teacher,
evaluated once. Rank 0 writes ``export/width_W`` (weights, config, vocabulary, Paddle inference model).
"""
import os
from typing import Callable, Iterable, List

from dynabert import faults
from dynabert.io_utils import remove_path
from dynabert.model.export import encoder_parameter_count, parameter_count, save_exported
from dynabert.model.outputs import forward
from dynabert.model.pretrained import tokenizer_of
from dynabert.stages.common import StageContext, describe, load_kept, load_teacher, teacher_source, width_dir
from dynabert.stages.refine import kept_dir
from dynabert.train.evaluation import metrics_on


def teacher_dev_metrics(ctx: StageContext) -> dict:
    """The teacher's dev metrics, for the table's reference column (one evaluation)."""
    teacher = load_teacher(ctx)
    result = metrics_on(ctx.data.dev, lambda b: forward(teacher, b), ctx.data, ctx.cfg, ctx.comms)
    ctx.log.info(f"teacher {teacher_source(ctx.cfg)}: dev {describe(result)}")
    return result


def remove_earlier_exports(root: str, names: Iterable[str], log: Callable[[str], None]) -> List[str]:
    """``root`` (``export/``) keeps only the sub-models this run exports, ``names``: what an earlier run in
    the same out_dir exported with other widths or depths would otherwise be timed, scored and chosen by
    ``select`` as if this run had made it. Rank 0 only; returns what was removed."""
    keep = set(names)
    removed = sorted(n for n in (os.listdir(root) if os.path.isdir(root) else []) if n not in keep)
    for name in removed:
        remove_path(os.path.join(root, name))
    if removed:
        log(f"export: removed {', '.join(removed)} from {root}: not this run's sub-models (an earlier run's)")
    return removed


def export(ctx: StageContext) -> List[dict]:
    """One row per exported width: its metadata and dev metrics."""
    widths = ctx.cfg.export.widths or ctx.cfg.compress.widths
    names = [os.path.basename(width_dir("", w)) for w in widths]
    ctx.comms.run_on_main(lambda: remove_earlier_exports(ctx.path("export"), names, ctx.log.info))
    rows = []
    for width in sorted(widths, reverse=True):
        rows.append(export_width(ctx, width))
        faults.fire("model", stage="export", rank=ctx.comms.rank, step=len(rows))  # tests: a kill mid-export
    ctx.comms.barrier()
    return rows


def export_width(ctx: StageContext, width: float) -> dict:
    cfg, comms = ctx.cfg, ctx.comms
    model = load_kept(ctx, kept_dir(cfg, width), width)
    result = metrics_on(ctx.data.dev, lambda b: forward(model, b), ctx.data, cfg, comms)
    meta = {"width": width, "parameters": parameter_count(model), "encoder_parameters": encoder_parameter_count(model)}
    out = width_dir(ctx.path("export"), width)
    meta = comms.run_on_main(lambda: save_exported(model, width, tokenizer_of(cfg), out,
                                                   inference_model=cfg.export.inference_model,
                                                   task=ctx.data.spec.summary())) or meta
    ctx.log.info(f"export width {width:g}: {meta['parameters']:,} parameters, dev {describe(result)}")
    return {**meta, "metrics": result}
