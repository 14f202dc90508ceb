"""The training loop shared by fine-tuning and supernet training. Read it top to bottom.

Per optimizer step: forward+backward (every width, inside ``step_fn``), ONE gradient all-reduce,
clip, AdamW step, learning-rate step. Evaluation at the configured interval.
"""
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle
from paddlenlp.transformers import LinearDecayWithWarmup

from dynabert.batching import GlobalBatches, to_tensors
from dynabert.checkpoint import Checkpointer, Position
from dynabert.collectives import Collectives
from dynabert.config import OptimConfig
from dynabert.errors import TrainingDiverged
from dynabert.precision import Precision
from dynabert.run_log import RunLog, progress

_NO_DECAY = ("bias", "norm")  # biases and LayerNorm parameters take no weight decay, as in BERT


def total_steps(optim: OptimConfig, steps_per_epoch: int) -> int:
    steps = math.ceil(optim.epochs * steps_per_epoch)
    return min(steps, optim.max_steps) if optim.max_steps else steps


def make_optimizer(named_params: Sequence[Tuple[str, paddle.Tensor]], optim: OptimConfig, steps: int):
    decay = {p.name for n, p in named_params if not any(k in n for k in _NO_DECAY)}
    schedule = LinearDecayWithWarmup(optim.learning_rate, steps, optim.warmup_ratio)
    clip = paddle.nn.ClipGradByGlobalNorm(optim.max_grad_norm) if optim.max_grad_norm > 0 else None
    optimizer = paddle.optimizer.AdamW(learning_rate=schedule, parameters=[p for _, p in named_params],
                                       weight_decay=optim.weight_decay, grad_clip=clip,
                                       apply_decay_param_fun=lambda name: name in decay)
    return optimizer, schedule


@dataclass
class Throughput:
    """This rank's counts; the global figure sums them over ranks."""
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class TrainResult:
    steps: int
    losses: List[Dict[str, float]] = field(default_factory=list)  # global means, on logging steps
    throughput: Throughput = field(default_factory=Throughput)
    skipped_steps: int = 0


