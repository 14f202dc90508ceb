"""The tokenize-once mirror for ERNIE (WordPiece, Chinese characters split one by one) and RoBERTa (byte-level
BPE) gives exactly PaddleNLP's ids (data.encode) for the family's tokenizer: on every SST-2 row and on the hard
strings of tests/test_fast_tokenizer.py plus Chinese text. Vocabularies are made here, offline: ERNIE 2.0 en's is
bert-base-uncased's (the embedded MiniLM's vocab.txt), ERNIE's Chinese one is small and hand-made, RoBERTa's
vocab.json + merges.txt are trained here with Hugging Face ``tokenizers``."""
import itertools
import os

import pytest

from dynabert.data.cache import prepare
from dynabert.data.readers import read_glue_tsv
from dynabert.data.tasks import Example
from dynabert.data.tokenizer import FastBertTokenizer, FastBpeTokenizer, fast_tokenizer, layout_of
from tests.families import CHINESE, builtin_texts, write_bpe_files, write_wordpiece_vocab
from tests.test_fast_tokenizer import HARD_STRINGS, MAX_SEQ_LENS, assert_same, reference

CHINESE_STRINGS = [
    "我爱北京天安门", "这部电影很好看！", "电影《流浪地球》的票房超过４６亿元。", "ERNIE 3.0是百度的模型",
    "中文，标点；和English混合", "繁體中文測試", "ｆｕｌｌ　ｗｉｄｔｈ　中文", "数字123和字母abc", "表情😀和中文",
    "日本語のテキスト", "한국어 텍스트", "\u3000全角空格", "㊣ 特殊符号 ©", "零〇一二三", "我爱[SEP]北京", "电影不好看",
    "北京 天安门 很 好",
]
ALL_STRINGS = HARD_STRINGS + CHINESE_STRINGS


def examples_of(strings):
    singles = [Example(s, None, 0) for s in strings]
    pairs = [Example(a, b, 1) for a, b in itertools.product(strings[::3], strings[1::4])]
    return singles, pairs


@pytest.fixture(scope="module")
def ernie_en():
    """ERNIE 2.0 en's vocabulary is bert-base-uncased's: the embedded MiniLM's vocab.txt."""
    from paddlenlp.transformers import ErnieTokenizer

    from dynabert.model.pretrained import default_model_dir

    return ErnieTokenizer(vocab_file=os.path.join(default_model_dir(), "vocab.txt"))


@pytest.fixture(scope="module")
def ernie_zh(tmp_path_factory):
    """A small Chinese ERNIE vocabulary: the built-in data's words and a few characters (the rest are [UNK])."""
    from paddlenlp.transformers import ErnieTokenizer

    vocab = write_wordpiece_vocab(tmp_path_factory.mktemp("ernie_zh"), builtin_texts(), extra=CHINESE + "中文电影")
    return ErnieTokenizer(vocab_file=vocab)


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    """Byte-level BPE trained on the built-in data and the hard strings (merges across multi-byte characters)."""
    from paddlenlp.transformers import RobertaBPETokenizer

    texts = builtin_texts() + ALL_STRINGS * 3
    vocab, merges = write_bpe_files(tmp_path_factory.mktemp("roberta_bpe"), texts, vocab_size=1200)
    return RobertaBPETokenizer(vocab_file=vocab, merges_file=merges)


@pytest.fixture(scope="module")
def roberta_sst2(tmp_path_factory, glue_dir):
    """Byte-level BPE trained on SST-2's training sentences, 4,000 tokens."""
    from paddlenlp.transformers import RobertaBPETokenizer

    train = read_glue_tsv(os.path.join(glue_dir, "SST-2", "train.tsv"), "sst-2", "train")
    vocab, merges = write_bpe_files(tmp_path_factory.mktemp("roberta_sst2"), [e.text_a for e in train],
                                    vocab_size=4000)
    return RobertaBPETokenizer(vocab_file=vocab, merges_file=merges)


# --------------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------------


def test_each_family_gets_its_mirror_and_layout(ernie_en, roberta):
    ernie = fast_tokenizer(ernie_en)
    assert type(ernie) is FastBertTokenizer and not ernie.unsupported
    assert (ernie.layout.pair_seps, ernie.layout.b_type, ernie.layout.specials) == (1, 1, (2, 3))
    bpe = fast_tokenizer(roberta)
    assert type(bpe) is FastBpeTokenizer and not bpe.unsupported
    assert (bpe.layout.pair_seps, bpe.layout.b_type, bpe.layout.specials) == (2, 0, (2, 4))
    assert layout_of(object()) is None
    row = bpe.features([Example("the movie", "was good", 1)], 32)[0]
    assert row.input_ids[0] == roberta.cls_token_id and row.input_ids[-1] == roberta.sep_token_id
    assert row.input_ids.count(roberta.sep_token_id) == 3 and set(row.token_type_ids) == {0}


