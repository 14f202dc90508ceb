"""GLUE data: task registry, TSV reading, data-source selection, tokenisation and batch collation.

Sources, in order of preference (``load_split``): the user's GLUE_DIR, PaddleNLP's own GLUE download,
and (SST-2 only) a small synthetic sentiment set generated in code, so that the pipeline can be
exercised on a machine without data. The description returned with every split says which was used.
Metrics live in ``dynabert.metrics``.
"""
import csv
import os
import random
import socket
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass

import numpy as np

import dynabert  # noqa: F401  (zlib before paddle; PaddleNLP is imported lazily below)
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


def _check_split(spec: TaskSpec, split: str) -> str:
    if split not in spec.files:
        raise UserError(f"task {spec.name} has no split {split!r}; its splits are: {', '.join(spec.files)}")
    return spec.files[split]


@dataclass(frozen=True, slots=True)
class Example:
    text_a: str
    text_b: str | None
    label: int | float  # class index into TaskSpec.labels, or the STS-B score


# ----------------------------------------------------------------------------------------------
# Reading GLUE TSV files
# ----------------------------------------------------------------------------------------------


def _decoded_lines(path: str, raw):
    """Yield (line_number, text) so that a decoding error can name its line (text mode cannot)."""
    for number, data in enumerate(raw, start=1):
        try:
            # utf-8-sig on line 1: GLUE's MRPC files inherit a byte-order mark from the MSR release.
            text = data.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}:{number}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column "
                            f"{e.start + 1})") from None
        yield number, text.rstrip("\r\n")


def read_glue_tsv(path, task, split, limit=None) -> list:
    """Parse one split of a GLUE task from its original TSV file into Examples.

    Every row must have as many fields as the header (QUOTE_NONE: GLUE text contains stray quotes).
    ``limit`` keeps the first N rows. All problems raise UserError naming ``path:line``.
    """
    spec = get_task(task)
    _check_split(spec, split)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of rows, got {limit}")
    path = os.fspath(path)
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (needed for {spec.name} {split})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot open: {e.strerror or e}") from None
    examples = []
    current = [0]  # number of the last line handed to csv: GLUE rows never span lines under QUOTE_NONE

    def texts():
        for number, text in _decoded_lines(path, raw):
            if text.strip():  # a blank line carries no row (trailing blank lines are common)
                current[0] = number
                yield text

    with raw:
        reader = csv.reader(texts(), delimiter="\t", quoting=csv.QUOTE_NONE)
        header = spec.columns
        try:
            if header is None:
                header = next(reader, None)
                if header is None:
                    raise UserError(f"{path}:1: file is empty; expected a header line naming the columns")
            index = {}
            for column in (spec.text_a, spec.text_b, spec.label):
                if column is not None and column not in header:
                    hint = " (is the header line missing?)" if spec.columns is None else ""
                    raise UserError(f"{path}:{current[0]}: header has no column {column!r}{hint}; "
                                    f"found: {', '.join(header)}")
                if column is not None:
                    index[column] = header.index(column)
            for fields in reader:
                line = current[0]
                if len(fields) != len(header):
                    raise UserError(f"{path}:{line}: expected {len(header)} tab-separated fields, found {len(fields)}")
                label = _parse_label(spec, fields[index[spec.label]], path, line)
                text_b = fields[index[spec.text_b]] if spec.text_b else None
                examples.append(Example(fields[index[spec.text_a]], text_b, label))
                if limit is not None and len(examples) >= limit:
                    break
        except csv.Error as e:
            raise UserError(f"{path}:{current[0]}: {e}") from None
    if not examples:
        if current[0] == 0:
            raise UserError(f"{path}:1: file is empty")
        raise UserError(f"{path}:{current[0] + 1}: no data rows after line {current[0]}")
    return examples


def _parse_label(spec: TaskSpec, value: str, path: str, line: int):
    value = value.strip()
    if spec.labels is None:
        try:
            score = float(value)
        except ValueError:
            score = float("nan")
        if not np.isfinite(score):
            raise UserError(f"{path}:{line}: {spec.label} {value!r} is not a number")
        return score
    try:
        return spec.labels.index(value)
    except ValueError:
        raise UserError(
            f"{path}:{line}: {spec.label} {value!r} is not one of {', '.join(spec.labels)}"
        ) from None
# ----------------------------------------------------------------------------------------------
# Choosing a source: GLUE_DIR, PaddleNLP's download, or the built-in synthetic set
# ----------------------------------------------------------------------------------------------

_PROBE_TIMEOUT = 3.0  # seconds; PaddleNLP downloads with httpx timeout=None and would hang on a silent network


