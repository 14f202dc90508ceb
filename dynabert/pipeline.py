"""The three stages, each runnable alone: finetune (teacher), compress (importance, reorder, supernet
distillation, per-width evaluation), export (standalone smaller models). Paths of a run directory:

    config.yaml            the resolved config        metrics.jsonl, tensorboard/   logs
    teacher/               fine-tuned teacher         compress/best/width_W/        best sub-model per width
    export/width_W/        standalone model + inference/ Paddle inference model
    results.json, results.md                          the per-width table
"""
import os
import random
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import paddle

from dynabert import models
from dynabert.batching import GlobalBatches, eval_batches, to_tensors
from dynabert.collectives import Collectives
from dynabert.config import DEFAULT_MODEL, Config
from dynabert.data import encode, get_task, load_split
from dynabert.errors import TrainingDiverged, UserError
from dynabert.evaluation import evaluate
from dynabert.export import (encoder_parameter_count, extract_submodel, load_exported, parameter_count,
                             save_exported)
from dynabert.importance import compute_importance
from dynabert.io_utils import atomic_paddle_save, atomic_write_text
from dynabert.metrics import main_metric_name
from dynabert.precision import Precision
from dynabert.preflight import check_batch_sizes, check_free_space, check_vocabulary, check_writable
from dynabert.reorder import reorder_heads_and_neurons
from dynabert.run_log import RunLog, results_markdown, write_results
from dynabert.supernet import Supernet, check_widths
from dynabert.train_step import HiddenStates, finetune_step, forward, supernet_step, task_loss
from dynabert.stage_state import checkpointer, mark_done, resume_from, resume_point, stage_done
from dynabert.trainer import global_throughput, losses_to_floats, train


@dataclass
class TaskData:
    task: str
    regression: bool
    num_classes: int
    train: list
    dev: list
    pad_token_id: int
    pad_to: Optional[int]  # None: dynamic padding


def width_dir(root: str, width: float) -> str:
    return os.path.join(root, f"width_{width:g}")


def model_source(name: str) -> str:
    return models.default_model_dir() if name == DEFAULT_MODEL else name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def prepare_data(cfg: Config, tokenizer, log: RunLog) -> TaskData:
    spec = get_task(cfg.data.task)
    dev_split = spec.dev_splits[0]  # MNLI: dev_matched
    splits = {}
    for split, limit in (("train", cfg.data.train_limit), (dev_split, cfg.data.dev_limit)):
        examples, source = load_split(spec.name, split, cfg.data.glue_dir, limit, cfg.data.allow_download)
        log.info(f"data {split}: {source}")
        splits[split] = encode(examples, tokenizer, cfg.data.max_seq_len)
    pad_to = cfg.data.max_seq_len if cfg.data.padding == "max_length" else None
    return TaskData(spec.name, spec.is_regression, spec.num_classes, splits["train"], splits[dev_split],
                    tokenizer.pad_token_id, pad_to)


def dev_metrics(model_fn, data: TaskData, cfg: Config, comms: Collectives) -> Dict[str, float]:
    return evaluate(model_fn, data.dev, data.task, data.regression, cfg.run.eval_batch_size, comms,
                    data.pad_token_id)


def _named_params(layer) -> list:
    return list(layer.named_parameters())