# --------------------------------------------------------------------------------------------------
# ERNIE
# --------------------------------------------------------------------------------------------------


def test_ernie_every_sst2_dev_row_matches_paddlenlp(glue_dir, ernie_en):
    # (The train split runs with BERT's tokenizer in test_fast_tokenizer.py: the same WordPiece pipeline on the
    # same vocabulary; ERNIE differs in its class only.)
    examples = read_glue_tsv(os.path.join(glue_dir, "SST-2", "dev.tsv"), "sst-2", "dev")
    fast = fast_tokenizer(ernie_en)
    assert_same(examples, fast, ernie_en, 128)
    assert fast.route_counts["ascii"] > 0 and fast.route_counts["rust"] > 0


@pytest.mark.parametrize("max_seq_len", MAX_SEQ_LENS)
def test_ernie_hard_and_chinese_strings_match_paddlenlp(ernie_en, ernie_zh, max_seq_len):
    singles, pairs = examples_of(ALL_STRINGS)
    for tokenizer in (ernie_en, ernie_zh):
        fast = fast_tokenizer(tokenizer)
        assert_same(singles, fast, tokenizer, max_seq_len)
        assert_same(pairs, fast, tokenizer, max_seq_len)


def test_ernie_splits_chinese_characters_one_by_one_in_rust(ernie_zh):
    fast = fast_tokenizer(ernie_zh)
    ids, offsets = fast.encode_texts(["我爱北京天安门", "电影很好看"])
    tokens = ernie_zh.convert_ids_to_tokens(ids.tolist())
    assert tokens[:7] == list("我爱北京天安门") and offsets.tolist() == [0, 7, 12]
    assert fast.route_counts == {"ascii": 0, "rust": 2, "paddle": 0}  # no text needed PaddleNLP
    assert reference([Example("我爱北京", None, 0)], ernie_zh, 16)[0].input_ids == [2] + ids[:4].tolist() + [3]


# --------------------------------------------------------------------------------------------------
# RoBERTa
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["dev", pytest.param("train", marks=pytest.mark.slow)])
def test_roberta_every_sst2_row_matches_paddlenlp(roberta_sst2, glue_dir, split):
    examples = read_glue_tsv(os.path.join(glue_dir, "SST-2", f"{split}.tsv"), "sst-2", split)
    fast = fast_tokenizer(roberta_sst2)
    assert_same(examples, fast, roberta_sst2, 128)
    assert fast.route_counts["rust"] == len(examples) and fast.route_counts["paddle"] == 0


def test_roberta_sst2_pairs_match_when_truncated(roberta_sst2, glue_dir):
    dev = read_glue_tsv(os.path.join(glue_dir, "SST-2", "dev.tsv"), "sst-2", "dev")
    pairs = [Example(a.text_a, b.text_a, 0) for a, b in zip(dev[::2], dev[1::2])]
    fast = fast_tokenizer(roberta_sst2)
    for max_seq_len in (3, 4, 9, 17, 64):
        assert_same(pairs, fast, roberta_sst2, max_seq_len)


@pytest.mark.parametrize("max_seq_len", MAX_SEQ_LENS)
def test_roberta_hard_and_chinese_strings_match_paddlenlp(roberta, max_seq_len):
    singles, pairs = examples_of(ALL_STRINGS)
    fast = fast_tokenizer(roberta)
    assert_same(singles, fast, roberta, max_seq_len)
    assert_same(pairs, fast, roberta, max_seq_len)
    assert_same(singles[::2] + pairs[::5] + singles[1::2], fast, roberta, max_seq_len)


def test_roberta_longest_first_truncation_for_every_length(roberta):
    words = "the movie was good and the acting quite charming .".split()
    pairs = [Example(" ".join(words[:a]), " ".join(words[:b]), 0) for a in range(10) for b in range(10)]
    fast = fast_tokenizer(roberta)
    for max_seq_len in range(3, 26):
        assert_same(pairs, fast, roberta, max_seq_len)


def test_roberta_routes_special_literals_and_divergent_characters_to_paddlenlp(roberta):
    fast = fast_tokenizer(roberta)
    # U+0558 is an Armenian letter to the Python regex module PaddleNLP uses and unassigned to the Rust one's
    # Unicode tables; splitting around it differs.
    assert not fast.agrees_on("\u0558") and fast.agrees_on("é") and fast.agrees_on("中") and fast.agrees_on("😀")
    texts = ["plain ascii", "café 中文", "x\u0558y", "a <s> b", "the <mask> movie", "</s>"]
    fast.encode_texts(texts)
    assert fast.route_counts == {"ascii": 0, "rust": 2, "paddle": 4}
    assert_same([Example(t, None, 0) for t in texts], fast_tokenizer(roberta), roberta, 32)


