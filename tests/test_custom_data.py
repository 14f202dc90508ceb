"""Your own data (``data.task: custom``): CSV, TSV and JSON-lines files with your column names, label set (or
regression) and metric. The config's checks, the readers (every problem one line naming ``file:line``), the
metric's positive class, the corpus cache, and two whole runs through the worker entry point on the tiny
model -- a JSON-lines pair task with string labels and a CSV regression task -- followed by select and predict.
"""
import csv
import glob
import io
import json
import os
import re

import numpy as np
import pytest

from dynabert.data import readers
from dynabert.data.cache import open_cache
from dynabert.data.metrics import compute_metrics, main_metric_name
from dynabert.data.sources import builtin_dataset
from dynabert.data.tasks import Example, get_task, task_spec
from dynabert.errors import UserError
from launcher.config import load_config
from tests.conftest import ROOT

TINY = os.path.join(ROOT, "configs", "tiny.yaml")
PAIR_LABELS = ["different", "same"]


def custom(*overrides, train="train.jsonl", eval_="eval.jsonl", labels="[different, same]"):
    """A loaded config of custom data (files need not exist: the config never reads them)."""
    base = ["data.task=custom", f"data.custom.train_file={train}", f"data.custom.eval_file={eval_}"]
    if labels:
        base.append(f"data.custom.labels={labels}")
    return load_config(None, base + list(overrides))


# ------------------------------------------------------------------ the config


