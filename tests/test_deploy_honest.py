"""Select's honest numbers: the choice is made on the run's selection split, dev is read once per reported
model, the data is the run's own (or refused), and int8 calibration reads no training file.

The fixture makes the two splits disagree on purpose: the held-out training rows are labelled with what the
width-0.5 model predicts, the dev rows with what the width-1 model predicts, so the selection split ranks
width 0.5 first and dev ranks width 1 first.
"""
import os

import numpy as np
import pytest
from paddlenlp.transformers import BertTokenizer

from dynabert.config import Config, DataConfig, RunConfig
from dynabert.data import record
from dynabert.data.sources import builtin_dataset
from dynabert.data.task_data import carve_indices, load_task_data
from dynabert.deploy import measure
from dynabert.deploy.select import SelectOptions, select_run
from dynabert.errors import UserError
from dynabert.model.export import extract_submodel, load_exported, save_exported
from dynabert.model.pretrained import tiny_bert
from dynabert.model.supernet import Supernet
from launcher.config import dump_config
from tests.conftest import _builtin_vocab

pytestmark = pytest.mark.slow  # in-process, but tens of seconds

TRAIN_ROWS, HELD, DEV_ROWS, SEED = 400, 120, 120, 42
FAST = dict(threads=1, batch_size=4, seq_len=16, warmup=1, min_runs=2, min_seconds=0.0, calibration_rows=32,
            runtimes=("onnxruntime",), precisions=("fp32",))


def _predictions(model_dir, tokenizer, sentences):
    import paddle

    model = load_exported(model_dir)
    encoded = tokenizer(sentences, max_length=32, truncation=True, padding=True, return_attention_mask=True)
    with paddle.no_grad():
        logits = model(paddle.to_tensor(encoded["input_ids"]),
                       token_type_ids=paddle.to_tensor(encoded["token_type_ids"]),
                       attention_mask=paddle.to_tensor(np.asarray(encoded["attention_mask"], dtype="float32")))
    return logits.numpy().argmax(-1)


def _centre_the_decision(model, tokenizer, sentences):
    """A random tiny BERT predicts one class for every input (its logits differ by a near-constant offset):
    move the classifier's bias so that half the pool falls on each side, so the widths disagree somewhere."""
    import paddle

    model.eval()
    encoded = tokenizer(sentences, max_length=32, truncation=True, padding=True, return_attention_mask=True)
    with paddle.no_grad():
        logits = model(paddle.to_tensor(encoded["input_ids"]),
                       token_type_ids=paddle.to_tensor(encoded["token_type_ids"]),
                       attention_mask=paddle.to_tensor(np.asarray(encoded["attention_mask"], dtype="float32")))
        margin = float(np.median(logits.numpy()[:, 1] - logits.numpy()[:, 0]))
        bias = model.classifier.bias
        bias.set_value(bias.numpy() + np.asarray([margin / 2, -margin / 2], dtype="float32"))


def _write_tsv(path, sentences, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{int(y)}\n" for s, y in zip(sentences, labels)))


@pytest.fixture(scope="module")
def disagreeing_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("honest")
    vocab = _builtin_vocab()
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab_file=str(root / "vocab.txt"), do_lower_case=True)
    model = tiny_bert(vocab_size=len(vocab), seed=3)
    pool = [e.text_a for e in builtin_dataset("sst-2", "train", TRAIN_ROWS + DEV_ROWS)]
    _centre_the_decision(model, tokenizer, pool)
    supernet = Supernet(model, (1.0, 0.5))
    supernet.eval()
    run = root / "run"
    for width in (1.0, 0.5):
        save_exported(extract_submodel(supernet, width), width, tokenizer, str(run / "export" / f"width_{width:g}"))
    train, dev = pool[:TRAIN_ROWS], pool[TRAIN_ROWS:]
    wide = _predictions(str(run / "export" / "width_1"), tokenizer, train + dev)
    narrow = _predictions(str(run / "export" / "width_0.5"), tokenizer, train + dev)
    _, held = carve_indices(TRAIN_ROWS, HELD, SEED, None)
    labels = np.asarray([e.label for e in builtin_dataset("sst-2", "train", TRAIN_ROWS)])
    labels[held] = narrow[:TRAIN_ROWS][held]  # the selection split: width 0.5 is always right
    assert (wide[:TRAIN_ROWS][held] != narrow[:TRAIN_ROWS][held]).any(), "the fixture needs disagreements"
    assert (wide[TRAIN_ROWS:] != narrow[TRAIN_ROWS:]).any()
    glue = root / "glue"
    _write_tsv(glue / "SST-2" / "train.tsv", train, labels)
    _write_tsv(glue / "SST-2" / "dev.tsv", dev, wide[TRAIN_ROWS:])  # dev: width 1 is always right
    cfg = Config(data=DataConfig(glue_dir=str(glue), max_seq_len=32, validation_rows=HELD, allow_download=False),
                 run=RunConfig(out_dir=str(run), eval_batch_size=16, seed=SEED))
    (run / "config.yaml").write_text(dump_config(cfg))
    data = load_task_data(cfg, tokenizer, needs_train=True, log=lambda _: None)  # what the training run read
    record.write(str(run), record.describe(data, cfg))
    return cfg, str(run), glue


