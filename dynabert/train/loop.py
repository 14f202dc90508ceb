"""The training loop shared by fine-tuning and supernet training. Read it top to bottom.

Per optimizer step: forward+backward (every width, inside ``step_fn``), ONE gradient all-reduce, a
finiteness verdict, clip, AdamW step, learning-rate step. Evaluation and checkpoints at their intervals.

Host syncs (each one drains a GPU's queue): one per step, the finiteness verdict. Loss values stay
tensors until a logging step turns them into floats.
"""
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
from paddlenlp.transformers import LinearDecayWithWarmup

from dynabert import faults
from dynabert.collectives import Collectives, GradientBuckets
from dynabert.config import OptimConfig
from dynabert.data.batching import GlobalBatches, to_tensors
from dynabert.errors import TrainingDiverged
from dynabert.train.checkpoint import Checkpointer, Position
from dynabert.train.precision import Precision
from dynabert.train.run_log import RunLog, progress

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
    stopped_early: Optional[int] = None  # the step at which LoopHooks.stop ended training


@dataclass(frozen=True)
class LoopSettings:
    """How the loop behaves; from the run config."""
    tag: str                       # "finetune" / "compress": log prefix and metrics kind
    seed: int
    log_every: int = 10
    show_progress: bool = True
    on_nonfinite: str = "stop"     # "stop" (exit 3) or "skip" the update
    max_consecutive_skips: int = 50


@dataclass
class LoopHooks:
    """What the stage does at the loop's milestones."""
    evaluate: Callable[[int], None] = lambda step: None
    checkpointer: Optional[Checkpointer] = None
    checkpoint_state: Callable[[], dict] = dict  # the stage's own state (best-so-far) saved with a checkpoint
    # After each evaluation: a reason to end training now (every rank holds the same metrics, so every rank
    # reaches the same answer), or None to go on.
    stop: Callable[[], Optional[str]] = lambda: None


@dataclass
class Resume:
    """Where a checkpoint left off; the model weights are restored by the caller."""
    position: Position
    optimizer_state: dict
    precision_state: Optional[dict] = None


def gradient_buckets(comms: Collectives, named_params: Sequence[Tuple[str, paddle.Tensor]],
                     optim: OptimConfig) -> Optional[GradientBuckets]:
    """``optim.overlap_allreduce``: what reduces the gradients during the step's last backward (the step
    function arms it, ``train(overlap=)`` finishes it); else None."""
    if not optim.overlap_allreduce:
        return None
    return comms.gradient_buckets([p for _, p in named_params], bucket_bytes=int(optim.allreduce_bucket_mb * 2 ** 20),
                                  dtype=optim.allreduce_dtype)