@pytest.mark.parametrize("overrides, needle", [
    (["data.task=custom"], "data.custom.train_file: required when data.task is custom"),
    (["data.task=custom", "data.custom.train_file=a.csv"], "data.custom.eval_file: required"),
    (["data.task=custom", "data.custom.train_file=a.csv", "data.custom.eval_file=b.csv"],
     "data.custom.labels: required when data.task is custom"),
    (["data.custom.train_file=a.csv"], "data.custom.train_file: only read when data.task is custom"),
    (["data.custom.regression=true"], "data.custom.regression: only read when data.task is custom"),
])
def test_the_custom_section_is_checked_with_the_dotted_key(overrides, needle):
    with pytest.raises(UserError) as e:
        load_config(None, overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("overrides, kwargs, needle", [
    (["data.custom.regression=true"], {}, "data.custom.labels: give a label set or regression: true, not both"),
    ([], {"labels": "[yes]"}, "data.custom.labels: needs at least two labels"),
    ([], {"labels": "[yes, no, yes]"}, "data.custom.labels: labels must be distinct"),
    ([], {"labels": "['yes ', no]"}, "data.custom.labels: a label must be non-empty text without leading"),
    ([], {"labels": "[0, 1]"}, None),  # entries of a string list stay text: "0", "1"
    (["data.custom.metric=auc"], {}, "data.custom.metric: unknown metric 'auc'; known: accuracy, f1, mcc"),
    (["data.custom.metric=f1"], {"labels": "[a, b, c]"}, "data.custom.metric: f1 is binary"),
    (["data.custom.metric=pearson_spearman"], {}, "data.custom.metric: pearson_spearman is for regression"),
    (["data.custom.regression=true", "data.custom.metric=accuracy"], {"labels": None},
     "data.custom.metric: accuracy needs classes"),
    (["data.custom.format=xml"], {}, "data.custom.format: must be one of auto, csv, tsv, jsonl"),
    ([], {"train": "rows.txt"}, "data.custom.format: auto cannot tell the format of train_file 'rows.txt'"),
    ([], {"eval_": "dev.csv"}, "data.custom.format: auto: the training file is jsonl but the evaluation file is csv"),
    (["data.custom.pair_column=text"], {}, "data.custom.label_column: text, pair and label columns must be different"),
])
def test_impossible_custom_settings_name_their_key(overrides, kwargs, needle):
    if needle is None:
        assert custom(*overrides, **kwargs).data.custom.labels == ("0", "1")
        return
    with pytest.raises(UserError) as e:
        custom(*overrides, **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_task_spec_is_built_from_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = task_spec(custom("data.custom.text_column=premise", "data.custom.pair_column=hypothesis",
                            "data.custom.label_column=relation", "data.custom.metric=f1", "data.task=Custom"))
    assert spec.is_custom and spec.name == "custom" and spec.format == "jsonl"
    assert spec.files == {"train": str(tmp_path / "train.jsonl"), "dev": str(tmp_path / "eval.jsonl")}
    assert (spec.text_a, spec.text_b, spec.label, spec.labels) == ("premise", "hypothesis", "relation",
                                                                   ("different", "same"))
    assert (spec.metric, spec.main_metric, spec.num_classes) == ("accuracy_f1", "f1", 2)
    regression = task_spec(custom("data.custom.regression=true", labels=None, train="a.CSV", eval_="b.csv"))
    assert regression.is_regression and regression.format == "csv" and regression.main_metric == "pearson"
    assert task_spec(custom("data.custom.metric=mcc", "data.custom.format=tsv", train="a.txt",
                            eval_="b.txt")).main_metric == "mcc"
    assert task_spec(load_config(None, ["data.task=SST-2"])) is get_task("sst-2")
    with pytest.raises(UserError, match="task custom is described by a config's data.custom section"):
        get_task("custom")


def test_the_readme_example_configs_load(tmp_path):
    """The YAML blocks of custom data in the README are configs that load (their files are the reader's own)."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "task: custom" in b]
    assert blocks, "README has no ```yaml block with data.task: custom"
    for i, block in enumerate(blocks):
        path = tmp_path / f"readme_{i}.yaml"
        path.write_text(block)
        assert task_spec(load_config(str(path))).is_custom


# ------------------------------------------------------------------ reading files


def spec_of(tmp_path, name, *overrides, labels="[neg, pos]"):
    path = tmp_path / name
    return task_spec(custom(*overrides, train=str(path), eval_=str(path), labels=labels)), path


def test_csv_quoted_fields_extra_columns_blank_lines_and_a_bom(tmp_path):
    spec, path = spec_of(tmp_path, "rows.csv", "data.custom.text_column=review", "data.custom.label_column=y")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerows([["id", "review", "y"], [1, 'a "good" film, really', "pos"], [2, "two\nlines", "neg"]])
    path.write_bytes(b"\xef\xbb\xbf" + buf.getvalue().replace("\r\n", "\n").encode() + b"\n\n3,dull, neg \n")
    assert readers.read_examples(path, spec, "train") == [
        Example('a "good" film, really', None, 1), Example("two\nlines", None, 0), Example("dull", None, 0)]
    assert readers.read_examples(path, spec, "dev", limit=1) == [Example('a "good" film, really', None, 1)]


def test_tsv_pairs_and_jsonl_pairs_with_string_or_integer_labels(tmp_path):
    spec, path = spec_of(tmp_path, "rows.tsv", "data.custom.pair_column=other")
    path.write_text("text\tother\tlabel\r\na\tb\tpos\r\n\"c\t1\"\td\tneg\r\n")
    assert readers.read_examples(path, spec, "train") == [Example("a", "b", 1), Example("c\t1", "d", 0)]
    spec, path = spec_of(tmp_path, "rows.jsonl", "data.custom.pair_column=other", labels="['0', '1']")
    path.write_text('{"text": "a", "other": "b", "label": 1, "id": 7}\n\n{"label": "0", "other": "", "text": "c"}\n')
    assert readers.read_examples(path, spec, "train") == [Example("a", "b", 1), Example("c", "", 0)]


def test_regression_labels_are_floats(tmp_path):
    spec, path = spec_of(tmp_path, "scores.jsonl", "data.custom.regression=true", labels=None)
    path.write_text('{"text": "a", "label": 0.25}\n{"text": "b", "label": "3"}\n{"text": "c", "label": -2}\n')
    assert [e.label for e in readers.read_examples(path, spec, "train")] == [0.25, 3.0, -2.0]
    assert all(isinstance(e.label, float) for e in readers.read_examples(path, spec, "train"))


BAD = [  # (file name, extra overrides, content, line, message)
    ("a.csv", [], "", 1, "file is empty"),
    ("a.csv", [], "text,label\n\n", 3, "no data rows after line 2"),
    ("a.csv", [], "text,label\nok,pos\ntoo,many,fields\n", 3, "expected 2 comma-separated fields (as in the header), "
     "found 3"),
    ("a.tsv", [], "text\tlabel\nok\tpos\nno label\n", 3, "expected 2 tab-separated fields (as in the header), found 1"),
    ("a.csv", [], 'text,label\n"two\nlines",pos\nx,maybe\n', 4, "label 'maybe' is not one of neg, pos "
     "(data.custom.labels)"),
    ("a.csv", [], 'text,label\n"unclosed,pos\nx,neg\n', 2, "malformed CSV row: unexpected end of data"),
    ("a.csv", [], 'text,label\n"quoted"after,pos\n', 2, "malformed CSV row: ',' expected after '\"'"),
    ("a.csv", [], "sentence,label\nok,pos\n", 1, "header has no column 'text' (data.custom.text_column); found: "
     "sentence, label"),
    ("a.csv", [], "text,label,text\nok,pos,x\n", 1, "header names column 'text' (data.custom.text_column) 2 times"),
    ("a.csv", ["data.custom.pair_column=b"], "text,label\nok,pos\n", 1, "header has no column 'b' "
     "(data.custom.pair_column)"),
    ("a.jsonl", [], '{"text": "ok", "label": "pos"}\n{"text": "ok", "label": "pos",}\n', 2,
     "not valid JSON (Expecting property name enclosed in double quotes at column 31)"),
    ("a.jsonl", [], '["ok", "pos"]\n', 1, "expected a JSON object, found a list"),
    ("a.jsonl", [], '{"text": "ok", "label": "pos"}\n\n{"text": "ok"}\n', 3, "missing key 'label' "
     "(data.custom.label_column); found: 'text'"),
    ("a.jsonl", [], '{"text": 5, "label": "pos"}\n', 1, "'text' must be a string, found the number 5"),
    ("a.jsonl", [], '{"text": "ok", "label": "maybe"}\n', 1, "label 'maybe' is not one of neg, pos "
     "(data.custom.labels)"),
    ("a.jsonl", [], '{"text": "ok", "label": true}\n', 1, "label must be a string or an integer, found a boolean"),
    ("a.jsonl", [], '{"text": "ok", "label": null}\n', 1, "label must be a string or an integer, found null"),
    ("a.jsonl", [], "\n\n", 1, "file is empty"),
]


@pytest.mark.parametrize("name, extra, content, line, message", BAD)
def test_a_malformed_row_is_one_line_naming_file_and_line(tmp_path, name, extra, content, line, message):
    spec, path = spec_of(tmp_path, name, *extra)
    path.write_text(content)
    with pytest.raises(UserError) as e:
        readers.read_examples(path, spec, "train")
    text = str(e.value)
    assert text.startswith(f"{path}:{line}: ") and message in text and "\n" not in text, text


@pytest.mark.parametrize("name, content", [("a.csv", b"text,label\ncaf\xe9,neg\n"),
                                           ("a.jsonl", b'{"text": "ok", "label": "pos"}\n{"text": "caf\xe9"}\n')])
def test_invalid_utf8_names_the_line(tmp_path, name, content):
    spec, path = spec_of(tmp_path, name)
    path.write_bytes(content)
    with pytest.raises(UserError, match=rf"^{path}:2: not valid UTF-8 \(byte 0xe9 at column"):
        readers.read_examples(path, spec, "train")


def test_jsonl_regression_label_must_be_a_number(tmp_path):
    spec, path = spec_of(tmp_path, "a.jsonl", "data.custom.regression=true", labels=None)
    path.write_text('{"text": "ok", "label": 1}\n{"text": "ok", "label": [1]}\n')
    with pytest.raises(UserError, match=rf"^{path}:2: label must be a number, found a list$"):
        readers.read_examples(path, spec, "train")
    path.write_text('{"text": "ok", "label": "high"}\n')
    with pytest.raises(UserError, match=rf"^{path}:1: label 'high' is not a number$"):
        readers.read_examples(path, spec, "train")


def test_a_missing_file_names_its_config_key(tmp_path):
    from dynabert.data.sources import load_split

    spec = task_spec(custom(train=str(tmp_path / "t.csv"), eval_=str(tmp_path / "e.csv")))
    with pytest.raises(UserError, match=rf"^{tmp_path}/e.csv: no such file \(data.custom.eval_file\)$"):
        load_split(spec, "dev")


# ------------------------------------------------------------------ metric


def test_binary_f1_takes_the_second_label_as_positive():
    spec = task_spec(custom("data.custom.metric=f1", labels="[neg, pos]"))
    # pos (index 1): 1 true positive, 1 false negative: F1 2/3. Were neg the positive class, F1 would be 4/5.
    result = compute_metrics(spec, [1, 0, 0, 0], [1, 1, 0, 0])
    assert result == {"accuracy": 0.75, "f1": pytest.approx(2 / 3)} and main_metric_name(spec) == "f1"
    mcc = task_spec(custom("data.custom.metric=mcc", labels="[a, b, c]"))
    assert compute_metrics(mcc, [0, 1, 2, 2], [0, 1, 2, 2]) == {"mcc": 1.0}


# ------------------------------------------------------------------ whole runs


def _pair_rows(examples):
    """JSON-lines rows of a pair task built from the built-in sentences (whose words the tiny vocabulary has):
    "same" when both sentences carry the same sentiment."""
    rows = []
    for i in range(0, len(examples) - 1, 2):
        a, b = examples[i], examples[i + 1]
        rows.append({"id": i, "premise": a.text_a, "hypothesis": b.text_a,
                     "relation": PAIR_LABELS[int(a.label == b.label)]})
    return rows


def _run_args(model, out, train, eval_, *overrides):
    return ["--config", TINY, "--set", f"model.name_or_path={model}", "--set", f"run.out_dir={out}",
            "--set", "data.task=custom", "--set", f"data.custom.train_file={train}",
            "--set", f"data.custom.eval_file={eval_}", "--set", "data.train_limit=null", "--set", "data.dev_limit=null",
            "--set", "data.validation_rows=30", "--set", "finetune.max_steps=4", "--set", "compress.optim.max_steps=3",
            "--set", "compress.optim.eval_every=0", "--set", "compress.widths=[1.0,0.5]", *overrides]


@pytest.fixture
def pair_files(tmp_path):
    examples = builtin_dataset("sst-2", "train", 400)
    files = {}
    for name, part in (("train.jsonl", examples[:300]), ("eval.jsonl", examples[300:])):
        rows = _pair_rows(part)
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[name] = rows
    return tmp_path / "train.jsonl", tmp_path / "eval.jsonl", files


PAIR_SETTINGS = ["--set", "data.custom.text_column=premise", "--set", "data.custom.pair_column=hypothesis",
                 "--set", "data.custom.label_column=relation", "--set", "data.custom.labels=[different, same]",
                 "--set", "data.custom.metric=f1"]


def test_a_jsonl_pair_task_with_string_labels_runs_selects_and_predicts(run_worker, tiny_model_dir, pair_files,
                                                                       tmp_path):
    from dynabert.deploy.select import SelectOptions, select_run
    from launcher import predict_cli

    train, eval_, rows = pair_files
    out = tmp_path / "run"
    code, err = run_worker(*_run_args(tiny_model_dir, out, train, eval_, *PAIR_SETTINGS))
    assert code == 0, err
    # the labels, read right: the cache holds each row's index into the label set, in file order
    dev = open_cache(_cache(out, "dev"))
    assert dev.labels.tolist() == [PAIR_LABELS.index(r["relation"]) for r in rows["eval.jsonl"]]
    assert 0 < dev.labels.sum() < len(dev)  # both labels occur
    assert len(open_cache(_cache(out, "train"))) == len(rows["train.jsonl"]) == 150
    assert "30 training rows held out for validation" in run_worker.out  # the honest carve, as on GLUE
    results = json.loads((out / "results.json").read_text())
    assert (results["task"], results["metric"], results["labels"]) == ("custom", "f1", PAIR_LABELS)
    assert set(results["teacher"]) == {"accuracy", "f1"}
    assert [sorted(r["metrics"]) for r in results["widths"]] == [["accuracy", "f1"]] * 2
    assert "| dev f1 | teacher f1 |" in (out / "results.md").read_text()
    meta = json.loads((out / "export" / "width_0.5" / "dynabert_export.json").read_text())
    assert meta["task"] == {"name": "custom", "text_columns": ["premise", "hypothesis"], "labels": PAIR_LABELS,
                            "metric": "f1"}

    # select reads the run's config.yaml: the task's labels and metric come from its data.custom
    cfg = load_config(str(out / "config.yaml"))
    chosen = select_run(str(out), cfg=cfg, options=SelectOptions(
        threads=1, batch_size=4, seq_len=16, runtimes=("paddle",), precisions=("fp32",), warmup=1, min_runs=2,
        min_seconds=0.0), log=lambda _: None)
    card = json.loads(open(os.path.join(chosen["served_dir"], "card.json")).read())
    assert (card["task"], card["labels"], card["text_columns"]) == ("custom", PAIR_LABELS, ["premise", "hypothesis"])
    assert card["metric"]["name"] == "f1" and card["metric"]["examples"] == 50
    assert set(card["metric"]["all"]) == {"accuracy", "f1"}

    # predict: the model's own column names in a header (any order, other columns ignored) or plain pairs
    pairs = [(r["premise"], r["hypothesis"]) for r in rows["eval.jsonl"][:3]]
    header = "relation\thypothesis\tid\tpremise\n" + "".join(f"x\t{h}\t0\t{p}\n" for p, h in pairs)
    plain = "".join(f"{p}\t{h}\n" for p, h in pairs)
    outputs = []
    for model_dir in (chosen["served_dir"], str(out / "export" / "width_1")):
        for text in (header, plain):
            stdout = io.StringIO()
            assert predict_cli.main([model_dir], stdin=io.StringIO(text), stdout=stdout) == 0
            outputs.append(stdout.getvalue())
    lines = outputs[0].splitlines()
    assert lines[0] == "label\tp_different\tp_same" and len(lines) == 4
    assert all(line.split("\t")[0] in PAIR_LABELS for line in lines[1:])
    assert outputs[1] == outputs[0]  # the header's columns were found by name
    assert outputs[2] == outputs[3] and outputs[2].splitlines()[0] == "label\tp_different\tp_same"


def test_a_csv_regression_task_runs_and_predicts_scores(run_worker, tiny_model_dir, tmp_path):
    from dynabert.model.pretrained import load_tokenizer, save_model, tiny_bert
    from launcher import predict_cli

    tokenizer = load_tokenizer(tiny_model_dir)
    model_dir = str(tmp_path / "regression_model")  # one output: a regression head
    save_model(tiny_bert(num_classes=1, seed=0, vocab_size=len(tokenizer.vocab)), tokenizer, model_dir)
    examples = builtin_dataset("sst-2", "train", 240)
    files = {}
    for name, part in (("train.csv", examples[:200]), ("eval.csv", examples[200:])):
        rows = [[i, e.text_a, f"{e.label * 4 + (i % 5) / 4:.2f}"] for i, e in enumerate(part)]
        with open(tmp_path / name, "w", newline="") as f:
            csv.writer(f).writerows([["id", "review", "stars"]] + rows)  # texts hold commas: quoted
        files[name] = rows
    assert any('"' in line for line in (tmp_path / "eval.csv").read_text().splitlines())
    out = tmp_path / "run"
    code, err = run_worker(*_run_args(model_dir, out, tmp_path / "train.csv", tmp_path / "eval.csv",
                                      "--set", "data.custom.text_column=review", "--set",
                                      "data.custom.label_column=stars", "--set", "data.custom.regression=true"))
    assert code == 0, err
    dev = open_cache(_cache(out, "dev"))
    assert dev.is_regression and dev.labels.tolist() == [float(r[2]) for r in files["eval.csv"]]
    assert dev[1].input_ids == tokenizer(files["eval.csv"][1][1], max_length=32, truncation=True)["input_ids"]
    results = json.loads((out / "results.json").read_text())
    assert (results["task"], results["metric"], results["labels"]) == ("custom", "pearson", None)
    assert set(results["teacher"]) == {"pearson", "spearman"}
    assert "| dev pearson | teacher pearson |" in (out / "results.md").read_text()
    stdout = io.StringIO()
    text = "stars\treview\n" + "".join(f"0\t{r[1]}\n" for r in files["eval.csv"][:4])
    assert predict_cli.main([str(out / "export" / "width_0.5")], stdin=io.StringIO(text), stdout=stdout) == 0
    lines = stdout.getvalue().splitlines()
    assert lines[0] == "score" and len(lines) == 5
    scores = [float(v) for v in lines[1:]]
    assert np.all(np.isfinite(scores)) and len(set(scores)) > 1


def _cache(out, split):
    """The run's one custom-data cache of ``split`` (named custom-<digest of its settings and files>.<split>)."""
    found = glob.glob(str(out / "cache" / f"custom-*.{split}"))
    assert len(found) == 1, found
    return found[0]


def test_the_cache_is_rebuilt_when_the_label_set_is_reordered(tiny_model_dir, pair_files, tmp_path):
    """Same file bytes, other label order: other label ids. The label set is part of the cache's name and
    fingerprint, so each order has its own cache and going back reuses the first."""
    from dynabert.data.task_data import load_task_data
    from dynabert.model.pretrained import load_tokenizer

    train, eval_, rows = pair_files
    tokenizer, logs = load_tokenizer(tiny_model_dir), []

    def dev_labels(labels):
        cfg = load_config(TINY, [f"run.out_dir={tmp_path / 'run'}", "data.task=custom",
                                 f"data.custom.train_file={train}", f"data.custom.eval_file={eval_}",
                                 "data.custom.text_column=premise",
                                 "data.custom.label_column=relation", f"data.custom.labels={labels}",
                                 "data.dev_limit=null"])
        return np.asarray(load_task_data(cfg, tokenizer, needs_train=False, log=logs.append).dev.labels).tolist()

    first = dev_labels("[different, same]")
    assert first == [PAIR_LABELS.index(r["relation"]) for r in rows["eval.jsonl"]]
    assert dev_labels("[same, different]") == [1 - x for x in first]
    assert sum(".dev: building (" in line for line in logs) == 2, logs
    logs.clear()
    assert dev_labels("[same, different]") == [1 - x for x in first]
    assert dev_labels("[different, same]") == first
    assert not any("building" in line for line in logs)  # both kept: reused


def test_two_custom_datasets_share_a_cache_dir_without_rebuilding_each_other(tiny_model_dir, tmp_path):
    from dynabert.data.task_data import load_task_data
    from dynabert.model.pretrained import load_tokenizer

    tokenizer, logs = load_tokenizer(tiny_model_dir), []
    for name in ("a", "b"):
        (tmp_path / f"{name}.csv").write_text("text,label\n" + "".join(f"{name} row {i},{'pos' if i % 2 else 'neg'}\n"
                                                                       for i in range(20)))

    def dev_texts(name):
        cfg = load_config(TINY, [f"run.out_dir={tmp_path / name}", f"data.cache_dir={tmp_path / 'shared'}",
                                 "data.task=custom", f"data.custom.train_file={tmp_path / name}.csv",
                                 f"data.custom.eval_file={tmp_path / name}.csv", "data.custom.labels=[neg, pos]",
                                 "data.dev_limit=null"])
        return len(load_task_data(cfg, tokenizer, needs_train=False, log=logs.append).dev)

    assert dev_texts("a") == dev_texts("b") == 20
    assert sum("building" in line for line in logs) == 2
    logs.clear()
    assert dev_texts("a") == 20 and dev_texts("b") == 20
    assert not any("building" in line for line in logs), logs


# ------------------------------------------------------------------ malformed rows through the worker


@pytest.mark.parametrize("which, content, line, message", [
    ("train", 'id,text,label\n1,fine,pos\n2,"a, b",neg,extra\n', 3,
     "expected 3 comma-separated fields (as in the header), found 4"),
    ("eval", 'id,text,label\n1,fine,pos\n2,ok,maybe\n', 3, "label 'maybe' is not one of neg, pos (data.custom.labels)"),
    ("eval", 'id,sentence,label\n1,fine,pos\n', 1,
     "header has no column 'text' (data.custom.text_column); found: id, sentence, label"),
])
def test_a_malformed_csv_row_stops_the_worker_with_exit_2(run_worker, tiny_model_dir, tmp_path, which, content,
                                                           line, message):
    good = "id,text,label\n" + "".join(f"{i},row {i},{'pos' if i % 2 else 'neg'}\n" for i in range(60))
    files = {"train": tmp_path / "train.csv", "eval": tmp_path / "eval.csv"}
    for key, path in files.items():
        path.write_text(content if key == which else good)
    code, err = run_worker(*_run_args(tiny_model_dir, tmp_path / "out", files["train"], files["eval"],
                                      "--set", "data.custom.labels=[neg, pos]"))
    assert code == 2
    assert err.splitlines() == [f"error: {files[which]}:{line}: {message}"], err


@pytest.mark.parametrize("content, line, message", [
    ('{"premise": "a", "hypothesis": "b", "relation": "same"}\n{"premise": "a", "hypothesis": "b", relation}\n', 2,
     "not valid JSON (Expecting property name enclosed in double quotes at column 37)"),
    ('{"premise": "a", "hypothesis": "b", "relation": "same"}\n{"premise": "a", "relation": "same"}\n', 2,
     "missing key 'hypothesis' (data.custom.pair_column); found: 'premise', 'relation'"),
    ('{"premise": "a", "hypothesis": "b", "relation": "similar"}\n', 1,
     "relation 'similar' is not one of different, same (data.custom.labels)"),
])
def test_a_malformed_jsonl_row_stops_the_worker_with_exit_2(run_worker, tiny_model_dir, pair_files, content, line,
                                                             message):
    train, eval_, _ = pair_files
    train.write_text(content)
    code, err = run_worker(*_run_args(tiny_model_dir, train.parent / "out", train, eval_, *PAIR_SETTINGS))
    assert code == 2
    assert err.splitlines() == [f"error: {train}:{line}: {message}"], err


def test_a_missing_eval_file_stops_the_worker_naming_the_key(run_worker, tiny_model_dir, pair_files):
    train, eval_, _ = pair_files
    eval_.unlink()
    code, err = run_worker(*_run_args(tiny_model_dir, train.parent / "out", train, eval_, *PAIR_SETTINGS))
    assert code == 2 and err.splitlines() == [f"error: {eval_}: no such file (data.custom.eval_file)"], err


def test_resuming_with_another_label_set_is_refused_and_glue_checkpoints_are_unchanged():
    from dynabert.config import model_fingerprint

    assert model_fingerprint(custom(labels="[a, b]")) != model_fingerprint(custom(labels="[b, a]"))
    assert model_fingerprint(custom("data.custom.metric=f1")) != model_fingerprint(custom())
    # a GLUE run's fingerprint is what it was: its checkpoints still resume
    assert not [k for k in model_fingerprint(load_config(TINY)) if k.startswith("data.custom")]


def test_inspect_data_reads_a_configs_custom_files(tiny_model_dir, pair_files, capsys):
    from tools import inspect_data

    train, eval_, rows = pair_files
    args = ["--set", "data.task=custom", "--set", f"data.custom.train_file={train}", "--set",
            f"data.custom.eval_file={eval_}", "--model", tiny_model_dir, *PAIR_SETTINGS]
    assert inspect_data.main(args) == 0
    out = capsys.readouterr().out
    counts = {label: sum(r["relation"] == label for r in rows["eval.jsonl"]) for label in PAIR_LABELS}
    assert f"train: {train} (150 rows)" in out and f"dev: {eval_} (50 rows)" in out
    assert f"labels: different {counts['different']}, same {counts['same']}" in out
