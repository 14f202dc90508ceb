"""The step `dynabert-bench` measures: the compress stage's own training step, timed by phase.

Nothing is re-typed: the step is ``train_step.supernet_step`` with the arguments the compress stage
passes, then the trainer's ``Optimization`` (the one gradient all-reduce, the finiteness verdict, AdamW,
the schedule), in the order and under the per-step seed of ``trainer.train``. A ``PhaseTimer`` splits it
into teacher forward, student forward+backward per width, gradient all-reduce and optimizer; on a GPU it
synchronises the device at each boundary (only here: training never does).

The weights' values do not change the cost of a step, so the teacher is the configured one
(``model.teacher``) when given, else the base model with a fresh classifier, and importance/reorder
(one-off costs) are skipped. Collectives arrive as an argument (launcher/bench.py): no
paddle.distributed here.
"""
import contextlib
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import paddle

from dynabert.collectives import Collectives
from dynabert.config import Config
from dynabert.data.batching import MEGABATCH, GlobalBatches, to_tensors
from dynabert.data.features import Feature, encode
from dynabert.data.sources import load_split
from dynabert.data.tasks import task_spec
from dynabert.errors import UserError
from dynabert.model import pretrained
from dynabert.model.flops import compress_step_flops
from dynabert.model.outputs import HiddenStates, PaddingGradients
from dynabert.model.pretrained import model_source, tokenizer_of
from dynabert.model.supernet import Supernet, check_widths
from dynabert.train.loop import Optimization, gradient_buckets, step_seed
from dynabert.train.precision import Precision
from dynabert.train.step import supernet_step, widths_for_step

ALL_REDUCE, OPTIMIZER = "all-reduce", "optimizer"


class PhaseTimer:
    """``with timer(name):`` adds the block's seconds to ``seconds[name]``. ``sync`` (a GPU's synchronize)
    runs at both ends, so a phase is charged for its own kernels rather than whatever was queued."""

    def __init__(self, sync: Optional[Callable[[], None]] = None):
        self.sync = sync or (lambda: None)
        self.seconds: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def take(self) -> Dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


def device_sync() -> Optional[Callable[[], None]]:
    """The device's synchronize on a GPU; None on a CPU (its ops finish before they return)."""
    if "gpu" in str(paddle.get_device()):
        return paddle.device.cuda.synchronize
    return None


