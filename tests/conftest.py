"""Shared fixtures: a tiny random BERT saved as a model directory, with a vocabulary that covers the
built-in synthetic SST-2 sentences, so pipeline tests run in seconds on CPU."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dynabert  # noqa: E402,F401  (zlib before paddle)


def pytest_configure(config):
    # `make test-fast` runs everything else (-m "not e2e and not dist"): in-process and under a minute.
    config.addinivalue_line("markers", "e2e: trains the real pretrained model (MiniLM) on real data")
    config.addinivalue_line("markers", "slow: in-process but long (tens of seconds): runs with the slow tier")
    config.addinivalue_line("markers", "dist: starts a process (subprocess, paddle.distributed.launch, "
                                       "multiprocessing)")


def pytest_collection_modifyitems(config, items):
    """The real-model tests first (a stable sort keeps every other order): with the slow tier in two
    pytest-xdist workers, the longest file starts at once instead of after the others."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


@pytest.fixture(autouse=True, scope="session")
def _outside_any_slurm_job():
    """The tests' nodes come from their own flags and variables, never from a Slurm job the suite runs in
    (dynabert-launch takes its defaults from SLURM_*; so would every process the tests start)."""
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("SLURM_")]:
            mp.delenv(key)
        yield


def _builtin_vocab():
    from dynabert.data.sources import builtin_dataset

    words = set()
    for split in ("train", "dev"):
        for e in builtin_dataset("sst-2", split):
            words.update(e.text_a.lower().split())
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return specials + sorted(words)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A directory with a tiny random BERT (2 layers, 4 heads, hidden 16) and a matching vocab."""
    from paddlenlp.transformers import BertTokenizer

    from dynabert.model.pretrained import save_model, tiny_bert

    root = tmp_path_factory.mktemp("tiny_model")
    vocab = _builtin_vocab()
    vocab_file = root / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab_file=str(vocab_file), do_lower_case=True)
    model = tiny_bert(num_classes=2, seed=0, vocab_size=len(vocab))
    out = str(root / "model")
    save_model(model, tokenizer, out)
    return out


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory):
    """``family_model_dir(family)``: a directory with a tiny random model of ``family`` ("bert", "ernie",
    "roberta") and its tokenizer covering the built-in data (tests/families.py), made once per session."""
    from tests.families import save_tiny_family

    made = {}

    def get(family):
        if family not in made:
            made[family] = save_tiny_family(family, str(tmp_path_factory.mktemp(f"tiny_{family}")))
        return made[family]

    return get


@pytest.fixture(scope="session")
def glue_dir():
    """$GLUE_DIR with SST-2 in it. Skips the test without it, except in CI (CI=true), where the data is
    always beside the clone and a silent skip would hide a broken set-up."""
    path = os.environ.get("GLUE_DIR")
    if not path or not os.path.isdir(os.path.join(path, "SST-2")):
        message = f"GLUE_DIR with SST-2 is not set (GLUE_DIR={path!r})"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI needs the real data (see .ci/run)", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture
def run_worker(monkeypatch, capsys):
    """Calls the worker's entry point, ``launcher.worker.main``, in this process as ``python -m launcher.worker``
    would run it, in an environment like the subprocess tests': no Paddle launcher variables, no GLUE data,
    thread count fixed. Returns (exit code, stderr); the run's stdout is then in ``run_worker.out``."""
    from paddlenlp.utils.log import logger as paddlenlp_logger

    from launcher import worker

    for key in [k for k in os.environ if k.startswith("PADDLE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GLUE_DIR", "")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    level = paddlenlp_logger.logger.level  # main() quiets PaddleNLP for the rest of the process

    def run(*args):
        import paddle

        capsys.readouterr()
        try:
            # Parameter names (hence optimizer state keys in a checkpoint) come from a process-wide counter:
            # a fresh one per run, as in a fresh process, or a run could not resume another's checkpoint.
            with paddle.utils.unique_name.guard():
                code = worker.main(list(args))
        finally:
            paddlenlp_logger.logger.setLevel(level)
        captured = capsys.readouterr()
        run.out = captured.out
        return code, captured.err

    return run


def job_report(output: str, log_dir: str, lines: int = 30) -> str:
    """A failed launched job, for the assertion message: the end of its own output and of every worker
    log (a failure in one rank often shows only in another rank's log)."""
    parts = [output[-3000:]]
    for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
        if name.startswith("workerlog."):
            with open(os.path.join(log_dir, name), errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
            parts.append(f"--- {name} (last {len(tail)} lines) ---\n" + "\n".join(tail))
    return "\n".join(parts)
