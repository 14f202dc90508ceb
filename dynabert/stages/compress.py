"""Stage 2: importance on the selection split, reorder, then train the width-adaptive supernet with
distillation from the teacher (every width of every batch, one optimizer step).

Selection (``compress.select``): "supernet" keeps the one step with the best mean selection metric over
all widths and cuts every width from it (also saved whole as ``compress/best/supernet.pdparams``);
"per_width" keeps each width's own best step. Rank 0 writes the kept sub-models to
``compress/best/width_W``.
"""
import os
import time
from typing import Dict, Optional

import numpy as np

from dynabert.batching import GlobalBatches, eval_batches, to_tensors
from dynabert.checkpoint import Checkpoint
from dynabert.export import extract_submodel, save_exported
from dynabert.importance import compute_importance
from dynabert.io_utils import atomic_paddle_save
from dynabert.metrics import main_metric_name
from dynabert.precision import Precision
from dynabert.preflight import check_free_space, check_vocabulary
from dynabert.reorder import reorder_heads_and_neurons
from dynabert.stage_state import checkpointer, resume_from
from dynabert.stages.common import (
    StageContext,
    describe,
    improves,
    is_finite,
    load_teacher,
    teacher_source,
    tokenizer_of,
    width_dir,
)
from dynabert.supernet import Supernet, check_widths
from dynabert.task_data import TaskData, metrics_on
from dynabert.train_step import HiddenStates, forward, supernet_step, task_loss
from dynabert.trainer import LoopHooks, global_throughput, train

NAME = "compress"


