"""PaddleNLP ``BertTokenizer`` ids, fast: Hugging Face ``tokenizers`` (Rust) built from the same vocabulary.

``FastBertTokenizer(paddle_tokenizer)`` mirrors a PaddleNLP ``BertTokenizer`` (vocabulary, lower-casing, accent
stripping, Chinese characters, special tokens) and encodes a list of ``Example`` into flat numpy arrays:
``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``, truncated to ``max_seq_len`` exactly as PaddleNLP 2.8.1 does.

PaddleNLP's ids win. Each text goes by the cheapest route that provably gives them:

1. ``ascii``: pure-ASCII text. PaddleNLP's basic tokenizer is then fully
   specified by its code (drop control characters, lower-case, split on whitespace and on every ASCII
   punctuation/symbol character), so Python splits the words (C-speed ``str`` and ``re``) and each distinct word
   is WordPiece-tokenized once by the Rust model and cached. Most GLUE text takes this route.
2. ``rust``: any other text whose characters have all been verified: the full Rust pipeline (``BertNormalizer``,
   ``BertPreTokenizer`` plus a split on Unicode symbols, which PaddleNLP also isolates, ``WordPiece``),
   batch-encoded on all cores. A character is verified once per tokenizer by running PaddleNLP's basic
   tokenizer and the Rust normalizer + pre-tokenizer on ``c`` and ``"a" c "b"`` and comparing the words.
   This catches the cases where the two cannot agree: Unicode-table differences between Python's
   ``unicodedata`` and the Rust crates (characters newer than the Rust tables count as unassigned and are
   deleted; ``tokenizers`` isolates CJK Extension E only from U+2B920, PaddleNLP from U+2B820), and
   PaddleNLP's extra symbol code points (U+00B2, U+00BA, U+3007, U+00B5, U+014B). The per-character check is
   sound because both pipelines act on each character independently (PaddleNLP lower-cases character by
   character in its pre-pass, so there is no final-sigma context) and then run the same WordPiece algorithm.
3. ``paddle``: texts with a character that failed the check, and texts containing a special-token literal
   such as ``[SEP]``: PaddleNLP's own ``tokenize``. (PaddleNLP keeps ``[SEP]`` as the special token only when it
   stands alone between whitespace, and lower-cases and splits it anywhere else; the Rust library's added
   tokens match anywhere, so such texts are not given to it.)

Truncation (``longest_first``, right side) and the special tokens are applied here, in numpy, by PaddleNLP's
rule: remove one token at a time from the longer of the two texts, from the second on a tie. (The Rust
library's own ``longest_first`` gives the extra token of an odd budget to the longer text, PaddleNLP always
to the first, so its truncation is not used.) A tokenizer configuration this module does not mirror (no basic
tokenizer, ``never_split`` words, added tokens, left truncation) sends every text to route 3.
"""
import array
import hashlib
import re
from dataclasses import dataclass

import numpy as np

from dynabert.data.features import Feature

TRUNCATION = "longest_first"  # PaddleNLP's default with truncation=True; the only strategy implemented here
# Code points PaddleNLP's _is_symbol isolates besides Unicode category S* (read in paddlenlp 2.8.1
# transformers/tokenizer_utils.py). U+00AD is a format character that cleaning removes first.
_PADDLE_EXTRA_SYMBOLS = "\u00ad\u00b2\u00ba\u3007\u00b5\u00d8\u014b\u01b1"
# PaddleNLP's _clean_text drops category C* except \t \n \r (which become spaces); in ASCII that is this table.
_ASCII_CLEAN = {i: None for i in (*range(0, 32), 127)}
_ASCII_CLEAN.update({ord("\t"): " ", ord("\n"): " ", ord("\r"): " "})
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# After cleaning and lower-casing, an ASCII word is a run of letters/digits; every other printable
# character is punctuation to PaddleNLP (code points 33-47, 58-64, 91-96, 123-126) and stands alone.
_ASCII_WORDS = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")
_ASCII_WORDS_CASED = re.compile(r"[A-Za-z0-9]+|[!-/:-@\[-`{-~]")