def peak_memory() -> Dict[str, object]:
    """This process's peak: allocated device memory on a GPU, resident set on a CPU (``bytes``); the peak
    resident set in both cases (``peak_rss_bytes``)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss = int(rss if sys.platform == "darwin" else rss * 1024)
    if "gpu" in str(paddle.get_device()):
        return {"kind": "gpu_max_allocated", "bytes": int(paddle.device.cuda.max_memory_allocated()),
                "peak_rss_bytes": rss}
    return {"kind": "peak_rss", "bytes": rss, "peak_rss_bytes": rss}


# ------------------------------------------------------------------------------------------------
# the workload: the configured task's training rows, else synthetic rows of the given lengths
# ------------------------------------------------------------------------------------------------
@dataclass
class Workload:
    train: Sequence[Feature]
    source: str
    pad_token_id: int
    num_classes: int
    regression: bool


def synthetic_features(n: int, lengths: Tuple[int, int], *, vocab_size: int, cls_id: int, sep_id: int,
                       num_classes: int, regression: bool, seed: int) -> List[Feature]:
    """``n`` rows of random token ids, each of a length drawn uniformly from ``lengths`` (inclusive)."""
    rng = np.random.RandomState(seed)
    low = 1000 if vocab_size > 2000 else 5  # past BERT's [unused] block; a tiny test vocab has 5 specials
    out = []
    for _ in range(n):
        length = int(rng.randint(lengths[0], lengths[1] + 1))
        ids = [cls_id] + rng.randint(low, vocab_size, size=length - 2).tolist() + [sep_id]
        label = float(rng.rand()) if regression else int(rng.randint(0, num_classes))
        out.append(Feature(ids, [0] * length, label))
    return out


def load_workload(cfg: Config, global_batch: int, rows_needed: int, *, synthetic: bool,
                  lengths: Optional[Tuple[int, int]] = None) -> Workload:
    """Enough rows for the steps, and at least ``MEGABATCH`` global batches, so that length grouping
    sorts over as many rows as in training. Real rows come through ``load_split`` as in training (GLUE_DIR,
    download if allowed, SST-2's built-in set); a task without data falls back to synthetic rows."""
    spec = task_spec(cfg)
    tokenizer = tokenizer_of(cfg)
    rows = max(rows_needed, MEGABATCH * global_batch)
    if cfg.data.train_limit:
        rows = min(rows, cfg.data.train_limit)
    why = "--data synthetic"
    if not synthetic:
        try:
            examples, source = load_split(spec, "train", cfg.data.glue_dir, rows, cfg.data.allow_download)
            return Workload(encode(examples, tokenizer, cfg.data.max_seq_len), source, tokenizer.pad_token_id,
                            spec.num_classes, spec.is_regression)
        except UserError as e:
            why = f"no data ({e})"
    span = lengths or (cfg.data.max_seq_len, cfg.data.max_seq_len)
    feats = synthetic_features(max(rows, global_batch), span, vocab_size=len(tokenizer),
                               cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id,
                               num_classes=spec.num_classes, regression=spec.is_regression, seed=cfg.run.seed)
    return Workload(feats, f"synthetic rows of {span[0]}-{span[1]} tokens ({why})", tokenizer.pad_token_id,
                    spec.num_classes, spec.is_regression)


def global_batches(w: Workload, cfg: Config, comms: Collectives) -> Iterator[Dict[str, np.ndarray]]:
    """This rank's batches, epoch after epoch, exactly as the compress stage cuts them: every world size
    sees the same global batches (the order depends on the seed and epoch only)."""
    batches = GlobalBatches(w.train, cfg.compress.optim.batch_size, cfg.run.seed, comms.rank, comms.world_size,
                            w.pad_token_id, cfg.data.max_seq_len if cfg.data.padding == "max_length" else None,
                            key="compress.optim.batch_size", group_by_length=cfg.data.group_by_length)
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def load_teacher(cfg: Config, w: Workload):
    source = cfg.model.teacher or model_source(cfg.model.name_or_path)
    teacher = pretrained.load_model(source, w.num_classes, cfg.model.dropout, seed=cfg.run.seed)
    teacher.eval()
    check_widths(teacher, cfg.compress.widths)
    return teacher


# ------------------------------------------------------------------------------------------------
# the step and its measurement
# ------------------------------------------------------------------------------------------------
class CompressStep:
    """The compress stage's supernet, hooks and optimizer around ``teacher``. Calling it runs one training
    step on a numpy batch and returns the seconds of each phase; the pieces are public so that the
    benchmarks can look between them (gradients before the update)."""

    def __init__(self, teacher, cfg: Config, comms: Collectives, *, regression: bool, steps: int,
                 sync: Optional[Callable[[], None]] = None):
        ccfg = cfg.compress
        self.cfg, self.comms, self.regression = cfg, comms, regression
        self.teacher = teacher
        self.supernet = Supernet(teacher, ccfg.widths)
        self.student_states, self.teacher_states = HiddenStates(self.supernet.model), HiddenStates(teacher)
        self.padding = PaddingGradients(self.supernet.model)
        self.precision = Precision(cfg.run.precision)
        named_params = list(self.supernet.model.named_parameters())
        self.overlap = gradient_buckets(comms, named_params, ccfg.optim)
        self.opt = Optimization(named_params, ccfg.optim, steps, comms, self.precision, self.overlap)
        self.timer = PhaseTimer(sync)
        self.supernet.train()
        self.shape, self.num_classes = self.supernet.shape, int(teacher.config.num_labels or 1)

    def widths_at(self, index: int) -> Tuple[float, ...]:
        """The widths step ``index`` trains (``compress.width_sampling``), as the compress stage draws them."""
        ccfg = self.cfg.compress
        return widths_for_step(self.supernet.widths, sampling=ccfg.width_sampling, random_widths=ccfg.sandwich_random,
                               seed=self.cfg.run.seed, step=index)

    def flops(self, batch: Dict[str, np.ndarray], index: int = 0) -> int:
        """The model FLOPs of step ``index`` on this rank's ``batch`` (dynabert/model/flops.py)."""
        ccfg = self.cfg.compress
        rows, seq_len = batch["input_ids"].shape
        return compress_step_flops(self.shape, widths=self.widths_at(index), batch=int(rows), seq_len=int(seq_len),
                                   num_classes=self.num_classes,
                                   teacher_runs=bool(ccfg.lambda_distill or ccfg.lambda_logit))

    def forward_backward(self, batch: Dict[str, paddle.Tensor], index: int) -> Dict[float, Dict[str, paddle.Tensor]]:
        """As ``trainer.train`` runs ``step_fn``: the step's dropout seed, autocast, then the compress
        stage's ``supernet_step``."""
        ccfg = self.cfg.compress
        paddle.seed(step_seed(self.cfg.run.seed, self.comms.rank, index))
        with self.precision.autocast():
            return supernet_step(self.supernet, self.student_states, self.teacher, self.teacher_states, batch,
                                 self.widths_at(index), ccfg.lambda_distill, ccfg.lambda_logit, self.regression,
                                 self.precision.backward, phase=self.timer, inplace_weight=ccfg.inplace_distill,
                                 lambda_task=ccfg.lambda_task, padding=self.padding,
                                 last_backward=self.overlap and self.overlap.armed)

    def reduce(self):
        with self.timer(ALL_REDUCE):
            return self.opt.reduce()

    def update(self, fused) -> bool:
        with self.timer(OPTIMIZER):
            return self.opt.apply(fused)

    def __call__(self, batch: Dict[str, np.ndarray], index: int) -> Dict[str, float]:
        self.forward_backward(to_tensors(batch), index)
        self.update(self.reduce())
        return self.timer.take()


@dataclass
class StepRecord:
    seconds: float
    phases: Dict[str, float]
    samples: int
    tokens: int          # real tokens (attention mask)
    padded_tokens: int   # what the model computed on
    flops: int = 0       # model FLOPs of this rank's step (0: not counted, e.g. the reference loop)


def measure(step: Callable[[Dict[str, np.ndarray], int], Dict[str, float]],
            batches: Iterator[Dict[str, np.ndarray]], *, warmup: int, steps: int,
            sync: Optional[Callable[[], None]] = None, barrier: Callable[[], None] = lambda: None,
            on_step: Callable[[int, float], None] = lambda i, s: None,
            flops: Callable[[Dict[str, np.ndarray], int], int] = lambda batch, index: 0) -> List[StepRecord]:
    """``warmup`` untimed steps, a barrier (the ranks start the timed steps together), then ``steps``
    timed ones; each timed from before its host-to-device copy to after the optimizer, as the loop does."""
    sync = sync or (lambda: None)
    records = []
    for index in range(warmup + steps):
        if index == warmup:
            barrier()
        batch = next(batches)
        sync()
        start = time.perf_counter()
        phases = step(batch, index)
        sync()
        seconds = time.perf_counter() - start
        on_step(index, seconds)
        if index >= warmup:
            mask = batch["attention_mask"]
            records.append(StepRecord(seconds, phases, int(mask.shape[0]), int(mask.sum()), int(mask.size),
                                      flops(batch, index)))
    return records


def matmul_peak(shapes: Sequence[Tuple[int, int, int]], *, dtype: str = "float32", min_seconds: float = 1.0,
                sync: Optional[Callable[[], None]] = None) -> float:
    """The device's matmul rate on the spot (FLOP/s): ``[M, K] x [K, N]`` for each shape, repeated until
    ``min_seconds``, the best shape's rate. MFU's denominator: what this device, with this process's
    threads and whatever else runs beside it, reaches on the one operation that dominates the step."""
    sync = sync or (lambda: None)
    best = 0.0
    for m, k, n in shapes:
        a, b = paddle.rand([m, k]).astype(dtype), paddle.rand([k, n]).astype(dtype)
        paddle.matmul(a, b)  # warm-up: kernel selection, allocation
        sync()
        reps, start = 0, time.perf_counter()
        while True:
            out = paddle.matmul(a, b)
            reps += 1
            if reps % 4 == 0:
                float(out[0, 0])  # a host read drains the queue (CPU: no-op)
                sync()
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
        best = max(best, 2.0 * m * k * n * reps / elapsed)
    return best


def peak_shapes(shape: Dict[str, int], tokens: int = 2048) -> Dict[str, List[Tuple[int, int, int]]]:
    """A large square matmul, and the model's own projection and FFN shapes over ``tokens`` rows."""
    hidden, ffn = shape["hidden"], shape["ffn"]
    return {"square": [(2048, 2048, 2048)],
            "model": [(tokens, hidden, hidden), (tokens, hidden, ffn), (tokens, ffn, hidden)]}


def rank_report(records: Sequence[StepRecord], comms: Collectives, memory: Dict[str, object]) -> dict:
    """This rank's figures, JSON-able, for rank 0 to gather."""
    return {"rank": comms.rank, "steps": [asdict(r) for r in records], "memory": memory,
            "all_reduce_calls": getattr(comms, "all_reduce_calls", 0),
            "all_reduce_bytes": getattr(comms, "all_reduce_bytes", 0)}