def test_roberta_add_prefix_space_matches_paddlenlp(tmp_path):
    from paddlenlp.transformers import RobertaBPETokenizer

    vocab, merges = write_bpe_files(tmp_path, builtin_texts() + ALL_STRINGS, vocab_size=600)
    spaced = RobertaBPETokenizer(vocab_file=vocab, merges_file=merges, add_prefix_space=True)
    plain = RobertaBPETokenizer(vocab_file=vocab, merges_file=merges)
    fast = fast_tokenizer(spaced)
    assert fast.settings()["add_prefix_space"] is True and fast.settings() != fast_tokenizer(plain).settings()
    singles, pairs = examples_of(ALL_STRINGS)
    assert_same(singles + pairs, fast, spaced, 64)
    movie = [Example("movie", None, 0)]
    assert fast.features(movie, 8) != fast_tokenizer(plain).features(movie, 8)  # "Ġmovie" vs "movie"


def test_roberta_vocabulary_the_mirror_cannot_follow_goes_to_paddlenlp(tmp_path):
    """A vocabulary missing a merge's result: PaddleNLP maps that token to <unk>, the Rust model could not
    even be built. Every text then goes to PaddleNLP, with the same ids as data.encode."""
    import json

    from paddlenlp.transformers import RobertaBPETokenizer

    vocab, merges = write_bpe_files(tmp_path, builtin_texts(), vocab_size=350)
    with open(vocab, encoding="utf-8") as f:
        tokens = json.load(f)
    dropped = max(tokens, key=tokens.get)  # the last merge's result
    del tokens[dropped]
    with open(vocab, "w", encoding="utf-8") as f:
        json.dump(tokens, f)
    tokenizer = RobertaBPETokenizer(vocab_file=vocab, merges_file=merges)
    fast = fast_tokenizer(tokenizer)
    assert fast.unsupported == "merges whose tokens are not in the vocabulary"
    examples = [Example(t, None, 0) for t in builtin_texts()[:50]]
    assert_same(examples, fast, tokenizer, 32)
    assert fast.route_counts == {"ascii": 0, "rust": 0, "paddle": 50}


def test_roberta_mirror_merges_as_paddlenlp_reads_merges_txt(roberta, tmp_path):
    """PaddleNLP reads merges.txt as lines[1:-1]: without a final newline the last merge is dropped. The mirror
    is built from the reference's merge ranks, so it drops it too."""
    from paddlenlp.transformers import RobertaBPETokenizer

    vocab, merges = write_bpe_files(tmp_path, builtin_texts(), vocab_size=350)
    with open(merges, encoding="utf-8") as f:
        text = f.read()
    with open(merges, "w", encoding="utf-8") as f:
        f.write(text.rstrip("\n"))
    with open(merges, encoding="utf-8") as f:
        last = f.read().splitlines()[-1]
    tokenizer = RobertaBPETokenizer(vocab_file=vocab, merges_file=merges)
    assert tuple(last.split()) not in tokenizer.bpe_ranks
    fast = fast_tokenizer(tokenizer)
    assert not fast.unsupported
    word = "".join(last.split()).replace("Ġ", " ")
    assert_same([Example(t, None, 0) for t in builtin_texts()[:200] + [word, "a" + word]], fast, tokenizer, 32)


# --------------------------------------------------------------------------------------------------
# the corpus cache with each family's tokenizer
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["ernie", "roberta"])
def test_corpus_cache_holds_paddlenlps_rows_for_each_family(family, ernie_zh, roberta, tmp_path):
    tokenizer = ernie_zh if family == "ernie" else roberta
    rows = [(t, i % 2) for i, t in enumerate(builtin_texts()[:300] + CHINESE_STRINGS + ["a <s> b"])]
    tsv = tmp_path / "train.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    split = prepare("sst-2", "train", str(tsv), tokenizer=tokenizer, max_seq_len=24, cache_dir=str(tmp_path / "c"),
                    log=lambda line: None)
    examples = read_glue_tsv(str(tsv), "sst-2", "train")
    want = reference(examples, tokenizer, 24)
    assert len(split) == len(want) and [split[i] for i in range(len(split))] == want
    assert split.manifest["fingerprint"]["tokenizer"]["class"] == type(tokenizer).__name__
