"""The run, stage by stage: a table of contents. Each stage lives in ``dynabert/stages/``; what they
share (context, completion markers, resume, seeding) in ``dynabert/stages/common.py``.

    config.yaml            the resolved config        metrics.jsonl, tensorboard/   logs
    teacher/               fine-tuned teacher         compress/best/width_W/        kept sub-model per width
    compress_depth/        the depth stage's kept models and supernet (compress.depths)
    refine/width_W/        each width distilled alone after compress (refine.steps > 0)
    export/width_W[_depth_D]/  standalone model + inference/ Paddle inference model
    select/                candidate table, plot, the chosen model with its card
    results.json, results.md                          the per-width table (dev)
"""
import dataclasses
import hashlib
import os
import time
from typing import Optional

from dynabert import faults
from dynabert.collectives import Collectives
from dynabert.config import Config
from dynabert.data import record
from dynabert.data.metrics import main_metric_name
from dynabert.data.task_data import cache_dir, data_fingerprint
from dynabert.io_utils import atomic_write_text, remove_leftovers
from dynabert.model.pretrained import model_source, tokenizer_of
from dynabert.stages.common import StageContext, run_stage
from dynabert.stages.compress import compress
from dynabert.stages.compress_depth import compress_depth, depth_on, export_depth
from dynabert.stages.export import export, teacher_dev_metrics
from dynabert.stages.finetune import finetune
from dynabert.stages.prepare import prepare_data
from dynabert.stages.refine import refine, refine_on
from dynabert.stages.select import select
from dynabert.train.precision import Precision
from dynabert.train.preflight import check_batch_sizes, check_max_seq_len, check_writable
from dynabert.train.run_log import RunLog, results_markdown, write_results
from dynabert.train.stage_state import stage_done


def run(cfg: Config, comms: Collectives, config_text: str = "", resume: Optional[str] = None) -> dict:
    """``resume``: None (fresh), "auto" (newest complete checkpoint of each stage, completed stages are
    skipped) or a checkpoint directory."""
    if comms.is_main:
        check_writable(cfg.run.out_dir)  # before anything is written, so a bad path costs nothing
    log = RunLog(cfg.run.out_dir, enabled=comms.is_main, rank=comms.rank)
    if comms.is_main:
        # A killed attempt's half-written checkpoint or model (full size, possibly); nothing writes yet.
        # The corpus cache clears its own, under its lock: it may be shared with other jobs.
        for path in remove_leftovers(cfg.run.out_dir, skip=[cache_dir(cfg)]):
            log.info(f"removed {path}: left half-written by an interrupted attempt")
    try:
        return _run(cfg, comms, log, config_text, resume)
    finally:
        log.close()


def _run(cfg: Config, comms: Collectives, log: RunLog, config_text: str, resume: Optional[str]) -> dict:
    if comms.is_main and config_text:
        atomic_write_text(os.path.join(cfg.run.out_dir, "config.yaml"), config_text)
    check_max_seq_len(cfg.data.max_seq_len, cfg.model.teacher or model_source(cfg.model.name_or_path))
    data = prepare_data(cfg, tokenizer_of(cfg), log)
    comms.wait_for_peers("prepare")  # a node may build its corpus cache for minutes: no collective meanwhile
    # Every rank must run the same config (its out_dir may differ: node-local disks) on the same data.
    comms.check_agreement({"config": config_digest(cfg), "data": data_fingerprint(data), "--resume": resume})
    if comms.is_main and len(data.selection):  # what a later dynabert-select must score on (the training run's)
        record.write(cfg.run.out_dir, record.describe(data, cfg))
    check_batch_sizes(cfg, data, comms.world_size)
    Precision(cfg.run.precision)  # fp16/bf16 on a CPU run is refused now, not after fine-tuning
    ctx = StageContext(cfg, comms, log, data, resume)
    spec = data.spec
    results = {"task": data.task, "metric": main_metric_name(spec),  # what the table reports and selects on
               "labels": None if spec.is_regression else list(spec.labels), "world_size": comms.world_size,
               "global_batch_size": {"finetune": cfg.finetune.batch_size, "compress": cfg.compress.optim.batch_size},
               "protocol": protocol(cfg), "teacher": None}
    timings = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - start
        return out

    if "finetune" in cfg.run.stages and not cfg.model.teacher:
        timed("finetune", lambda: run_stage(ctx, "finetune", finetune))
    if "compress" in cfg.run.stages:
        done = timed("compress", lambda: run_stage(ctx, "compress", compress))
        results["compress_best"] = done["best"]
    if "compress_depth" in cfg.run.stages and depth_on(cfg):
        done = timed("compress_depth", lambda: run_stage(ctx, "compress_depth", compress_depth))
        results["compress_depth_best"] = done["best"]
    if "refine" in cfg.run.stages and refine_on(cfg):
        done = timed("refine", lambda: refine(ctx))
        results["refine_best"] = {width: record["best"] for width, record in done.items()}
    results["throughput"] = {stage: done["throughput"] for stage in ("finetune", "compress", "compress_depth")
                             if (done := stage_done(cfg, stage, comms)) and "throughput" in done}
    if "export" in cfg.run.stages:
        rows = timed("export", lambda: export_depth(ctx) if depth_on(cfg) else export(ctx))
        results["teacher"] = teacher_dev_metrics(ctx)
        metric = results["metric"]
        table = [{"width": r["width"], "depth": r.get("depth"), "num_layers": r.get("num_layers"), "parameters":
                  r["parameters"], "encoder_parameters": r["encoder_parameters"], "metric": r["metrics"][metric]}
                 for r in rows]
        results["widths"] = rows
        markdown = results_markdown(table, results["teacher"][metric], metric, protocol=results["protocol"],
                                    depth=depth_on(cfg))
        if comms.is_main:
            log.info("\n" + markdown)
            write_results(cfg.run.out_dir, {**results, "seconds": timings}, markdown)
        faults.fire("stage_done", stage="export", rank=comms.rank)  # tests: a kill between export and select
    if "select" in cfg.run.stages:
        results["select"] = timed("select", lambda: select(ctx))
        if comms.is_main and "export" in cfg.run.stages:
            write_results(cfg.run.out_dir, {**results, "seconds": timings}, markdown)
    results["seconds"] = timings
    return results


def config_digest(cfg: Config) -> str:
    everywhere = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=""))
    return hashlib.sha256(repr(everywhere).encode()).hexdigest()[:16]


def protocol(cfg: Config) -> dict:
    """How the reported numbers were produced, in the results and above the table."""
    if cfg.data.select_on == "validation":
        where = (f"importance and checkpoint selection on {cfg.data.validation_rows} held-out training rows "
                 "(never trained on); dev read once per reported model")
    else:
        where = "importance and checkpoint selection on dev (the tutorial's protocol: optimistic)"
    how = ("one supernet: the step with the best mean selection metric over all widths"
           if cfg.compress.select == "supernet" else "per width: each width's own best step")
    return {"select_on": cfg.data.select_on, "validation_rows": cfg.data.validation_rows if
            cfg.data.select_on == "validation" else 0, "select": cfg.compress.select,
            "description": f"{where}; selection: {how}"}
