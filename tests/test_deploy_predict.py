"""dynabert-predict: input parsing (TSV with a header, one sentence per line, pairs), bad input as one line
``error: FILE:LINE: ...`` with exit 2, and labels and scores on real SST-2 dev rows with a tiny exported model."""
import io

import numpy as np
import paddle
import pytest

from dynabert.errors import UserError
from dynabert.model.export import load_exported, save_exported
from dynabert.model.pretrained import load_model, load_tokenizer
from launcher import predict_cli
from launcher.predict_cli import read_sentences


def sentences(text, name="in.tsv"):
    return read_sentences(io.StringIO(text), name)


def test_tsv_header_names_the_sentence_column_and_other_columns_are_ignored():
    assert sentences("label\tsentence\n1\tgood film\n0\tdull\n") == [("good film", None), ("dull", None)]
    assert sentences("sentence1\tsentence2\tscore\na\tb\t3.0\n") == [("a", "b")]


def test_plain_lines_are_sentences_and_two_columns_a_pair():
    assert sentences("a fine film\n\nboring\n") == [("a fine film", None), ("boring", None)]
    assert sentences("premise one\thypothesis one\n") == [("premise one", "hypothesis one")]


@pytest.mark.parametrize("text, where, what", [
    ("sentence\tlabel\nok\t1\ntoo\tmany\tfields\n", "in.tsv:3:", "expected 2 tab-separated fields"),
    ("a\tb\tc\n", "in.tsv:1:", "one sentence or two"),
    ("fine\nx\t\n", "in.tsv:2:", "empty sentence"),
    ("sentence\tlabel\n", "in.tsv:1:", "no sentences"),
    ("\n\n", "in.tsv:1:", "no sentences"),
])
def test_bad_input_names_file_and_line(text, where, what):
    with pytest.raises(UserError) as err:
        sentences(text)
    assert str(err.value).startswith(where) and what in str(err.value)


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("predict") / "width_1")
    save_exported(load_model(tiny_model_dir, 2), 1.0, load_tokenizer(tiny_model_dir), path)
    return path


def first_dev_rows(glue_dir, n):
    with open(f"{glue_dir}/SST-2/dev.tsv", encoding="utf-8") as f:
        lines = f.read().splitlines()
    return lines[0], lines[1:n + 1]


def test_predict_real_sst2_rows(exported, glue_dir, tmp_path):
    header, rows = first_dev_rows(glue_dir, 6)
    source = tmp_path / "dev_head.tsv"
    source.write_text("\n".join([header] + rows) + "\n")
    out = tmp_path / "pred.tsv"
    assert predict_cli.main([exported, "--input", str(source), "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "label\tp_0\tp_1" and len(lines) == 1 + len(rows)
    # Expected: the dynamic-graph model (not the inference program predict runs) on the same sentences.
    model, tokenizer = load_exported(exported), load_tokenizer(exported)
    for line, row in zip(lines[1:], rows):
        sentence = row.split("\t")[header.split("\t").index("sentence")]
        encoded = tokenizer(text=sentence, max_length=64, truncation=True)  # tiny: 64 positions
        with paddle.no_grad():
            logits = model(paddle.to_tensor([encoded["input_ids"]]),
                           token_type_ids=paddle.to_tensor([encoded["token_type_ids"]])).numpy()[0]
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        label, p0, p1 = line.split("\t")
        np.testing.assert_allclose([float(p0), float(p1)], expected, atol=2e-6)
        assert label == str(int(expected.argmax()))


def test_predict_from_standard_input(exported):
    stdout = io.StringIO()
    assert predict_cli.main([exported], stdin=io.StringIO("a charming film .\nthe plot is dull .\n"),
                            stdout=stdout) == 0
    lines = stdout.getvalue().splitlines()
    assert len(lines) == 3
    for line in lines[1:]:
        label, p0, p1 = line.split("\t")
        assert label in ("0", "1") and abs(float(p0) + float(p1) - 1) < 1e-5


def test_bad_input_exits_2_with_one_line(exported, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("good\nok\tfine\tthree\n")
    out = tmp_path / "never.tsv"
    assert predict_cli.main([exported, "--input", str(bad), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {bad}:2: expected one sentence or two tab-separated sentences, found 3 fields "
                   "(a TSV file needs a header line naming a sentence column)"]
    assert not out.exists()


def test_not_a_model_directory_exits_2(tmp_path, capsys):
    assert predict_cli.main([str(tmp_path)], stdin=io.StringIO("hello\n"), stdout=io.StringIO()) == 2
    assert "neither a served model" in capsys.readouterr().err


def test_a_max_seq_len_beyond_the_position_table_exits_2(exported, tmp_path, capsys):
    # The tiny model has 64 positions: 65 would fail at the first long sentence, with a traceback.
    out = tmp_path / "never.tsv"
    code = predict_cli.main([exported, "--max-seq-len", "65", "--output", str(out)], stdin=io.StringIO("hi\n"))
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --max-seq-len: 65 exceeds the model's "
                                               "max_position_embeddings (64, ")
