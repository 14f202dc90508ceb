"""Where a split's rows come from, in order of preference (``load_split``): the user's GLUE_DIR,
PaddleNLP's own GLUE download, and (SST-2 only) a small synthetic sentiment set generated in code, so
that the pipeline can be exercised on a machine without data. The description returned with every
split says which was used. Custom data (``data.task: custom``) has one source: the files its config names.
"""
import os
import random
import socket
import urllib.parse
import urllib.request
import zlib

import dynabert  # noqa: F401  (zlib before paddle; PaddleNLP is imported lazily below)
from dynabert.data.readers import read_examples
from dynabert.data.tasks import CUSTOM_KEYS, Example, TaskSpec, check_split, get_task
from dynabert.errors import UserError

_PROBE_TIMEOUT = 3.0  # seconds; PaddleNLP downloads with httpx timeout=None and would hang on a silent network


def glue_file(task, split, glue_dir=None):
    """(path of the split's TSV in ``glue_dir`` (else env GLUE_DIR), None) when GLUE_DIR holds the task's
    directory, else (None, why not). A GLUE_DIR that does not exist is an error, not a fallback."""
    spec = get_task(task)
    file_name = check_split(spec, split)
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


def task_file(task, split, glue_dir=None):
    """(path, None) of a split's file, or (None, why not): custom data's own file (which must exist), else
    ``glue_file``'s answer."""
    spec = get_task(task)
    if not spec.is_custom:
        return glue_file(spec, split, glue_dir)
    path = check_split(spec, split)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file ({CUSTOM_KEYS[split]})")
    return path, None


def load_split(task, split, glue_dir=None, limit=None, allow_download=True):
    """Examples of one split, and a one-line description of where they came from.

    Custom data: its own file. A GLUE task: ``glue_dir`` (else env GLUE_DIR) when it holds the task's
    directory; otherwise PaddleNLP's GLUE download (if ``allow_download``); otherwise the built-in
    synthetic set (SST-2 only).
    """
    spec = get_task(task)
    file_name = check_split(spec, split)
    path, why_not = task_file(spec, split, glue_dir)
    if path is not None:
        examples = read_examples(path, spec, split, limit)
        return examples, f"{'' if spec.is_custom else 'GLUE_DIR '}{path} ({len(examples)} rows)"
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
    check_split(spec, split)
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