def step_seed(seed: int, rank: int, step: int) -> int:
    """The dropout seed of one step on one rank: a resumed run draws exactly the masks it would have."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def gradients_finite(params: Sequence[paddle.Tensor],
                     fused: Union[None, paddle.Tensor, Sequence[paddle.Tensor]] = None) -> bool:
    """After the all-reduce every rank holds the same gradients, so every rank reaches the same verdict
    without another collective (a NaN on one rank is a NaN everywhere). One host sync: on the fused
    buffer (or buckets) when the all-reduce made them, else on the sum of per-gradient sums (NaN and Inf
    propagate)."""
    if isinstance(fused, paddle.Tensor):
        return bool(paddle.isfinite(fused).all())
    if fused:
        return bool(paddle.stack([paddle.isfinite(b).all() for b in fused]).all())
    grads = [p.grad for p in params if p.grad is not None]
    return bool(paddle.isfinite(paddle.add_n([g.sum() for g in grads]))) if grads else True


class SkipPolicy:
    """What a non-finite step means. fp32: stop (exit 3) or skip. fp16: a skipped step is how dynamic
    loss scaling finds its scale, so skips are normal, but a scale that keeps collapsing never recovers:
    after ``max_consecutive`` skipped steps in a row the run stops either way."""

    def __init__(self, *, on_nonfinite: str, overflow_is_normal: bool, max_consecutive: int, tag: str):
        self.on_nonfinite, self.overflow_is_normal = on_nonfinite, overflow_is_normal
        self.max_consecutive, self.tag = max_consecutive, tag
        self.consecutive = 0
        self.total = 0

    def record(self, finite: bool, step: int) -> None:
        """``step`` is 1-based. Raises TrainingDiverged when the run must stop."""
        if finite:
            self.consecutive = 0
            return
        if self.on_nonfinite == "stop" and not self.overflow_is_normal:
            raise TrainingDiverged(f"{self.tag}: non-finite loss or gradient at step {step}; nothing was saved "
                                   "from it (set run.on_nonfinite=skip to skip such steps)")
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.max_consecutive:
            raise TrainingDiverged(f"{self.tag}: {self.consecutive} consecutive steps with non-finite gradients "
                                   f"up to step {step} (run.max_consecutive_skips); the run has diverged")


class Optimization:
    """One optimizer step's pieces after backward, shared by the loop and the benchmarks: the gradient
    all-reduce, the finiteness verdict, the update, the schedule."""

    def __init__(self, named_params: Sequence[Tuple[str, paddle.Tensor]], optim: OptimConfig, steps: int,
                 comms: Collectives, precision: Precision, overlap: Optional[GradientBuckets] = None):
        self.params = [p for _, p in named_params]
        self.comms, self.precision = comms, precision
        self.allreduce_dtype, self.overlap = optim.allreduce_dtype, overlap
        self.optimizer, self.schedule = make_optimizer(named_params, optim, steps)
        # Paddle keys optimizer state by parameter.name, which comes from process-global counters
        # (``super_embedding_0.w_0``): a restarted process that skips earlier stages builds the same model
        # under other names. Checkpoints key it by the parameter's place in the model instead.
        self._by_structure = {p.name: name for name, p in named_params}
        self._by_name = {name: p.name for name, p in named_params}

    def state_dict(self) -> dict:
        """The optimizer's state keyed by structure: ``<structural name>@<accumulator>`` (e.g.
        ``bert.embeddings.word_embeddings.fn.weight@moment1_0``); the rest (the schedule) as it is."""
        return _rekey(self.optimizer.state_dict(), self._by_structure, "_", "@")

    def load_state_dict(self, state: dict) -> None:
        """``state_dict``'s output, from this process or another (older checkpoints, keyed by
        parameter.name, load as they are)."""
        self.optimizer.set_state_dict(_rekey(state, self._by_name, "@", "_"))

    def reduce(self) -> Union[None, paddle.Tensor, List[paddle.Tensor]]:
        """The only gradient communication of the step; returns the fused buffer (or the buckets, when
        ``overlap`` started them during the last backward) if one was made."""
        if self.overlap is not None:
            return self.overlap.finish()
        return self.comms.all_reduce_gradients(self.params, self.allreduce_dtype)

    def apply(self, fused: Union[None, paddle.Tensor, List[paddle.Tensor]]) -> bool:
        """Update if the gradients are finite; returns whether it did. A skipped step holds the learning-
        rate schedule, as Hugging Face's Trainer does after an fp16 overflow."""
        self.precision.unscale(self.optimizer)   # fp16: true gradients, before the verdict and clipping
        finite = gradients_finite(self.params, fused)
        self.precision.step(self.optimizer, finite)
        if finite:
            self.schedule.step()
        self.optimizer.clear_grad()
        return finite