def step_seed(seed: int, rank: int, step: int) -> int:
    """The dropout seed of one step on one rank: a resumed run draws exactly the masks it would have."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def gradients_finite(params: Sequence[paddle.Tensor]) -> bool:
    """After the all-reduce every rank holds the same gradients, so every rank reaches the same verdict
    without another collective (a NaN on one rank is a NaN everywhere)."""
    grads = [p.grad for p in params if p.grad is not None]
    return bool(paddle.stack([paddle.isfinite(g).all() for g in grads]).all()) if grads else True


@dataclass
class Resume:
    """Where a checkpoint left off; the model weights are restored by the caller."""
    position: Position
    optimizer_state: dict


def train(step_fn: Callable[[Dict[str, paddle.Tensor]], Dict[str, float]],
          named_params: Sequence[Tuple[str, paddle.Tensor]], optim: OptimConfig, batches: GlobalBatches,
          comms: Collectives, log: RunLog, evaluate: Callable[[int], None], tag: str, seed: int,
          log_every: int = 10, show_progress: bool = True, on_nonfinite: str = "stop",
          checkpointer: Optional[Checkpointer] = None, checkpoint_state: Callable[[], dict] = dict,
          resume: Optional[Resume] = None, precision: Optional[Precision] = None) -> TrainResult:
    """``step_fn(batch)`` runs forward and backward and returns its loss values as floats;
    ``evaluate(step)`` is called at the configured interval and at the end; ``checkpoint_state()``
    returns the stage's own state (best-so-far) to store with each checkpoint."""
    steps = total_steps(optim, len(batches))
    precision = precision or Precision("fp32")
    optimizer, schedule = make_optimizer(named_params, optim, steps)
    params = [p for _, p in named_params]
    pos = Position()
    if resume is not None:
        optimizer.set_state_dict(resume.optimizer_state)  # moments and the learning-rate schedule
        pos = Position(**vars(resume.position))
        log.info(f"{tag}: resuming at step {pos.step} (epoch {pos.epoch}, batch {pos.step_in_epoch})")
    result = TrainResult(steps=steps)
    bar = progress(range(pos.step, steps), show_progress and comms.is_main, desc=tag)
    bar_iter = iter(bar)
    last_eval = pos.step if resume is not None else -1
    log.info(f"{tag}: {steps} steps, {len(batches)} per epoch, global batch {batches.global_batch} "
             f"({batches.local_batch} per rank x {comms.world_size})")
    while pos.step < steps:
        for batch in batches.epoch(pos.epoch, start_step=pos.step_in_epoch):
            start = time.perf_counter()
            paddle.seed(step_seed(seed, comms.rank, pos.step))
            with precision.autocast():
                losses = step_fn(to_tensors(batch))    # forward + backward of every width
            comms.all_reduce_gradients(params)         # the only gradient communication of the step
            if precision.handles_overflow or gradients_finite(params):
                precision.step(optimizer)              # (gradient clipping happens inside)
            elif on_nonfinite == "stop":
                raise TrainingDiverged(f"{tag}: non-finite loss or gradient at step {pos.step + 1}; nothing "
                                       "was saved from it (set run.on_nonfinite=skip to skip such steps)")
            else:
                log.info(f"{tag}: non-finite gradient at step {pos.step + 1}; update skipped")
                result.skipped_steps += 1
            schedule.step()
            optimizer.clear_grad()
            elapsed = time.perf_counter() - start
            pos.step += 1
            pos.step_in_epoch += 1
            next(bar_iter, None)

            tokens = int(batch["attention_mask"].sum())
            result.throughput.samples += len(batch["labels"])
            result.throughput.tokens += tokens
            result.throughput.seconds += elapsed
            if pos.step % log_every == 0 or pos.step == steps:
                losses = mean_over_ranks(losses, comms)  # what the global batch saw, as one process would
                result.losses.append({"step": pos.step, **losses})
                lr = optimizer.get_lr()
                log.record(tag, pos.step, {**losses, "lr": lr, "step_seconds": elapsed})
                log.info(f"{tag} step {pos.step}/{steps} epoch {pos.epoch} lr {lr:.2e} "
                         + " ".join(f"{k} {v:.4f}" for k, v in sorted(losses.items()))
                         + f" | {len(batch['labels']) / elapsed:.1f} samples/s {tokens / elapsed:.0f} tokens/s")
            if optim.eval_every and pos.step % optim.eval_every == 0:
                evaluate(pos.step)
                last_eval = pos.step
            if checkpointer is not None and checkpointer.enabled and pos.step < steps \
                    and checkpointer.due(pos.step):
                saved = checkpointer.save(pos, _model_state(named_params), optimizer.state_dict(),
                                          checkpoint_state())
                if saved:
                    log.info(f"{tag}: checkpoint {saved}")
            if pos.step >= steps:
                break
        else:  # the epoch ran out (not the step budget): the next one starts from its first batch
            pos.epoch += 1
            pos.step_in_epoch = 0
            if last_eval != pos.step and not optim.eval_every:
                evaluate(pos.step)
                last_eval = pos.step
    if last_eval != pos.step:
        evaluate(pos.step)
    if hasattr(bar, "close"):
        bar.close()
    return result


def _model_state(named_params) -> Dict[str, np.ndarray]:
    return {name: p.numpy() for name, p in named_params}


def mean_over_ranks(values: Dict[str, float], comms: Collectives) -> Dict[str, float]:
    """Each rank's loss is the mean over its equal slice of the global batch, so the mean over ranks is
    the global-batch loss. One small gather, only on logging steps."""
    if comms.world_size == 1:
        return values
    parts = comms.all_gather_object(values)
    return {k: sum(p[k] for p in parts) / len(parts) for k in values}


def global_throughput(local: Throughput, comms: Collectives) -> Dict[str, float]:
    """Samples and tokens of all ranks over the slowest rank's time: what the job achieved."""
    parts = comms.all_gather_object((local.samples, local.tokens, local.seconds))
    seconds = max(max(p[2] for p in parts), 1e-9)
    return {"samples_per_s": sum(p[0] for p in parts) / seconds,
            "tokens_per_s": sum(p[1] for p in parts) / seconds,
            "per_rank_samples_per_s": [p[0] / max(p[2], 1e-9) for p in parts]}


def losses_to_floats(losses: Dict) -> Dict[str, float]:
    """{width: {term: tensor}} or {term: tensor} -> flat {"w0.5/loss": float} for logging."""
    flat = {}
    for key, value in losses.items():
        if isinstance(value, dict):
            for term, t in value.items():
                flat[f"w{key}/{term}"] = float(np.asarray(t.numpy() if hasattr(t, "numpy") else t))
        else:
            flat[key] = float(np.asarray(value.numpy() if hasattr(value, "numpy") else value))
    return flat
