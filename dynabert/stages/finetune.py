"""Stage 1: fine-tune the teacher on the task (skipped when the user brings one in ``model.teacher``).

Rank 0 keeps the best model by the selection split's metric in ``<out_dir>/teacher``."""
from typing import Optional

from dynabert.data.batching import GlobalBatches
from dynabert.data.metrics import main_metric_name
from dynabert.errors import TrainingDiverged
from dynabert.model import pretrained
from dynabert.model.outputs import PaddingGradients, forward
from dynabert.model.pretrained import model_source, tokenizer_of
from dynabert.stages.common import StageContext, describe, improves, is_finite
from dynabert.train.checkpoint import Checkpoint
from dynabert.train.evaluation import metrics_on
from dynabert.train.loop import LoopHooks, global_throughput, gradient_buckets, train
from dynabert.train.precision import Precision
from dynabert.train.preflight import check_free_space, check_vocabulary
from dynabert.train.stage_state import checkpointer, resume_from
from dynabert.train.step import finetune_step

NAME = "finetune"


def finetune(ctx: StageContext, checkpoint: Optional[Checkpoint]) -> dict:
    """Returns the stage's completion record: the best selection metrics and the throughput."""
    cfg, comms, log, data = ctx.cfg, ctx.comms, ctx.log, ctx.data
    metric = main_metric_name(data.spec)
    teacher_dir = ctx.path("teacher")
    source = model_source(cfg.model.name_or_path)
    model = pretrained.load_model(source, data.num_classes, cfg.model.dropout, seed=cfg.run.seed)
    tokenizer = tokenizer_of(cfg)
    check_vocabulary(tokenizer, model, source)
    check_free_space(cfg, model, comms)
    comms.broadcast_parameters(model.parameters())  # one initial classifier for every rank
    best = checkpoint.extra["best"] if checkpoint else {"metrics": None}
    if checkpoint:
        model.set_state_dict(checkpoint.model_state())

    def on_eval(step: int) -> None:
        model.eval()
        result = metrics_on(data.selection, lambda b: forward(model, b), data, cfg, comms)
        model.train()
        log.record("finetune_eval", step, result)
        log.info(f"finetune eval step {step} ({data.selection_name}): {describe(result)}")
        if improves(result, best["metrics"], metric) and is_finite(model):
            best["metrics"] = {**result, "step": step}
            comms.run_on_main(lambda: pretrained.save_model(model, tokenizer, teacher_dir))

    batches = GlobalBatches(data.train, cfg.finetune.batch_size, cfg.run.seed, comms.rank, comms.world_size,
                            data.pad_token_id, data.pad_to, key="finetune.batch_size",
                            group_by_length=cfg.data.group_by_length)
    model.train()
    precision = Precision(cfg.run.precision)
    saver = checkpointer(cfg, NAME, comms, log.info)
    padding = PaddingGradients(model)
    named_params = list(model.named_parameters())
    overlap = gradient_buckets(comms, named_params, cfg.finetune)
    outcome = train(lambda b, step: finetune_step(model, b, data.regression, precision.backward, padding=padding,
                                            last_backward=overlap and overlap.armed),
                    named_params=named_params, optim=cfg.finetune, batches=batches,
                    comms=comms, log=log, settings=ctx.loop_settings(NAME),
                    hooks=LoopHooks(evaluate=on_eval, checkpointer=saver, checkpoint_state=lambda: {"best": best}),
                    resume=resume_from(checkpoint), precision=precision, overlap=overlap)
    if best["metrics"] is None:
        raise TrainingDiverged("finetune: no finite model to keep (every evaluation was non-finite)")
    comms.barrier()  # rank 0 has written the best teacher
    speed = global_throughput(outcome.throughput, comms)
    log.info(f"finetune: best {data.selection_name} {metric} {best['metrics'][metric]:.4f}; "
             f"{speed['samples_per_s']:.1f} samples/s (global)")
    return {"metrics": best["metrics"], "throughput": speed, "skipped_steps": outcome.skipped_steps}
