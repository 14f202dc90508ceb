"""The task registry: which files a task has, which columns hold its text and label, its labels and metric.

Every reader, the cache and the metrics take a ``TaskSpec`` looked up once and passed on: ``task_spec(cfg)``
for a run (a GLUE task by name, or the user's own files, ``data.task: custom``, built from ``data.custom``),
``get_task(name)`` for a GLUE task.
"""
import hashlib
import json
import os
from dataclasses import dataclass

from dynabert.config import CUSTOM_TASK, Config, CustomDataConfig, custom_format
from dynabert.errors import UserError


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's files are and how to read them.

    Columns are named by the file's header line (a JSON-lines file: by each object's keys); ``columns``
    names them for header-less files (CoLA). ``labels`` is None for regression (STS-B), whose label is a
    float. A GLUE task's ``files`` are names under ``GLUE_DIR/<dir_name>``; custom data (``dir_name`` None)
    has the paths of the user's files, in ``format``.
    """

    name: str  # canonical, as PaddleNLP spells it ("sst-2"); "custom" for the user's own files
    dir_name: str | None  # directory under GLUE_DIR ("SST-2"); None: ``files`` are paths
    files: dict  # split -> file name (GLUE) or absolute path (custom)
    text_a: str
    text_b: str | None
    label: str
    labels: tuple | None
    metric: str  # "accuracy" | "accuracy_f1" | "mcc" | "pearson_spearman", see dynabert.metrics
    main_metric: str  # the key of compute_metrics' result that selects the best model
    columns: tuple | None = None  # names for a file without a header line
    format: str = "glue"  # "glue" (GLUE's TSV) | "csv" | "tsv" | "jsonl": which reader reads the files

    @property
    def is_custom(self) -> bool:
        return self.dir_name is None

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_classes(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def dev_splits(self) -> tuple:
        return tuple(s for s in self.files if s != "train")

    def summary(self) -> dict:
        """What a model's inputs and outputs mean, for its metadata: the task, its text columns, its labels
        (output i is labels[i]; None: one regression output) and the main metric."""
        return {"name": self.name, "text_columns": [self.text_a, self.text_b],
                "labels": None if self.labels is None else list(self.labels), "metric": self.main_metric}

    @property
    def cache_prefix(self) -> str:
        """The corpus cache's directory names start with this: a GLUE task's name, or for custom data
        "custom-" and 10 hex digits of its reading settings and files, so two datasets can share a cache_dir
        without rebuilding each other's caches."""
        if not self.is_custom:
            return self.name
        blob = json.dumps({"identity": self.identity(), "files": self.files}, sort_keys=True, default=str)
        return f"custom-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"

    def identity(self):
        """What decides the rows read from a file besides its bytes (the corpus cache fingerprints it): a
        GLUE task's name (this registry fixes the rest), or every reading setting of custom data."""
        if not self.is_custom:
            return self.name
        return {"name": self.name, "format": self.format, "text_a": self.text_a, "text_b": self.text_b,
                "label": self.label, "labels": None if self.labels is None else list(self.labels)}


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_STD = {"train": "train.tsv", "dev": "dev.tsv"}

# Main metrics follow PaddleNLP's GLUE metrics, whose first value is what its examples select on:
# accuracy for MRPC/QQP (F1 is reported too), Pearson for STS-B (Spearman too), MCC for CoLA.
TASKS = {
    t.name: t
    for t in (
        TaskSpec("sst-2", "SST-2", _STD, "sentence", None, "label", _BINARY, "accuracy", "accuracy"),
        TaskSpec("cola", "CoLA", _STD, "sentence", None, "label", _BINARY, "mcc", "mcc",
                 columns=("source", "label", "notes", "sentence")),
        TaskSpec("mrpc", "MRPC", _STD, "#1 String", "#2 String", "Quality", _BINARY, "accuracy_f1", "accuracy"),
        TaskSpec("sts-b", "STS-B", _STD, "sentence1", "sentence2", "score", None, "pearson_spearman", "pearson"),
        TaskSpec("qqp", "QQP", _STD, "question1", "question2", "is_duplicate", _BINARY, "accuracy_f1", "accuracy"),
        TaskSpec("mnli", "MNLI",
                 {"train": "train.tsv", "dev_matched": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv"},
                 "sentence1", "sentence2", "gold_label", ("contradiction", "entailment", "neutral"),
                 "accuracy", "accuracy"),
        TaskSpec("qnli", "QNLI", _STD, "question", "sentence", "label", _NLI2, "accuracy", "accuracy"),
        TaskSpec("rte", "RTE", _STD, "sentence1", "sentence2", "label", _NLI2, "accuracy", "accuracy"),
    )
}


def _normalise(name: str) -> str:
    return "".join(c for c in str(name).lower() if c.isalnum())


_ALIASES = {_normalise(n): n for n in TASKS}


def get_task(task: str) -> TaskSpec:
    """The spec of a GLUE task; case, '-' and '_' are ignored ("SST-2", "sst2", "sts_b"). A TaskSpec is
    returned as it is (custom data has no name to look up: ``task_spec(cfg)``)."""
    if isinstance(task, TaskSpec):
        return task
    canonical = _ALIASES.get(_normalise(task))
    if canonical is None:
        if _normalise(task) == CUSTOM_TASK:
            raise UserError("task custom is described by a config's data.custom section, not by its name")
        raise UserError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}, or custom (your own files)")
    return TASKS[canonical]


# data.custom.metric -> (TaskSpec.metric, TaskSpec.main_metric)
_CUSTOM_METRICS = {"accuracy": ("accuracy", "accuracy"), "f1": ("accuracy_f1", "f1"), "mcc": ("mcc", "mcc"),
                   "pearson_spearman": ("pearson_spearman", "pearson")}
# The config key that names each of a custom task's files, for error messages.
CUSTOM_KEYS = {"train": "data.custom.train_file", "dev": "data.custom.eval_file"}


def task_spec(cfg: Config) -> TaskSpec:
    """The run's task: ``data.task`` looked up in the registry, or (``custom``) built from ``data.custom``,
    whose files are taken relative to the working directory. Look it up once and pass it on."""
    if not cfg.data.is_custom:
        return get_task(cfg.data.task)
    return custom_task(cfg.data.custom)


def custom_task(c: CustomDataConfig) -> TaskSpec:
    """The TaskSpec of the user's own files (a validated ``data.custom``)."""
    metric, main = _CUSTOM_METRICS[c.metric or ("pearson_spearman" if c.regression else "accuracy")]
    files = {"train": os.path.abspath(os.path.expanduser(c.train_file)),
             "dev": os.path.abspath(os.path.expanduser(c.eval_file))}
    return TaskSpec(CUSTOM_TASK, None, files, c.text_column, c.pair_column, c.label_column,
                    None if c.regression else tuple(c.labels), metric, main, format=custom_format(c))


def check_split(spec: TaskSpec, split: str) -> str:
    if split not in spec.files:
        raise UserError(f"task {spec.name} has no split {split!r}; its splits are: {', '.join(spec.files)}")
    return spec.files[split]




@dataclass(frozen=True, slots=True)
class Example:
    text_a: str
    text_b: str | None
    label: int | float  # class index into TaskSpec.labels, or the STS-B score