@dataclass
class EncodedRows:
    """Encoded rows as flat arrays: row i is ``ids[offsets[i]:offsets[i+1]]``; its first ``segment_a[i]``
    tokens ([CLS] a [SEP]) have token type 0, the rest (b [SEP]) type 1."""

    ids: np.ndarray  # int32, all rows concatenated, special tokens included
    offsets: np.ndarray  # int64, len(rows) + 1
    segment_a: np.ndarray  # int32
    lengths: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.lengths)


class FastBertTokenizer:
    """The ids of a PaddleNLP ``BertTokenizer`` (``reference``), computed with Hugging Face ``tokenizers``."""

    def __init__(self, reference):
        self.reference = reference
        self.unsupported = _unsupported(reference)
        self.specials = [str(t) for t in reference.all_special_tokens]
        # A cheap pre-test for special-token literals: a character every special token contains ("[").
        common = set.intersection(*(set(s) for s in self.specials)) if self.specials else set()
        self._special_start = min(common) if common else ""
        self.cls_id = int(reference.cls_token_id)
        self.sep_id = int(reference.sep_token_id)
        self.vocab_size = len(reference.vocab)
        self.route_counts = {"ascii": 0, "rust": 0, "paddle": 0}
        self._word_cache = {}
        self._verified = {}  # character -> True when both pipelines treat it alike
        if not self.unsupported:
            self._rust = _rust_tokenizer(reference)
            self._wordpiece = self._rust.model
            self._words = _ASCII_WORDS if reference.do_lower_case else _ASCII_WORDS_CASED

    # ------------------------------------------------------------------------------------------
    # what determines the ids (for cache fingerprints)
    # ------------------------------------------------------------------------------------------
    def settings(self) -> dict:
        """Everything about the reference tokenizer that determines its ids."""
        ref = self.reference
        basic = getattr(ref, "basic_tokenizer", None)
        tokens = "\n".join(ref.vocab.idx_to_token[i] for i in range(len(ref.vocab)))
        return {
            "class": type(ref).__name__,
            "vocab_sha256": hashlib.sha256(tokens.encode("utf-8")).hexdigest(),
            "vocab_size": self.vocab_size,
            "do_lower_case": bool(ref.do_lower_case),
            "do_basic_tokenize": bool(getattr(ref, "do_basic_tokenize", True)),
            "strip_accents": getattr(basic, "strip_accents", None),
            "tokenize_chinese_chars": getattr(basic, "tokenize_chinese_chars", None),
            "never_split": sorted(getattr(basic, "never_split", ()) or ()),
            "special_tokens": self.specials,
            "added_tokens": sorted(getattr(ref, "added_tokens_encoder", {}) or {}),
            "max_input_chars_per_word": ref.wordpiece_tokenizer.max_input_chars_per_word,
            "truncation": TRUNCATION,
            "truncation_side": getattr(ref, "truncation_side", "right"),
        }

    # ------------------------------------------------------------------------------------------
    # encoding
    # ------------------------------------------------------------------------------------------
    def encode(self, examples, max_seq_len: int) -> EncodedRows:
        """Encode Examples (``text_b`` None for single sentences) like ``data.encode`` does."""
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len must be at least 3 ([CLS] x [SEP]), got {max_seq_len}")
        n = len(examples)
        has_b = np.fromiter((e.text_b is not None for e in examples), dtype=bool, count=n)
        a_ids, a_off = self.encode_texts([e.text_a for e in examples])
        b_rows = np.flatnonzero(has_b)
        b_ids, b_off_dense = self.encode_texts([examples[i].text_b for i in b_rows])
        b_len = np.zeros(n, dtype=np.int64)
        b_len[b_rows] = np.diff(b_off_dense)
        b_start = np.zeros(n, dtype=np.int64)
        b_start[b_rows] = b_off_dense[:-1]
        keep_a, keep_b = truncated_lengths(np.diff(a_off), b_len, has_b, max_seq_len)
        return _assemble(a_ids, a_off[:-1], keep_a, b_ids, b_start, keep_b, has_b, self.cls_id, self.sep_id)

    def features(self, examples, max_seq_len: int) -> list:
        """The same Features ``data.encode(examples, reference, max_seq_len)`` returns."""
        rows = self.encode(examples, max_seq_len)
        out = []
        for i, example in enumerate(examples):
            ids = rows.ids[rows.offsets[i]:rows.offsets[i + 1]].tolist()
            seg_a = int(rows.segment_a[i])
            out.append(Feature(ids, [0] * seg_a + [1] * (len(ids) - seg_a), example.label))
        return out

    def encode_texts(self, texts):
        """Token ids of each text without special tokens or truncation: (flat int32 ids, int64 offsets)."""
        pieces = [None] * len(texts)
        rust_rows, paddle_rows = [], []
        if self.unsupported:
            paddle_rows = list(range(len(texts)))
        else:
            cache, wordpiece, words_of = self._word_cache, self._wordpiece, self._words.findall
            lower = self.reference.do_lower_case
            for i, text in enumerate(texts):
                if self._has_special_literal(text):
                    paddle_rows.append(i)
                elif text.isascii():
                    if _ASCII_CONTROL.search(text):
                        text = text.translate(_ASCII_CLEAN)
                    ids = []
                    for word in words_of(text.lower() if lower else text):
                        piece = cache.get(word)
                        if piece is None:
                            piece = cache[word] = tuple(t.id for t in wordpiece.tokenize(word))
                        ids.extend(piece)
                    pieces[i] = ids
                elif self._all_verified(text):
                    rust_rows.append(i)
                else:
                    paddle_rows.append(i)
            if rust_rows:
                encodings = self._rust.encode_batch([texts[i] for i in rust_rows], add_special_tokens=False)
                for i, encoding in zip(rust_rows, encodings):
                    pieces[i] = encoding.ids
        ref = self.reference
        for i in paddle_rows:
            pieces[i] = ref.convert_tokens_to_ids(ref.tokenize(texts[i]))
        self.route_counts["paddle"] += len(paddle_rows)
        self.route_counts["rust"] += len(rust_rows)
        self.route_counts["ascii"] += len(texts) - len(rust_rows) - len(paddle_rows)
        lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
        offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = array.array("i")
        for p in pieces:
            flat.extend(p)
        return np.frombuffer(flat, dtype=np.int32) if len(flat) else np.zeros(0, np.int32), offsets

    def _has_special_literal(self, text: str) -> bool:
        return any(s in text for s in self.specials) if self._special_start in text else False

    # ------------------------------------------------------------------------------------------
    # per-character agreement check (route 2)
    # ------------------------------------------------------------------------------------------
    def _all_verified(self, text: str) -> bool:
        verified = self._verified
        for char in set(text):
            ok = verified.get(char)
            if ok is None:
                ok = verified[char] = self.agrees_on(char)
            if not ok:
                return False
        return True

    def agrees_on(self, char: str) -> bool:
        """Whether PaddleNLP and the Rust pipeline split and normalize ``char`` alike in any context."""
        for probe in (char, f"a{char}b"):
            try:
                normalized = self._rust.normalizer.normalize_str(probe)
                rust_words = [w for w, _ in self._rust.pre_tokenizer.pre_tokenize_str(normalized)]
            except Exception:  # e.g. a lone surrogate cannot cross into Rust
                return False
            if rust_words != self.paddle_words(probe):
                return False
        return True

    def paddle_words(self, text: str) -> list:
        """PaddleNLP's words before WordPiece: its lower-casing pre-pass (one character at a time, see
        ``PretrainedTokenizer.tokenize``), then its ``BasicTokenizer``. For text without special tokens."""
        ref = self.reference
        if ref.do_lower_case:
            text = "".join(c.lower() for c in text)
        return ref.basic_tokenizer.tokenize(text, never_split=ref.all_special_tokens)


