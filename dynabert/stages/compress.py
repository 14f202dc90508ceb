"""Stage 2: importance on the selection split, reorder, then train the width-adaptive supernet with
distillation from the teacher (every width of every batch, one optimizer step).

Selection (``compress.select``): "supernet" keeps the one step with the best mean selection metric over
all widths and cuts every width from it (also saved whole as ``compress/best/supernet.pdparams``);
"per_width" keeps each width's own best step. Rank 0 writes the kept sub-models to
``compress/best/width_W``.
"""
import time
from typing import Dict, Optional

import numpy as np

from dynabert.data.batching import eval_batches, to_tensors
from dynabert.data.task_data import TaskData
from dynabert.model.export import extract_submodel, save_exported
from dynabert.model.importance import compute_importance
from dynabert.model.outputs import HiddenStates, PaddingGradients, forward
from dynabert.model.pretrained import tokenizer_of
from dynabert.model.reorder import reorder_heads_and_neurons
from dynabert.model.supernet import Supernet, check_widths
from dynabert.stages.common import StageContext, describe, load_teacher, teacher_source, width_dir
from dynabert.stages.supernet_training import BestKeeper, finish_training, training_batches
from dynabert.train.checkpoint import Checkpoint
from dynabert.train.evaluation import metrics_on
from dynabert.train.loop import LoopHooks, gradient_buckets, train
from dynabert.train.losses import task_loss
from dynabert.train.precision import Precision
from dynabert.train.preflight import check_free_space, check_vocabulary
from dynabert.train.stage_state import checkpointer, resume_from
from dynabert.train.step import supernet_step, widths_for_step

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
    padding = PaddingGradients(supernet.model)

    def save_widths(widths) -> None:
        tokenizer = tokenizer_of(cfg)
        for w in widths:
            supernet.set_width(w)
            save_exported(extract_submodel(supernet, w), w, tokenizer, width_dir(keeper.root, w), inference_model=False)

    keeper = BestKeeper(ctx, supernet=supernet, root=ctx.path(NAME, "best"), entries="widths",
                        name_of=lambda w: f"{w:g}", save_models=save_widths,
                        state=checkpoint.extra["best"] if checkpoint else None,
                        narrowest=min(supernet.widths), patience=ccfg.optim.patience)

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

    named_params = list(supernet.model.named_parameters())
    overlap = gradient_buckets(comms, named_params, ccfg.optim)

    def step_fn(batch, step):
        widths = widths_for_step(supernet.widths, sampling=ccfg.width_sampling, random_widths=ccfg.sandwich_random,
                                 seed=cfg.run.seed, step=step)
        return supernet_step(supernet, student_states, teacher, teacher_states, batch, widths,
                             ccfg.lambda_distill, ccfg.lambda_logit, data.regression, precision.backward,
                             inplace_weight=ccfg.inplace_distill, lambda_task=ccfg.lambda_task, padding=padding,
                             last_backward=overlap and overlap.armed)

    saver = checkpointer(cfg, NAME, comms, log.info)
    saver.arrays = scores
    supernet.train()
    outcome = train(step_fn, named_params=named_params, optim=ccfg.optim,
                    batches=training_batches(ctx), comms=comms, log=log, settings=ctx.loop_settings(NAME),
                    hooks=LoopHooks(evaluate=on_eval, checkpointer=saver,
                                    checkpoint_state=lambda: {"best": keeper.state}, stop=keeper.patience_exhausted),
                    resume=resume_from(checkpoint), precision=precision, overlap=overlap)
    return finish_training(ctx, NAME, supernet, outcome, keeper, (student_states, teacher_states))