def importance_and_reorder(teacher, data: TaskData, cfg, comms, log,
                           saved: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """Rank 0 computes importance over the whole selection split and reorders; every rank then receives
    rank 0's weights, so all ranks hold bit-identical parameters (upstream computes it per shard:
    defect 8, docs/upstream-defects.md). ``saved`` (from a checkpoint) skips the computation. Returns
    rank 0's scores (empty elsewhere)."""
    def on_main() -> Dict[str, np.ndarray]:
        if saved:
            scores = saved
        else:
            start = time.perf_counter()
            batches = (to_tensors(b) for _, b in
                       eval_batches(data.selection, cfg.run.eval_batch_size, 0, 1, data.pad_token_id))
            if cfg.compress.importance_batches:
                batches = (b for i, b in zip(range(cfg.compress.importance_batches), batches))
            heads, neurons = compute_importance(teacher, batches,
                                                lambda logits, y: task_loss(logits, y, data.regression))
            scores = {"head_importance": heads, "neuron_importance": neurons}
            log.info(f"importance over {len(data.selection)} {data.selection_name} examples took "
                     f"{time.perf_counter() - start:.1f}s")
        reorder_heads_and_neurons(teacher, scores["head_importance"], scores["neuron_importance"])
        return scores

    scores = comms.run_on_main(on_main) or {}
    comms.broadcast_parameters(teacher.parameters(), src=0)
    return scores


class BestKeeper:
    """Which evaluation is best, per ``compress.select``; rank 0 writes what is kept. The state is plain
    JSON (saved in checkpoints and DONE.json): {"select", "step", "mean", "widths": {w: metrics+step}}."""

    def __init__(self, ctx: StageContext, supernet: Supernet, state: Optional[dict]):
        self.ctx, self.supernet = ctx, supernet
        self.select = ctx.cfg.compress.select
        self.metric = main_metric_name(ctx.data.task)
        self.root = ctx.path("compress", "best")
        self.state = state or {"select": self.select, "step": None, "mean": None, "widths": {}}

    def offer(self, step: int, results: Dict[float, Dict[str, float]]) -> None:
        widths = self.state["widths"]
        if self.select == "per_width":
            better = [w for w, r in results.items() if improves(r, widths.get(f"{w:g}"), self.metric)]
        else:
            mean = float(np.mean([r[self.metric] for r in results.values()]))
            current = None if self.state["mean"] is None else {self.metric: self.state["mean"]}
            better = list(results) if improves({self.metric: mean}, current, self.metric) else []
        if not better or not is_finite(self.supernet.model):
            return
        for w in better:
            widths[f"{w:g}"] = {**results[w], "step": step}
        if self.select == "supernet":
            self.state.update(step=step, mean=mean)
        self.ctx.comms.run_on_main(lambda: self._save(better))

    def _save(self, widths) -> None:
        tokenizer = tokenizer_of(self.ctx.cfg)
        for w in widths:
            self.supernet.set_width(w)
            save_exported(extract_submodel(self.supernet, w), w, tokenizer, width_dir(self.root, w),
                          inference_model=False)
        if self.select == "supernet":
            atomic_paddle_save(self.supernet.state_dict(), os.path.join(self.root, "supernet.pdparams"))


def compress(ctx: StageContext, checkpoint: Optional[Checkpoint]) -> dict:
    """Returns the completion record: the kept evaluations ("best") and the throughput."""
    cfg, comms, log, data = ctx.cfg, ctx.comms, ctx.log, ctx.data
    ccfg = cfg.compress
    teacher = load_teacher(ctx)
    check_widths(teacher, ccfg.widths)
    check_vocabulary(tokenizer_of(cfg), teacher, teacher_source(cfg))
    check_free_space(cfg, teacher, comms)
    scores = importance_and_reorder(teacher, data, cfg, comms, log, checkpoint.arrays() if checkpoint else None)
    supernet = Supernet(teacher, ccfg.widths)
    if checkpoint:
        supernet.set_state_dict(checkpoint.model_state())
    student_states, teacher_states = HiddenStates(supernet.model), HiddenStates(teacher)
    keeper = BestKeeper(ctx, supernet, checkpoint.extra["best"] if checkpoint else None)

    def on_eval(step: int) -> None:
        supernet.eval()
        results = {}
        with student_states.paused():
            for width in supernet.widths:
                supernet.set_width(width)
                results[width] = metrics_on(data.selection, lambda b: forward(supernet, b), data, cfg, comms)
                log.record(f"compress_eval/w{width:g}", step, results[width])
                log.info(f"compress eval step {step} width {width:g} ({data.selection_name}): "
                         f"{describe(results[width])}")
        keeper.offer(step, results)
        supernet.train()

    precision = Precision(cfg.run.precision)

    def step_fn(batch):
        return supernet_step(supernet, student_states, teacher, teacher_states, batch, supernet.widths,
                             ccfg.lambda_distill, ccfg.lambda_logit, data.regression, precision.backward,
                             inplace_weight=ccfg.inplace_distill, lambda_task=ccfg.lambda_task)

    batches = GlobalBatches(data.train, ccfg.optim.batch_size, cfg.run.seed, comms.rank, comms.world_size,
                            data.pad_token_id, data.pad_to, key="compress.optim.batch_size",
                            group_by_length=cfg.data.group_by_length)
    saver = checkpointer(cfg, NAME, comms)
    saver.arrays = scores
    supernet.train()
    outcome = train(step_fn, named_params=list(supernet.model.named_parameters()), optim=ccfg.optim,
                    batches=batches, comms=comms, log=log, settings=ctx.loop_settings(NAME),
                    hooks=LoopHooks(evaluate=on_eval, checkpointer=saver,
                                    checkpoint_state=lambda: {"best": keeper.state}),
                    resume=resume_from(checkpoint), precision=precision)
    student_states.remove()
    teacher_states.remove()
    comms.run_on_main(lambda: atomic_paddle_save(supernet.state_dict(), ctx.path("compress", "supernet.pdparams")))
    speed = global_throughput(outcome.throughput, comms)
    log.info(f"compress: {speed['samples_per_s']:.1f} samples/s, {speed['tokens_per_s']:.0f} tokens/s (global)")
    return {"best": keeper.state, "throughput": speed, "skipped_steps": outcome.skipped_steps}
