"""FastBertTokenizer gives exactly PaddleNLP BertTokenizer's ids (data.encode) with the embedded MiniLM's
vocabulary: on every row of real SST-2 train and dev, and on strings chosen to hit every difference between
PaddleNLP's Python tokenizer and the Rust library. Only vocab.txt is used (no model weights)."""
import itertools
import os
import warnings

import pytest

from dynabert.data.features import encode
from dynabert.data.readers import read_glue_tsv
from dynabert.data.tasks import Example
from dynabert.data.tokenizer import FastBertTokenizer, truncated_lengths

HARD_STRINGS = [
    # empty and whitespace only
    "", " ", "\t\n \r",
    # accents, combining marks, case mappings that change length
    "Café naïve résumé", "ÀÉÎÕÜ àéîõü", "e\u0301 combining acute", "\u0301\u0308 marks alone", "Ångström",
    "İstanbul ıi", "ß Straße", "ﬁne ligature", "ΟΔΟΣ Σίσυφος ς", "\u1e9e capital sharp s",
    # other scripts
    "Привет, мир!", "مرحبا بالعالم", "שלום", "नमस्ते दुनिया", "สวัสดีชาวโลก", "안녕하세요", "こんにちは カタカナ ｶﾀｶﾅ",
    "Ｆｕｌｌｗｉｄｔｈ１２３",
    # Chinese characters; CJK extension E, which only PaddleNLP isolates from U+2B820 on
    "我爱北京天安门", "abc中文def", "\U00020000\U0002a6d6 ext-B", "x\U0002b820y ext-E", "\u3007 ideographic zero",
    # control, format and zero-width characters
    "a\x00b", "a\x07b\x1bc", "a\u200bb", "a\u200cb\u200dc", "\ufeffbom", "a\u2028b\u2029c", "a\x0bb\x0cc",
    "a\x85b", "soft\u00adhyphen", "a\ufffdb", "\u202ertl\u202c", "del\x7fete", "nbsp\u00a0here\u3000ideo",
    # words at and over PaddleNLP's max_input_chars_per_word (100)
    "a" * 100, "b" * 101, "supercalifragilistic" * 6, "x" * 500, "é" * 101, "a" * 60 + "-" + "b" * 60,
    "un" + "believable" * 11, "A" * 101,
    # Unicode punctuation and symbols (PaddleNLP isolates symbols too, plus a few listed code points)
    "“quoted” ‘single’ — dash – en … «guillemets» ¿qué? ¡hola!", "【brackets】「」『』", "a·b•c",
    "€100 £50 ¥ ©®™ ° ± × ÷ ½ ² ³ µ ŋ Ø ø º Ʊ ʊ", "I ❤️ 🎉 🤖 👍🏽 🏳️‍🌈", "∑∫√∞ ≠ ≤ →", "^$`|~+<=>",
    # special-token literals: special only when standing alone between whitespace
    "[CLS] [SEP] [PAD] [UNK] [MASK]", "x[SEP]y", "[sep] [Cls] lower", "[SEP", "[[SEP]]", "a [MASK]b",
    "中[SEP]文", "\t[SEP]\n",
    # ordinary English oddities
    "-lrb- it 's a film -rrb- that n't", "3.14 1,000,000 2nd", "http://example.com/a?b=c&d=e#f",
    "user@example.com", "ALL CAPS SHOUTING", "MiXeD CaSe",
    # unassigned code points and characters newer than the Rust library's Unicode tables
    "\u0378 unassigned \U000e0001 tag", "\u061d newer punctuation", "\U0001f970 newer emoji",
]
MAX_SEQ_LENS = (3, 4, 5, 8, 16, 64, 512)


@pytest.fixture(scope="module")
def paddle_tokenizer():
    from dynabert.model.pretrained import default_model_dir, load_tokenizer

    return load_tokenizer(default_model_dir())


@pytest.fixture(scope="module")
def fast(paddle_tokenizer):
    return FastBertTokenizer(paddle_tokenizer)


def reference(examples, tokenizer, max_seq_len):
    with warnings.catch_warnings():  # PaddleNLP warns on every longest_first pair truncation
        warnings.simplefilter("ignore")
        return encode(examples, tokenizer, max_seq_len)


def assert_same(examples, fast_tokenizer, paddle_tokenizer, max_seq_len):
    got = fast_tokenizer.features(examples, max_seq_len)
    want = reference(examples, paddle_tokenizer, max_seq_len)
    differing = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert len(got) == len(want)
    assert not differing, (f"max_seq_len={max_seq_len}: {len(differing)} rows differ, first "
                           f"{examples[differing[0]]!r}: {got[differing[0]]} != {want[differing[0]]}")


@pytest.mark.parametrize("split", ["dev", pytest.param("train", marks=pytest.mark.slow)])
def test_every_sst2_row_matches_paddlenlp(glue_dir, paddle_tokenizer, split):
    examples = read_glue_tsv(os.path.join(glue_dir, "SST-2", f"{split}.tsv"), "sst-2", split)
    fast = FastBertTokenizer(paddle_tokenizer)
    assert_same(examples, fast, paddle_tokenizer, 128)
    # SST-2 has accented rows: both the Python and the Rust route were compared, not just one.
    assert fast.route_counts["ascii"] > 0 and fast.route_counts["rust"] > 0