# --------------------------------------------------------------------------------------------------
# Stage 1: fine-tune the teacher
# --------------------------------------------------------------------------------------------------
def finetune(cfg: Config, data: TaskData, tokenizer, comms: Collectives, log: RunLog,
             resume: Optional[str] = None):
    """Returns the best teacher (by dev metric) and its metrics; rank 0 keeps it in <out>/teacher."""
    metric = main_metric_name(data.task)
    teacher_dir = os.path.join(cfg.run.out_dir, "teacher")
    done = stage_done(cfg, "finetune") if resume else None
    if done is not None:
        log.info(f"finetune: already complete in {cfg.run.out_dir}; loading {teacher_dir}")
        return models.load_model(teacher_dir, data.num_classes, cfg.model.dropout), done["metrics"]
    checkpoint = resume_point(cfg, "finetune", resume, comms, log)
    seed_everything(cfg.run.seed)
    model = models.load_model(model_source(cfg.model.name_or_path), data.num_classes, cfg.model.dropout,
                              seed=cfg.run.seed)
    check_vocabulary(tokenizer, model, model_source(cfg.model.name_or_path))
    check_free_space(cfg, model, comms)
    comms.broadcast_parameters(model.parameters())  # one initial classifier for every rank
    best = checkpoint.extra["best"] if checkpoint else {"metrics": None}
    if checkpoint:
        model.set_state_dict(checkpoint.model_state())

    def on_eval(step: int) -> None:
        model.eval()
        result = dev_metrics(lambda b: forward(model, b), data, cfg, comms)
        model.train()
        log.record("finetune_eval", step, result)
        log.info(f"finetune eval step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in result.items()))
        if improves(result, best["metrics"], metric) and is_finite(model):
            best["metrics"] = {**result, "step": step}
            comms.run_on_main(lambda: models.save_model(model, tokenizer, teacher_dir))

    batches = GlobalBatches(data.train, cfg.finetune.batch_size, cfg.run.seed, comms.rank, comms.world_size,
                            data.pad_token_id, data.pad_to, key="finetune.batch_size",
                            group_by_length=cfg.data.group_by_length)
    model.train()
    precision = Precision(cfg.run.precision)
    outcome = train(lambda b: losses_to_floats(finetune_step(model, b, data.regression, precision.backward)),
                    _named_params(model),
                    cfg.finetune, batches, comms, log, on_eval, "finetune", cfg.run.seed, cfg.run.log_every,
                    cfg.run.progress, cfg.run.on_nonfinite, checkpointer(cfg, "finetune", comms),
                    lambda: {"best": best}, resume_from(checkpoint), precision)
    if best["metrics"] is None:
        raise TrainingDiverged("finetune: no finite model to keep (every evaluation was non-finite)")
    comms.barrier()  # rank 0 has written the best teacher
    model = models.load_model(teacher_dir, data.num_classes, cfg.model.dropout)
    speed = global_throughput(outcome.throughput, comms)
    mark_done(cfg, "finetune", {"metrics": best["metrics"], "throughput": speed}, comms)
    log.info(f"finetune: best dev {metric} {best['metrics'][metric]:.4f}; {speed['samples_per_s']:.1f} "
             "samples/s (global)")
    return model, best["metrics"]


def load_teacher(cfg: Config, data: TaskData, comms: Collectives, log: RunLog):
    path = cfg.model.teacher or os.path.join(cfg.run.out_dir, "teacher")
    if not os.path.isdir(path):
        raise UserError(f"model.teacher: no fine-tuned teacher at {path}; run the finetune stage or set "
                        "model.teacher")
    teacher = models.load_model(path, data.num_classes, cfg.model.dropout, seed=cfg.run.seed)
    teacher.eval()
    result = dev_metrics(lambda b: forward(teacher, b), data, cfg, comms)
    log.info(f"teacher {path}: dev " + " ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return teacher, result


# --------------------------------------------------------------------------------------------------
# Stage 2: importance, reorder, supernet distillation
# --------------------------------------------------------------------------------------------------
def importance_and_reorder(teacher, data: TaskData, cfg: Config, comms: Collectives, log: RunLog,
                           saved: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """Rank 0 computes importance over the whole dev set and reorders; every rank then receives rank 0's
    weights, so all ranks hold bit-identical parameters (upstream computes it per shard: defect 8).
    ``saved`` (from a checkpoint) skips the computation. Returns rank 0's scores (empty elsewhere)."""
    def on_main() -> Dict[str, np.ndarray]:
        if saved:
            scores = saved
        else:
            start = time.perf_counter()
            batches = (to_tensors(b) for _, b in
                       eval_batches(data.dev, cfg.run.eval_batch_size, 0, 1, data.pad_token_id))
            if cfg.compress.importance_batches:
                batches = (b for i, b in zip(range(cfg.compress.importance_batches), batches))
            heads, neurons = compute_importance(teacher, batches,
                                                lambda logits, y: task_loss(logits, y, data.regression))
            scores = {"head_importance": heads, "neuron_importance": neurons}
            log.info(f"importance over {len(data.dev)} dev examples took {time.perf_counter() - start:.1f}s")
        reorder_heads_and_neurons(teacher, scores["head_importance"], scores["neuron_importance"])
        return scores

    scores = comms.run_on_main(on_main) or {}
    comms.broadcast_parameters(teacher.parameters(), src=0)
    return scores


def compress(cfg: Config, data: TaskData, teacher, comms: Collectives, log: RunLog,
             resume: Optional[str] = None) -> Dict[float, dict]:
    """Returns {width: best dev metrics}; rank 0 keeps the best sub-model of each width on disk."""
    ccfg = cfg.compress
    metric = main_metric_name(data.task)
    done = stage_done(cfg, "compress") if resume else None
    if done is not None:
        log.info(f"compress: already complete in {cfg.run.out_dir}")
        return {float(w): m for w, m in done["best"].items()}
    check_widths(teacher, ccfg.widths)
    check_vocabulary(_tokenizer_of(cfg), teacher, cfg.model.teacher or model_source(cfg.model.name_or_path))
    check_free_space(cfg, teacher, comms)
    checkpoint = resume_point(cfg, "compress", resume, comms, log)
    seed_everything(cfg.run.seed)
    scores = importance_and_reorder(teacher, data, cfg, comms, log, checkpoint.arrays() if checkpoint else None)
    supernet = Supernet(teacher, ccfg.widths)
    if checkpoint:
        supernet.set_state_dict(checkpoint.model_state())
    student_states, teacher_states = HiddenStates(supernet.model), HiddenStates(teacher)
    best: Dict[str, dict] = dict(checkpoint.extra["best"]) if checkpoint else {}
    best_root = os.path.join(cfg.run.out_dir, "compress", "best")

    def on_eval(step: int) -> None:
        supernet.eval()
        for width in supernet.widths:
            supernet.set_width(width)
            with student_states.paused():
                result = dev_metrics(lambda b: forward(supernet, b), data, cfg, comms)
            log.record(f"compress_eval/w{width:g}", step, result)
            log.info(f"compress eval step {step} width {width:g}: "
                     + " ".join(f"{k} {v:.4f}" for k, v in result.items()))
            key = f"{width:g}"
            if improves(result, best.get(key), metric) and is_finite(supernet.model):
                best[key] = {**result, "step": step}
                comms.run_on_main(lambda: save_exported(extract_submodel(supernet, width), width, _tokenizer_of(cfg),
                                                        width_dir(best_root, width), inference_model=False))
        supernet.train()

    precision = Precision(cfg.run.precision)

    def step_fn(batch):
        return losses_to_floats(supernet_step(supernet, student_states, teacher, teacher_states, batch,
                                              supernet.widths, ccfg.lambda_distill, ccfg.lambda_logit,
                                              data.regression, precision.backward))

    batches = GlobalBatches(data.train, ccfg.optim.batch_size, cfg.run.seed, comms.rank, comms.world_size,
                            data.pad_token_id, data.pad_to, key="compress.optim.batch_size",
                            group_by_length=cfg.data.group_by_length)
    saver = checkpointer(cfg, "compress", comms)
    saver.arrays = scores
    supernet.train()
    outcome = train(step_fn, _named_params(supernet.model), ccfg.optim, batches, comms, log, on_eval,
                    "compress", cfg.run.seed, cfg.run.log_every, cfg.run.progress, cfg.run.on_nonfinite,
                    saver, lambda: {"best": best}, resume_from(checkpoint), precision)
    student_states.remove()
    teacher_states.remove()
    comms.run_on_main(lambda: atomic_paddle_save(supernet.state_dict(),
                                                 os.path.join(cfg.run.out_dir, "compress", "supernet.pdparams")))
    speed = global_throughput(outcome.throughput, comms)
    mark_done(cfg, "compress", {"best": best, "throughput": speed}, comms)
    log.info(f"compress: {speed['samples_per_s']:.1f} samples/s, {speed['tokens_per_s']:.0f} tokens/s (global)")
    return {float(w): m for w, m in best.items()}


def improves(result: Dict[str, float], best: Optional[dict], metric: str) -> bool:
    value = result[metric]
    return bool(np.isfinite(value)) and (best is None or value > best[metric])


def is_finite(model) -> bool:
    """A model with a NaN or Inf weight is never kept as best."""
    return all(bool(paddle.isfinite(p).all()) for p in model.parameters())


_TOKENIZERS = {}


def _tokenizer_of(cfg: Config):
    source = cfg.model.teacher or model_source(cfg.model.name_or_path)
    if source not in _TOKENIZERS:
        _TOKENIZERS[source] = models.load_tokenizer(source)
    return _TOKENIZERS[source]


# --------------------------------------------------------------------------------------------------
# Stage 3: export
# --------------------------------------------------------------------------------------------------
def export(cfg: Config, data: TaskData, comms: Collectives, log: RunLog) -> List[dict]:
    """Rank 0 turns each width's best sub-model into export/width_W (+ inference model)."""
    rows = []
    widths = cfg.export.widths or cfg.compress.widths
    best_root = os.path.join(cfg.run.out_dir, "compress", "best")
    for width in sorted(widths, reverse=True):
        source = width_dir(best_root, width)
        if not os.path.isdir(source):
            raise UserError(f"export.widths: no compressed model for width {width:g} at {source}; run the "
                            "compress stage first")
        model = load_exported(source)
        result = dev_metrics(lambda b: forward(model, b), data, cfg, comms)
        meta = {"width": width, "parameters": parameter_count(model),
                "encoder_parameters": encoder_parameter_count(model)}
        out = width_dir(os.path.join(cfg.run.out_dir, "export"), width)
        meta = comms.run_on_main(lambda: save_exported(model, width, _tokenizer_of(cfg), out,
                                                       inference_model=cfg.export.inference_model)) or meta
        rows.append({**meta, "metrics": result})
        log.info(f"export width {width:g}: {meta['parameters']:,} parameters, dev "
                 + " ".join(f"{k} {v:.4f}" for k, v in result.items()))
    comms.barrier()
    return rows


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------
def run(cfg: Config, comms: Collectives, config_text: str = "", resume: Optional[str] = None) -> dict:
    """``resume``: None (fresh), "auto" (newest complete checkpoint of each stage, completed stages are
    skipped) or a checkpoint directory."""
    if comms.is_main:
        check_writable(cfg.run.out_dir)  # before anything is written, so a bad path costs nothing
    log = RunLog(cfg.run.out_dir, enabled=comms.is_main, rank=comms.rank)
    try:
        return _run(cfg, comms, log, config_text, resume)
    finally:
        log.close()


def _run(cfg: Config, comms: Collectives, log: RunLog, config_text: str, resume: Optional[str]) -> dict:
    if comms.is_main and config_text:
        atomic_write_text(os.path.join(cfg.run.out_dir, "config.yaml"), config_text)
    timings = {}
    results = {"task": None, "world_size": comms.world_size,
               "global_batch_size": {"finetune": cfg.finetune.batch_size, "compress": cfg.compress.optim.batch_size}}
    tokenizer = _tokenizer_of(cfg)
    data = prepare_data(cfg, tokenizer, log)
    check_batch_sizes(cfg, data, comms.world_size)
    Precision(cfg.run.precision)  # fp16/bf16 on a CPU run is refused now, not after fine-tuning
    results["task"] = data.task
    metric = main_metric_name(data.task)
    teacher = teacher_metrics = None

    start = time.perf_counter()
    if "finetune" in cfg.run.stages and not cfg.model.teacher:
        teacher, teacher_metrics = finetune(cfg, data, tokenizer, comms, log, resume)
        timings["finetune"] = time.perf_counter() - start
    if "compress" in cfg.run.stages:
        if teacher is None:
            teacher, teacher_metrics = load_teacher(cfg, data, comms, log)
        start = time.perf_counter()
        best = compress(cfg, data, teacher, comms, log, resume)
        results["compress_best"] = {f"{w:g}": m for w, m in best.items()}
        timings["compress"] = time.perf_counter() - start
    results["throughput"] = {stage: done["throughput"] for stage in ("finetune", "compress")
                             if (done := stage_done(cfg, stage)) and "throughput" in done}
    if "export" in cfg.run.stages:
        start = time.perf_counter()
        rows = export(cfg, data, comms, log)
        timings["export"] = time.perf_counter() - start
        table = [{"width": r["width"], "parameters": r["parameters"], "encoder_parameters": r["encoder_parameters"],
                  "metric": r["metrics"][metric]}
                 for r in rows]
        results["widths"] = rows
        teacher_value = teacher_metrics[metric] if teacher_metrics else None
        markdown = results_markdown(table, teacher_value, metric)
        if comms.is_main:
            log.info("\n" + markdown)
            results["teacher"] = teacher_metrics
            results["seconds"] = timings
            write_results(cfg.run.out_dir, results, markdown)
    results["teacher"] = teacher_metrics
    results["seconds"] = timings
    return results
