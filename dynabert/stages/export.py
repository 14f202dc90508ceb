"""Stage 3: export each kept width as a standalone smaller model, and report it on dev.

This is the only place dev is read under the honest protocol: each exported model, and the teacher,
evaluated once. Rank 0 writes ``export/width_W`` (weights, config, vocabulary, Paddle inference model).
"""
import os
from typing import List

from dynabert import models
from dynabert.errors import UserError
from dynabert.export import encoder_parameter_count, load_exported, parameter_count, save_exported
from dynabert.stages.common import StageContext, describe, teacher_source, tokenizer_of, width_dir
from dynabert.task_data import metrics_on
from dynabert.train_step import forward


def teacher_dev_metrics(ctx: StageContext) -> dict:
    """The teacher's dev metrics, for the table's reference column (one evaluation)."""
    path = teacher_source(ctx.cfg)
    teacher = models.load_model(path, ctx.data.num_classes, ctx.cfg.model.dropout)
    teacher.eval()
    result = metrics_on(ctx.data.dev, lambda b: forward(teacher, b), ctx.data, ctx.cfg, ctx.comms)
    ctx.log.info(f"teacher {path}: dev {describe(result)}")
    return result


def export(ctx: StageContext) -> List[dict]:
    """One row per exported width: its metadata and dev metrics."""
    cfg, comms, log = ctx.cfg, ctx.comms, ctx.log
    rows = []
    widths = cfg.export.widths or cfg.compress.widths
    best_root = ctx.path("compress", "best")
    for width in sorted(widths, reverse=True):
        source = width_dir(best_root, width)
        if not os.path.isdir(source):
            raise UserError(f"export.widths: no compressed model for width {width:g} at {source}; run the "
                            "compress stage first")
        model = load_exported(source)
        result = metrics_on(ctx.data.dev, lambda b: forward(model, b), ctx.data, cfg, comms)
        meta = {"width": width, "parameters": parameter_count(model),
                "encoder_parameters": encoder_parameter_count(model)}
        out = width_dir(ctx.path("export"), width)
        meta = comms.run_on_main(lambda: save_exported(model, width, tokenizer_of(cfg), out,
                                                       inference_model=cfg.export.inference_model)) or meta
        rows.append({**meta, "metrics": result})
        log.info(f"export width {width:g}: {meta['parameters']:,} parameters, dev {describe(result)}")
    comms.barrier()
    return rows