def glue_file(task, split, glue_dir=None):
    """(path of the split's TSV in ``glue_dir`` (else env GLUE_DIR), None) when GLUE_DIR holds the task's
    directory, else (None, why not). A GLUE_DIR that does not exist is an error, not a fallback."""
    spec = get_task(task)
    file_name = _check_split(spec, split)
    root = os.fspath(glue_dir) if glue_dir is not None else os.environ.get("GLUE_DIR", "")
    if not root:
        return None, "GLUE_DIR not set"
    if not os.path.isdir(root):
        # A mistyped GLUE_DIR must not silently turn into synthetic data.
        raise UserError(f"GLUE_DIR {root}: no such directory")
    task_dir = os.path.join(root, spec.dir_name)
    if not os.path.isdir(task_dir):
        return None, f"no {spec.dir_name} directory in GLUE_DIR {root}"
    return os.path.join(task_dir, file_name), None


def load_split(task, split, glue_dir=None, limit=None, allow_download=True):
    """Examples of one split, and a one-line description of where they came from.

    ``glue_dir`` (else env GLUE_DIR) is used when it holds the task's directory; otherwise PaddleNLP's
    GLUE download (if ``allow_download``); otherwise the built-in synthetic set (SST-2 only).
    """
    spec = get_task(task)
    file_name = _check_split(spec, split)
    path, why_not = glue_file(spec.name, split, glue_dir)
    if path is not None:
        examples = read_glue_tsv(path, spec, split, limit)
        return examples, f"GLUE_DIR {path} ({len(examples)} rows)"
    reasons = [why_not]
    if allow_download:
        examples, why_not = _paddlenlp_glue(spec, split, limit)
        if examples is not None:
            return examples, f"PaddleNLP download glue/{spec.name} {split} ({len(examples)} rows)"
        reasons.append(f"PaddleNLP download failed: {why_not}")
    else:
        reasons.append("download disabled")
    if spec.name != "sst-2":
        raise UserError(f"no data for task {spec.name} ({'; '.join(reasons)}); set GLUE_DIR to a directory "
                        f"holding {spec.dir_name}/{file_name}")
    n = min(limit, _BUILTIN_SIZE[split]) if limit is not None else None
    examples = builtin_dataset(spec, split, n)
    return examples, (f"built-in synthetic sentiment data (NOT GLUE; {len(examples)} rows; "
                      f"{'; '.join(reasons)})")


def _probe(url: str, timeout: float = _PROBE_TIMEOUT):
    """None if a TCP connection to the URL's host (or the HTTPS proxy) opens within ``timeout``, else why not."""
    proxy = urllib.request.getproxies().get("https")
    target = urllib.parse.urlsplit(proxy or url)
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except OSError as e:
        return f"cannot reach {host}:{port} ({e.strerror or type(e).__name__})"


def _paddlenlp_glue(spec: TaskSpec, split: str, limit):
    """(examples, None) from PaddleNLP's GLUE cache/download, or (None, reason) without hanging."""
    try:
        from paddlenlp.datasets import load_dataset
        from paddlenlp.datasets.glue import Glue
        from paddlenlp.utils.env import DATA_HOME
    except Exception as e:  # a broken PaddleNLP install is a reason to fall back, not to crash
        return None, f"cannot import paddlenlp ({type(e).__name__}: {e})"
    config = Glue.BUILDER_CONFIGS[spec.name]
    cached = os.path.join(DATA_HOME, Glue.__name__, config["splits"][split][0])
    if not os.path.exists(cached):
        urls = config["url"].values() if isinstance(config["url"], dict) else [config["url"]]
        for url in urls:
            problem = _probe(url)
            if problem:
                return None, problem
    try:
        dataset = load_dataset("glue", name=spec.name, splits=split)
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"
    names = dataset.label_list
    examples = []
    for row in dataset:
        if limit is not None and len(examples) >= limit:
            break
        text_a = row.get("sentence", row.get("sentence1"))
        label = float(row["labels"]) if spec.is_regression else spec.labels.index(names[row["labels"]])
        examples.append(Example(text_a, row.get("sentence2"), label))
    return examples, None


# ----------------------------------------------------------------------------------------------
# Built-in synthetic SST-2 stand-in (NOT GLUE): lets the pipeline run end to end without data
# ----------------------------------------------------------------------------------------------

_BUILTIN_SIZE = {"train": 2000, "dev": 400}
_POSITIVE = ("wonderful", "charming", "brilliant", "moving", "delightful", "funny", "gripping", "beautiful",
             "clever", "heartfelt", "superb", "engaging", "touching", "witty", "memorable", "fresh")
_NEGATIVE = ("dull", "boring", "tedious", "awful", "clumsy", "lifeless", "predictable", "bland",
             "tiresome", "painful", "mediocre", "forgettable", "messy", "shallow", "pointless", "stale")
_SUBJECTS = ("the movie", "this film", "the story", "the acting", "the script", "the soundtrack", "the plot",
             "the ending", "the cast", "the dialogue", "the direction", "the premise")
_ADVERBS = ("", "very ", "really ", "truly ", "quite ", "utterly ", "surprisingly ", "consistently ")
_NEGATIONS = ("not", "never", "hardly", "anything but")