def train(step_fn: Callable[[Dict[str, paddle.Tensor], int], Dict[str, paddle.Tensor]], *,
          named_params: Sequence[Tuple[str, paddle.Tensor]], optim: OptimConfig, batches: GlobalBatches,
          comms: Collectives, log: RunLog, settings: LoopSettings, hooks: Optional[LoopHooks] = None,
          resume: Optional[Resume] = None, precision: Optional[Precision] = None,
          overlap: Optional[GradientBuckets] = None) -> TrainResult:
    """``step_fn(batch, step)`` runs forward and backward (``step``: the 0-based optimizer step, agreed by every
    rank) and returns its loss terms as tensors (flat, or
    {width: {term: tensor}}); they become floats only on logging steps."""
    hooks = hooks or LoopHooks()
    tag = settings.tag
    steps = total_steps(optim, len(batches))
    precision = precision or Precision("fp32")
    opt = Optimization(named_params, optim, steps, comms, precision, overlap)
    skips = SkipPolicy(on_nonfinite=settings.on_nonfinite, overflow_is_normal=precision.handles_overflow,
                       max_consecutive=settings.max_consecutive_skips, tag=tag)
    pos = Position()
    if resume is not None:
        opt.load_state_dict(resume.optimizer_state)  # moments and the learning-rate schedule
        precision.load_state_dict(resume.precision_state or {})
        pos = Position(**vars(resume.position))
        log.info(f"{tag}: resuming at step {pos.step} (epoch {pos.epoch}, batch {pos.step_in_epoch})")
    result = TrainResult(steps=steps)
    bar = progress(range(pos.step, steps), settings.show_progress and comms.is_main, desc=tag)
    bar_iter = iter(bar)
    last_eval = pos.step if resume is not None else -1
    log.info(f"{tag}: {steps} steps, {len(batches)} per epoch, global batch {batches.global_batch} "
             f"({batches.local_batch} per rank x {comms.world_size})")
    while pos.step < steps and result.stopped_early is None:
        for batch in batches.epoch(pos.epoch, start_step=pos.step_in_epoch):
            start = time.perf_counter()
            paddle.seed(step_seed(settings.seed, comms.rank, pos.step))
            with precision.autocast():
                losses = step_fn(to_tensors(batch), pos.step)  # forward + backward of every width
            finite = opt.apply(opt.reduce())
            skips.record(finite, pos.step + 1)
            if not finite:
                log.info(f"{tag}: non-finite gradient at step {pos.step + 1}; update skipped")
            elapsed = time.perf_counter() - start
            pos.step += 1
            pos.step_in_epoch += 1
            next(bar_iter, None)

            tokens = int(batch["attention_mask"].sum())  # numpy: no device sync
            result.throughput.samples += len(batch["labels"])
            result.throughput.tokens += tokens
            result.throughput.seconds += elapsed
            if pos.step % settings.log_every == 0 or pos.step == steps:
                values = mean_over_ranks(losses_to_floats(losses), comms)  # the global batch's loss
                result.losses.append({"step": pos.step, **values})
                lr = opt.optimizer.get_lr()
                log.record(tag, pos.step, {**values, "lr": lr, "step_seconds": elapsed})
                log.info(f"{tag} step {pos.step}/{steps} epoch {pos.epoch} lr {lr:.2e} "
                         + " ".join(f"{k} {v:.4f}" for k, v in sorted(values.items()))
                         + f" | {len(batch['labels']) / elapsed:.1f} samples/s {tokens / elapsed:.0f} tokens/s")
            # Evaluate before this step's checkpoint (the epoch's last step too, with eval_every 0), so a
            # run resumed from that checkpoint never needs the evaluation again and keeps the same best.
            epoch_end = pos.step_in_epoch == len(batches)
            if (optim.eval_every and pos.step % optim.eval_every == 0) or (epoch_end and not optim.eval_every):
                hooks.evaluate(pos.step)
                last_eval = pos.step
                reason = hooks.stop()
                if reason:
                    log.info(f"{tag}: stopping at step {pos.step} of {steps}: {reason}")
                    result.stopped_early = pos.step
                    break
            saver = hooks.checkpointer
            if saver is not None and saver.enabled and pos.step < steps and saver.due(pos.step, comms):
                _checkpoint(saver, Position(**vars(pos)), named_params=named_params, opt=opt, hooks=hooks,
                            precision=precision, comms=comms, log=log, tag=tag)
            faults.fire("step", stage=tag, rank=comms.rank, step=pos.step)
            if pos.step >= steps:
                break
        else:  # the epoch ran out (not the step budget): the next one starts from its first batch
            pos.epoch += 1
            pos.step_in_epoch = 0
    if last_eval != pos.step:
        hooks.evaluate(pos.step)
    if hooks.checkpointer is not None:
        comms.run_on_main(hooks.checkpointer.wait)  # the last checkpoint is complete before the stage ends
    if hasattr(bar, "close"):
        bar.close()
    result.skipped_steps = skips.total
    return result


def _checkpoint(saver: Checkpointer, at: Position, *, named_params, opt: Optimization, hooks: LoopHooks,
                precision: Precision, comms: Collectives, log: RunLog, tag: str) -> None:
    """Rank 0 copies the state to host memory and hands it to a writer thread; the others wait on the
    store meanwhile (waiting for the previous write could outlast gloo's 30 s collective timeout)."""
    saved = comms.run_on_main(lambda: saver.save(
        at, lambda: _model_state(named_params), opt.state_dict,
        {**hooks.checkpoint_state(), "precision": precision.state_dict()}))
    if faults.configured():  # a test kills a rank after this checkpoint: it must be on disk by then
        comms.run_on_main(saver.wait)
    if saved:
        log.info(f"{tag}: checkpoint {saved} (writing in the background)")


def _rekey(state: dict, names: Dict[str, str], old_sep: str, new_sep: str) -> dict:
    """Rename every key ``<a><old_sep><accumulator>`` whose ``<a>`` is in ``names`` to
    ``names[a]<new_sep><accumulator>``; ``master_weights`` (fp16, keyed by name alone) likewise. The longest
    matching name wins, so ``linear_1.w_0`` never takes ``linear_1.w_0_x``'s state by prefix."""
    ordered = sorted(names, key=len, reverse=True)

    def rename(key: str) -> str:
        for name in ordered:
            if key.startswith(name + old_sep):
                return names[name] + new_sep + key[len(name) + len(old_sep):]
        return key

    out = {}
    for key, value in state.items():
        if key == "master_weights" and isinstance(value, dict):
            out[key] = {names.get(k, k): v for k, v in value.items()}
        else:
            out[rename(key)] = value
    return out


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
    """{width: {term: tensor}} or {term: tensor} -> flat {"w0.5/loss": float} for logging. One host
    sync for all values together (stacked), not one per value."""
    flat = {}
    for key, value in losses.items():
        if isinstance(value, dict):
            flat.update({f"w{key}/{term}": t for term, t in value.items()})
        else:
            flat[key] = value
    tensors = [k for k, v in flat.items() if isinstance(v, paddle.Tensor)]
    if tensors:
        values = paddle.stack([flat[k].astype("float32").reshape([]) for k in tensors]).numpy()
        flat.update({k: float(v) for k, v in zip(tensors, values)})
    return {k: float(v) for k, v in flat.items()}
