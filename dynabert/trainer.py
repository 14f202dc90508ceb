"""The training loop shared by fine-tuning and supernet training. Read it top to bottom.

Per optimizer step: forward+backward (every width, inside ``step_fn``), ONE gradient all-reduce,
clip, AdamW step, learning-rate step. Evaluation at the configured interval.
"""
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import paddle
from paddlenlp.transformers import LinearDecayWithWarmup

from dynabert.batching import GlobalBatches, to_tensors
from dynabert.collectives import Collectives
from dynabert.config import OptimConfig
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

    def as_dict(self) -> Dict[str, float]:
        s = max(self.seconds, 1e-9)
        return {"samples_per_s": self.samples / s, "tokens_per_s": self.tokens / s}


@dataclass
class TrainResult:
    steps: int
    losses: List[Dict[str, float]] = field(default_factory=list)  # global means, on logging steps
    throughput: Throughput = field(default_factory=Throughput)


def train(step_fn: Callable[[Dict[str, paddle.Tensor]], Dict[str, float]],
          named_params: Sequence[Tuple[str, paddle.Tensor]], optim: OptimConfig, batches: GlobalBatches,
          comms: Collectives, log: RunLog, evaluate: Callable[[int], None], tag: str,
          log_every: int = 10, show_progress: bool = True) -> TrainResult:
    """``step_fn(batch)`` runs forward and backward and returns its loss values as floats;
    ``evaluate(step)`` is called at the configured interval and at the end."""
    steps = total_steps(optim, len(batches))
    optimizer, schedule = make_optimizer(named_params, optim, steps)
    params = [p for _, p in named_params]
    result = TrainResult(steps=steps)
    bar = progress(range(steps), show_progress and comms.is_main, desc=tag)
    bar_iter = iter(bar)
    step, epoch, last_eval = 0, 0, -1
    log.info(f"{tag}: {steps} steps, {len(batches)} per epoch, global batch {batches.global_batch} "
             f"({batches.local_batch} per rank x {comms.world_size})")
    while step < steps:
        for batch in batches.epoch(epoch):
            start = time.perf_counter()
            losses = step_fn(to_tensors(batch))        # forward + backward of every width
            comms.all_reduce_gradients(params)         # the only gradient communication of the step
            optimizer.step()                           # (gradient clipping happens inside)
            schedule.step()
            optimizer.clear_grad()
            elapsed = time.perf_counter() - start
            step += 1
            next(bar_iter, None)

            tokens = int(batch["attention_mask"].sum())
            result.throughput.samples += len(batch["labels"])
            result.throughput.tokens += tokens
            result.throughput.seconds += elapsed
            if step % log_every == 0 or step == steps:
                losses = mean_over_ranks(losses, comms)  # what the global batch saw, as one process would
                result.losses.append({"step": step, **losses})
                lr = optimizer.get_lr()
                log.record(tag, step, {**losses, "lr": lr, "step_seconds": elapsed})
                log.info(f"{tag} step {step}/{steps} epoch {epoch} lr {lr:.2e} "
                         + " ".join(f"{k} {v:.4f}" for k, v in sorted(losses.items()))
                         + f" | {len(batch['labels']) / elapsed:.1f} samples/s {tokens / elapsed:.0f} tokens/s")
            if optim.eval_every and step % optim.eval_every == 0:
                evaluate(step)
                last_eval = step
            if step >= steps:
                break
        epoch += 1
        if last_eval != step and (not optim.eval_every or step >= steps):
            evaluate(step)
            last_eval = step
    if hasattr(bar, "close"):
        bar.close()
    return result


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