def _synthetic_sentence(rng: random.Random, label: int) -> str:
    """One SST-style (lower-case, spaced punctuation) sentence whose sentiment is ``label``."""
    def word(polarity):
        return rng.choice(_POSITIVE if polarity else _NEGATIVE)

    subject, other, adverb = rng.choice(_SUBJECTS), rng.choice(_SUBJECTS), rng.choice(_ADVERBS)
    form = rng.randrange(6)
    if form == 0:
        return f"{subject} is {adverb}{word(label)} ."
    if form == 1:
        return f"a {adverb}{word(label)} film , and {other} is {word(label)} too ."
    if form == 2:
        return f"i found {subject} {adverb}{word(label)} ."
    if form == 3:  # negation flips the adjective's polarity
        return f"{subject} is {rng.choice(_NEGATIONS)} {word(1 - label)} ."
    if form == 4:  # contrast: the clause after "but" decides
        return f"{subject} is {word(1 - label)} , but {other} is {adverb}{word(label)} ."
    return f"{subject} was n't {word(1 - label)} at all ."


def builtin_dataset(task, split, n=None) -> list:
    """A deterministic synthetic binary-sentiment set (SST-2 stand-in; NOT GLUE data).

    Sentences go to dev or train by a hash of their text, so the splits are disjoint for any ``n``,
    and a smaller ``n`` gives a prefix of a larger one. Defaults: 2000 train rows, 400 dev rows.
    """
    spec = get_task(task)
    if spec.name != "sst-2":
        raise UserError(f"task {spec.name} has no built-in data (only sst-2 has); set GLUE_DIR to a directory "
                        f"holding {spec.dir_name}/")
    _check_split(spec, split)
    n = _BUILTIN_SIZE[split] if n is None else n
    rng = random.Random(20240611)
    seen, examples = set(), []
    for _ in range(100 * n + 1000):
        if len(examples) >= n:
            break
        label = rng.randrange(2)
        text = _synthetic_sentence(rng, label)
        in_dev = zlib.crc32(text.encode()) % 5 == 0
        if text not in seen and in_dev == (split == "dev"):
            seen.add(text)
            examples.append(Example(text, None, label))
    if len(examples) < n:
        raise ValueError(f"the built-in generator cannot produce {n} distinct {split} rows")
    return examples


# ----------------------------------------------------------------------------------------------
# Tokenisation and collation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Feature:
    input_ids: list
    token_type_ids: list
    label: int | float


_ENCODE_CHUNK = 1024  # batched tokenizer calls are ~5% faster than one call per row


def encode(examples, tokenizer, max_seq_len) -> list:
    """Tokenise Examples with a PaddleNLP tokenizer ([CLS] a [SEP] b [SEP]), truncating to ``max_seq_len``."""
    if max_seq_len < 3:
        raise ValueError(f"max_seq_len must be at least 3 ([CLS] x [SEP]), got {max_seq_len}")
    features = []
    for start in range(0, len(examples), _ENCODE_CHUNK):
        chunk = examples[start:start + _ENCODE_CHUNK]
        pairs = [e.text_b is not None for e in chunk]
        if all(pairs) or not any(pairs):
            encoded = tokenizer(text=[e.text_a for e in chunk],
                                text_pair=[e.text_b for e in chunk] if pairs[0] else None,
                                max_length=max_seq_len, truncation=True)
            rows = [{k: v[i] for k, v in encoded.items()} for i in range(len(chunk))]
        else:  # mixed single/pair rows cannot share a batched call
            rows = [tokenizer(text=e.text_a, text_pair=e.text_b, max_length=max_seq_len, truncation=True)
                    for e in chunk]
        for example, row in zip(chunk, rows):
            ids = list(row["input_ids"])
            types = list(row.get("token_type_ids") or [0] * len(ids))
            features.append(Feature(ids, types, example.label))
    return features


def collate(features, pad_token_id, pad_to=None) -> dict:
    """Pad a batch to its longest row (or ``pad_to``) into numpy arrays for the model.

    Returns input_ids/token_type_ids int64 [B, L], attention_mask float32 [B, L] (1 token, 0 pad),
    labels int64 [B] (float32 for regression).
    """
    if not features:
        raise ValueError("collate needs at least one feature")
    longest = max(len(f.input_ids) for f in features)
    length = longest if pad_to is None else pad_to
    if length < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest row in the batch ({longest})")
    input_ids = np.full((len(features), length), pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((len(features), length), dtype=np.int64)
    attention_mask = np.zeros((len(features), length), dtype=np.float32)
    for i, f in enumerate(features):
        input_ids[i, :len(f.input_ids)] = f.input_ids
        token_type_ids[i, :len(f.token_type_ids)] = f.token_type_ids
        attention_mask[i, :len(f.input_ids)] = 1.0
    regression = isinstance(features[0].label, float)
    labels = np.asarray([f.label for f in features], dtype=np.float32 if regression else np.int64)
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
            "labels": labels}
