"""The task registry: which files a task has, which columns hold its text and label, its labels and metric.

Every reader, the cache and the metrics take a ``TaskSpec`` looked up once (``get_task``) and passed on.
"""
from dataclasses import dataclass

from dynabert.errors import UserError


@dataclass(frozen=True)
class TaskSpec:
    """Where a GLUE task's files are and how to read them.

    Columns are named by the file's header line; ``columns`` names them for header-less files (CoLA).
    ``labels`` is None for regression (STS-B), whose label is a float.
    """

    name: str  # canonical, as PaddleNLP spells it ("sst-2")
    dir_name: str  # directory under GLUE_DIR ("SST-2")
    files: dict  # split -> file name
    text_a: str
    text_b: str | None
    label: str
    labels: tuple | None
    metric: str  # "accuracy" | "accuracy_f1" | "mcc" | "pearson_spearman", see dynabert.metrics
    main_metric: str  # the key of compute_metrics' result that selects the best model
    columns: tuple | None = None  # names for a file without a header line

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_classes(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def dev_splits(self) -> tuple:
        return tuple(s for s in self.files if s != "train")


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
    """The spec of a GLUE task; case, '-' and '_' are ignored ("SST-2", "sst2", "sts_b")."""
    if isinstance(task, TaskSpec):
        return task
    canonical = _ALIASES.get(_normalise(task))
    if canonical is None:
        raise UserError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[canonical]


def check_split(spec: TaskSpec, split: str) -> str:
    if split not in spec.files:
        raise UserError(f"task {spec.name} has no split {split!r}; its splits are: {', '.join(spec.files)}")
    return spec.files[split]




@dataclass(frozen=True, slots=True)
class Example:
    text_a: str
    text_b: str | None
    label: int | float  # class index into TaskSpec.labels, or the STS-B score