@pytest.fixture
def evaluations(monkeypatch):
    """Every evaluation select makes, by split name."""
    calls = []
    original = measure.evaluate

    def counting(runner, split, **kw):
        calls.append(split["split"])
        return original(runner, split, **kw)

    monkeypatch.setattr(measure, "evaluate", counting)
    return calls


def _select(run_dir, cfg, tmp_path, **options):
    return select_run(run_dir, cfg=cfg, options=SelectOptions(**{**FAST, "out_dir": str(tmp_path / "select"),
                                                                 **options}), log=lambda _: None)


def test_the_choice_is_made_on_the_selection_split_and_dev_is_read_once(disagreeing_run, evaluations, tmp_path):
    cfg, run, _ = disagreeing_run
    result = _select(run, cfg, tmp_path)
    metric = {r["name"]: r["metric"] for r in result["rows"]}
    assert metric["width_0.5/onnxruntime/fp32"] == 1.0 > metric["width_1/onnxruntime/fp32"]
    assert result["chosen"] == "width_0.5/onnxruntime/fp32"  # dev would have chosen width 1
    assert result["reported"]["split"] == "dev" and result["reported"]["metric"] < 1.0
    assert evaluations.count("validation") == 2 and evaluations.count("dev") == 1  # dev: the chosen one only
    assert result["settings"]["split"] == "validation"


def test_report_all_on_dev_reads_every_candidate_and_keeps_the_choice(disagreeing_run, evaluations, tmp_path):
    cfg, run, _ = disagreeing_run
    result = _select(run, cfg, tmp_path, report_all_on_dev=True)
    assert result["chosen"] == "width_0.5/onnxruntime/fp32"
    dev = {r["name"]: r["dev_metric"] for r in result["rows"]}
    assert dev["width_1/onnxruntime/fp32"] == 1.0 > dev["width_0.5/onnxruntime/fp32"]
    assert evaluations.count("dev") == 2 and "| dev accuracy |" in result["markdown"]


def test_changed_or_missing_data_is_refused_unless_named(disagreeing_run, tmp_path):
    cfg, run, glue = disagreeing_run
    copy = tmp_path / "glue"
    (copy / "SST-2").mkdir(parents=True)
    dev = (glue / "SST-2" / "dev.tsv").read_text().splitlines()
    (copy / "SST-2" / "train.tsv").write_text((glue / "SST-2" / "train.tsv").read_text())
    flipped = dev[1].rsplit("\t", 1)
    (copy / "SST-2" / "dev.tsv").write_text("\n".join([dev[0], f"{flipped[0]}\t{1 - int(flipped[1])}"] + dev[2:]))
    moved = tmp_path / "run"
    os.rename(run, moved)  # the record points at the original data; the run dir itself may move
    kept = (moved / "data.json").read_text()
    try:
        with pytest.raises(UserError, match=r"data.json: the run's dev rows differ from what it recorded"):
            _with_recorded_glue_dir(moved, copy, lambda: _select(str(moved), cfg, tmp_path))
        with pytest.raises(UserError, match=r"data.json: the run's data .* is gone; give --glue-dir"):
            _with_recorded_glue_dir(moved, tmp_path / "nowhere", lambda: _select(str(moved), cfg, tmp_path))
        named = select_run(str(moved), cfg=cfg, glue_dir=str(copy), log=lambda _: None,
                           options=SelectOptions(**{**FAST, "out_dir": str(tmp_path / "named")}))
        assert named["settings"]["data_differs_from_run"] is True
        os.remove(moved / "data.json")
        with pytest.raises(UserError, match=r"data.json: missing, so the data this run used is unknown"):
            _select(str(moved), cfg, tmp_path)
    finally:
        (moved / "data.json").write_text(kept)
        os.rename(moved, run)


def _with_recorded_glue_dir(run_dir, glue_dir, fn):
    """Run ``fn`` with the run's record pointing at ``glue_dir`` (as if the data there were what it read)."""
    import json

    path = run_dir / "data.json"
    original = path.read_text()
    recorded = json.loads(original)
    recorded["glue_dir"] = str(glue_dir)
    recorded["cache_dir"] = None
    path.write_text(json.dumps(recorded))
    try:
        return fn()
    finally:
        path.write_text(original)


def test_int8_calibration_reads_no_training_file(disagreeing_run, tmp_path, monkeypatch):
    from dynabert.data import cache, readers, sources, task_data

    cfg, run, _ = disagreeing_run
    read = []
    for module in (cache, readers, sources, task_data):
        if hasattr(module, "read_glue_tsv"):
            original = module.read_glue_tsv
            monkeypatch.setattr(module, "read_glue_tsv",
                                lambda path, *a, _o=original, **k: (read.append(str(path)), _o(path, *a, **k))[1])
    result = _select(run, cfg, tmp_path, precisions=("fp32", "int8"), onnx_int8="static")
    assert any(r["precision"] == "int8" for r in result["rows"])
    assert not [p for p in read if p.endswith("train.tsv")], read  # calibration rows come from the cache
    assert result["settings"]["calibration"]["source"].startswith("GLUE_DIR ")