def truncated_lengths(len_a, len_b, has_b, max_seq_len: int):
    """Lengths of a and b kept by PaddleNLP's ``longest_first`` truncation (``truncate_sequences``, right
    side): while too long, drop the last token of a if a is longer than b, else of b."""
    has_b = np.asarray(has_b, dtype=bool)
    len_a = np.asarray(len_a, dtype=np.int64)
    len_b = np.where(has_b, np.asarray(len_b, dtype=np.int64), 0)
    budget = max_seq_len - np.where(has_b, 3, 2)  # tokens left for the texts after [CLS] [SEP] ([SEP])
    over = len_a + len_b > budget
    # Single texts: keep the first `budget` tokens.
    keep_a = np.where(~has_b & over, budget, len_a)
    keep_b = len_b.copy()
    # Pairs: the longer text shrinks alone while that suffices; then the two alternate (b first, as on a
    # tie b loses a token), ending with a = ceil(budget / 2), b = floor(budget / 2).
    pair = has_b & over
    remove = len_a + len_b - budget
    a_longer = len_a > len_b
    alone = pair & (remove <= np.abs(len_a - len_b))
    keep_a = np.where(alone & a_longer, budget - len_b, keep_a)
    keep_b = np.where(alone & ~a_longer, budget - len_a, keep_b)
    both = pair & ~alone
    keep_a = np.where(both, (budget + 1) // 2, keep_a)
    keep_b = np.where(both, budget // 2, keep_b)
    return keep_a, keep_b


def _assemble(a_ids, a_start, keep_a, b_ids, b_start, keep_b, has_b, cls_id, sep_id) -> EncodedRows:
    """[CLS] a[:keep_a] [SEP] (b[:keep_b] [SEP]) for every row, as flat arrays, without a Python loop."""
    n = len(keep_a)
    lengths = (keep_a + keep_b + 2 + has_b).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.empty(int(offsets[-1]), dtype=np.int32)
    starts = offsets[:-1]
    ids[starts] = cls_id
    _scatter(ids, starts + 1, a_ids, a_start, keep_a)
    ids[starts + 1 + keep_a] = sep_id
    _scatter(ids, starts + 2 + keep_a, b_ids, b_start, keep_b)
    ids[(starts + lengths - 1)[has_b]] = sep_id
    return EncodedRows(ids, offsets, (keep_a + 2).astype(np.int32), lengths.astype(np.int32))


def _scatter(out, out_start, src, src_start, count) -> None:
    """out[out_start[i] + j] = src[src_start[i] + j] for j < count[i], for every row i."""
    total = int(count.sum())
    if total == 0:
        return
    row = np.repeat(np.arange(len(count)), count)
    within = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    out[out_start[row] + within] = src[src_start[row] + within]


def _unsupported(ref) -> str:
    """Why ``ref`` cannot be mirrored ("" when it can); such tokenizers encode through PaddleNLP only."""
    if not (hasattr(ref, "basic_tokenizer") and hasattr(ref, "wordpiece_tokenizer") and hasattr(ref, "vocab")):
        return f"{type(ref).__name__} is not a WordPiece BertTokenizer"
    if not getattr(ref, "do_basic_tokenize", True):
        return "do_basic_tokenize=False"
    if getattr(ref.basic_tokenizer, "never_split", None):
        return "never_split words"
    if getattr(ref, "added_tokens_encoder", None):
        return "added tokens"
    if getattr(ref, "unique_no_split_tokens", None):  # PaddleNLP would then split "x[SEP]y" at [SEP]
        return "no-split tokens"
    if getattr(ref, "truncation_side", "right") != "right":
        return "truncation_side is not 'right'"
    return ""


def _rust_tokenizer(ref):
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece

    basic = ref.basic_tokenizer
    vocab = {str(token): int(index) for token, index in ref.vocab.token_to_idx.items()}
    model = WordPiece(vocab=vocab, unk_token=str(ref.unk_token), continuing_subword_prefix="##",
                      max_input_chars_per_word=ref.wordpiece_tokenizer.max_input_chars_per_word)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=bool(basic.tokenize_chinese_chars),
        strip_accents=basic.strip_accents, lowercase=bool(ref.do_lower_case))
    symbols = "".join(f"\\x{{{ord(c):x}}}" for c in _PADDLE_EXTRA_SYMBOLS)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.BertPreTokenizer(),  # whitespace, then each punctuation character alone
        pre_tokenizers.Split(Regex(f"[\\p{{S}}{symbols}]"), behavior="isolated"),  # PaddleNLP: symbols too
    ])
    return tokenizer