def test_sst2_dev_matches_when_truncated(glue_dir, paddle_tokenizer, fast):
    examples = read_glue_tsv(os.path.join(glue_dir, "SST-2", "dev.tsv"), "sst-2", "dev")
    for max_seq_len in (3, 8, 17):
        assert_same(examples, fast, paddle_tokenizer, max_seq_len)


@pytest.mark.parametrize("max_seq_len", MAX_SEQ_LENS)
def test_hard_strings_match_paddlenlp(paddle_tokenizer, fast, max_seq_len):
    singles = [Example(s, None, 0) for s in HARD_STRINGS]
    pairs = [Example(a, b, 1) for a, b in itertools.product(HARD_STRINGS[::3], HARD_STRINGS[1::4])]
    assert_same(singles, fast, paddle_tokenizer, max_seq_len)
    assert_same(pairs, fast, paddle_tokenizer, max_seq_len)
    assert_same(singles[::2] + pairs[::5] + singles[1::2], fast, paddle_tokenizer, max_seq_len)  # mixed rows


def test_longest_first_truncation_matches_paddlenlp_for_every_length(paddle_tokenizer, fast):
    words = "one two three four five six seven eight nine ten".split()  # one token each
    pairs = [Example(" ".join(words[:a]), " ".join(words[:b]), 0) for a in range(10) for b in range(10)]
    for max_seq_len in range(3, 24):
        assert_same(pairs, fast, paddle_tokenizer, max_seq_len)


def test_truncated_lengths_rule():
    # Hand-worked from PaddleNLP's loop (drop from the longer; from b on a tie), budget = max_seq_len - 3.
    keep_a, keep_b = truncated_lengths([5, 5, 7, 2, 9, 0], [7, 5, 2, 9, 0, 0], [True] * 5 + [False], 7)
    assert keep_a.tolist() == [2, 2, 2, 2, 4, 0]
    assert keep_b.tolist() == [2, 2, 2, 2, 0, 0]
    keep_a, keep_b = truncated_lengths([5, 9, 1], [7, 0, 1], [True, False, True], 8)
    assert keep_a.tolist() == [3, 6, 1]  # odd budget: the first text gets the extra token
    assert keep_b.tolist() == [2, 0, 1]


def test_routes_divergent_characters_to_paddlenlp(paddle_tokenizer):
    fast = FastBertTokenizer(paddle_tokenizer)
    # PaddleNLP isolates U+2B820 (CJK extension E) and deletes the unassigned U+0378; the Rust library does not.
    assert not fast.agrees_on("\U0002b820") and not fast.agrees_on("\u0378")
    assert fast.agrees_on("é") and fast.agrees_on("中") and fast.agrees_on("€")
    fast.encode_texts(["plain ascii", "café", "x\U0002b820y", "a [SEP] b"])
    assert fast.route_counts == {"ascii": 1, "rust": 1, "paddle": 2}


@pytest.mark.parametrize("settings", [
    {"do_lower_case": False},
    {"do_lower_case": False, "strip_accents": True},
    {"do_lower_case": True, "strip_accents": False},
    {"tokenize_chinese_chars": False},
])
def test_other_tokenizer_settings_match_paddlenlp(settings):
    from paddlenlp.transformers import BertTokenizer

    from dynabert.model.pretrained import default_model_dir

    paddle_tokenizer = BertTokenizer(vocab_file=os.path.join(default_model_dir(), "vocab.txt"), **settings)
    fast = FastBertTokenizer(paddle_tokenizer)
    assert not fast.unsupported
    examples = [Example(s, None, 0) for s in HARD_STRINGS] + [Example(a, b, 1) for a, b in
                                                              zip(HARD_STRINGS, reversed(HARD_STRINGS))]
    for max_seq_len in (6, 512):
        assert_same(examples, fast, paddle_tokenizer, max_seq_len)


def test_unmirrored_configuration_encodes_through_paddlenlp():
    from paddlenlp.transformers import BertTokenizer

    from dynabert.model.pretrained import default_model_dir

    paddle_tokenizer = BertTokenizer(vocab_file=os.path.join(default_model_dir(), "vocab.txt"),
                                     never_split=["don't"])
    fast = FastBertTokenizer(paddle_tokenizer)
    assert fast.unsupported == "never_split words"
    examples = [Example("I don't know", "don't", 0), Example("Café", None, 1)]
    assert_same(examples, fast, paddle_tokenizer, 8)
    assert fast.route_counts == {"ascii": 0, "rust": 0, "paddle": 3}


def test_settings_name_what_determines_the_ids(paddle_tokenizer, fast):
    from paddlenlp.transformers import BertTokenizer

    from dynabert.model.pretrained import default_model_dir

    cased = FastBertTokenizer(BertTokenizer(vocab_file=os.path.join(default_model_dir(), "vocab.txt"),
                                            do_lower_case=False))
    assert fast.settings()["do_lower_case"] is True and cased.settings()["do_lower_case"] is False
    assert fast.settings()["vocab_size"] == 30522
    assert fast.settings()["truncation"] == "longest_first"
