r"""PaddleNLP tokenizer ids, fast: Hugging Face ``tokenizers`` (Rust) built from the same vocabulary.

``fast_tokenizer(paddle_tokenizer)`` mirrors a PaddleNLP tokenizer and encodes a list of ``Example`` into flat
numpy arrays, with the tokenizer's special tokens (``[CLS] a [SEP] b [SEP]`` for BERT and ERNIE,
``<s> a </s></s> b </s>`` for RoBERTa) and token types, truncated to ``max_seq_len`` exactly as PaddleNLP 2.8.1
does. Two algorithms are mirrored, by what the tokenizer is, not by model family:

* WordPiece (``FastBertTokenizer``): PaddleNLP's ``BertTokenizer``, ``ErnieTokenizer`` (Chinese characters
  split one by one, as BERT's basic tokenizer does) and ``RobertaChineseTokenizer``;
* byte-level BPE (``FastBpeTokenizer``): PaddleNLP's ``RobertaBPETokenizer`` (GPT-2's byte-level BPE).

PaddleNLP's ids win. For WordPiece, each text goes by the cheapest route that provably gives them:

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

For byte-level BPE the routes are ``rust`` and ``paddle``. PaddleNLP splits a text with GPT-2's pattern
(``'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+``, Python's ``regex``), maps
each piece's UTF-8 bytes to characters and merges them by rank; the Rust ``ByteLevel`` pre-tokenizer uses the
same pattern (another regex engine) and its ``BPE`` model the same merge rule. The pattern sees each character
only through its class (letter, number, whitespace, other; the contractions are ASCII), so a text whose every
character both engines class alike is split alike: each character is verified once per tokenizer on probes
that tell the classes apart (``c``, ``acb``, ``1c2``, ``cca``, `` c``, ``c ``), and texts with any other
character, or with a special-token literal such as ``<s>``, go to PaddleNLP. The Rust model is built from the
reference's own vocabulary and merge ranks in memory, not from the files: PaddleNLP reads merges.txt as
``lines[1:-1]`` (it drops the first line, the ``#version`` header, and the last, so a file without a final
newline loses its last merge), and the mirror must merge as the reference does.

Truncation (``longest_first``, right side) and the special tokens are applied here, in numpy, by PaddleNLP's
rule: remove one token at a time from the longer of the two texts, from the second on a tie. (The Rust
library's own ``longest_first`` gives the extra token of an odd budget to the longer text, PaddleNLP always
to the first, so its truncation is not used.) A tokenizer configuration this module does not mirror (no basic
tokenizer, ``never_split`` words, added tokens, left truncation; for BPE a vocabulary that lacks a byte or a
merge's result) sends every text to route 3 (``paddle``).
"""
import array
import hashlib
import re
from dataclasses import dataclass
from typing import Optional

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
    tokens ([CLS] a [SEP]) have token type 0, the rest (b [SEP]) type 1. (RoBERTa: every token has type 0,
    ``segment_a`` is the row's length.)"""

    ids: np.ndarray  # int32, all rows concatenated, special tokens included
    offsets: np.ndarray  # int64, len(rows) + 1
    segment_a: np.ndarray  # int32
    lengths: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.lengths)


@dataclass(frozen=True)
class Layout:
    """Where a tokenizer puts its special tokens and token types: ``cls a sep`` or ``cls a sep*pair_seps b sep``;
    b (and what follows it) has token type ``b_type`` (1 for BERT and ERNIE, 0 for RoBERTa)."""

    cls_id: int
    sep_id: int
    pair_seps: int
    b_type: int

    @property
    def specials(self) -> tuple:
        """Special tokens added to (a single text, a pair): PaddleNLP's ``num_special_tokens_to_add``."""
        return 2, 2 + self.pair_seps


def layout_of(reference) -> Optional[Layout]:
    """The reference's layout, read from its own ``build_inputs_with_special_tokens`` and
    ``create_token_type_ids_from_sequences``; None for one this module does not mirror."""
    try:
        cls_id, sep_id = int(reference.cls_token_id), int(reference.sep_token_id)
        single = list(reference.build_inputs_with_special_tokens([-1]))
        pair = list(reference.build_inputs_with_special_tokens([-1], [-2]))
        types = list(reference.create_token_type_ids_from_sequences([-1], [-2]))
    except (AttributeError, TypeError, ValueError):
        return None
    seps = len(pair) - 4
    if single != [cls_id, -1, sep_id] or seps < 1 or pair != [cls_id, -1] + [sep_id] * seps + [-2, sep_id]:
        return None
    for b_type in (0, 1):
        if types == [0] * (2 + seps) + [b_type] * 2:
            return Layout(cls_id, sep_id, seps, b_type)
    return None


class FastTokenizer:
    """What both mirrors share: the layout, truncation and assembly of rows, special-token literals, the
    per-character check and the route counts. Subclasses give ``encode_texts``, ``agrees_on`` and ``settings``."""

    def __init__(self, reference):
        self.reference = reference
        self.layout = layout_of(reference)
        self.unsupported = "" if self.layout is not None else "special tokens or token types laid out otherwise"
        self.specials = [str(t) for t in reference.all_special_tokens]
        # A cheap pre-test for special-token literals: a character every special token contains ("[", "<").
        common = set.intersection(*(set(s) for s in self.specials)) if self.specials else set()
        self._special_start = min(common) if common else ""
        self.cls_id = int(reference.cls_token_id)
        self.sep_id = int(reference.sep_token_id)
        self.vocab_size = len(reference)
        self.route_counts = {"ascii": 0, "rust": 0, "paddle": 0}
        self._verified = {}  # character -> True when both pipelines treat it alike

    # ------------------------------------------------------------------------------------------
    # encoding
    # ------------------------------------------------------------------------------------------
    def encode(self, examples, max_seq_len: int) -> EncodedRows:
        """Encode Examples (``text_b`` None for single sentences) like ``data.encode`` does."""
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len must be at least 3 ([CLS] x [SEP]), got {max_seq_len}")
        if self.layout is None:
            return _rows_of(encode_features(examples, self.reference, max_seq_len), self.route_counts)
        n = len(examples)
        has_b = np.fromiter((e.text_b is not None for e in examples), dtype=bool, count=n)
        a_ids, a_off = self.encode_texts([e.text_a for e in examples])
        b_rows = np.flatnonzero(has_b)
        b_ids, b_off_dense = self.encode_texts([examples[i].text_b for i in b_rows])
        b_len = np.zeros(n, dtype=np.int64)
        b_len[b_rows] = np.diff(b_off_dense)
        b_start = np.zeros(n, dtype=np.int64)
        b_start[b_rows] = b_off_dense[:-1]
        keep_a, keep_b = truncated_lengths(np.diff(a_off), b_len, has_b, max_seq_len, self.layout.specials)
        return _assemble(a_ids, a_off[:-1], keep_a, b_ids, b_start, keep_b, has_b, self.layout)

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
        raise NotImplementedError

    def settings(self) -> dict:
        """Everything about the reference tokenizer that determines its ids."""
        raise NotImplementedError

    def agrees_on(self, char: str) -> bool:
        """Whether PaddleNLP and the Rust pipeline split and normalize ``char`` alike in any context."""
        raise NotImplementedError

    def _paddle_ids(self, texts, rows, pieces) -> None:
        ref = self.reference
        for i in rows:
            pieces[i] = ref.convert_tokens_to_ids(ref.tokenize(texts[i]))

    def _count(self, texts, rust_rows, paddle_rows) -> None:
        self.route_counts["paddle"] += len(paddle_rows)
        self.route_counts["rust"] += len(rust_rows)
        self.route_counts["ascii"] += len(texts) - len(rust_rows) - len(paddle_rows)

    def _has_special_literal(self, text: str) -> bool:
        return any(s in text for s in self.specials) if self._special_start in text else False

    def _all_verified(self, text: str) -> bool:
        verified = self._verified
        for char in set(text):
            ok = verified.get(char)
            if ok is None:
                ok = verified[char] = self.agrees_on(char)
            if not ok:
                return False
        return True


def fast_tokenizer(reference) -> FastTokenizer:
    """The mirror of a PaddleNLP tokenizer: byte-level BPE for RoBERTa's, WordPiece otherwise (a tokenizer it
    cannot mirror encodes every text through PaddleNLP, ``unsupported`` says why)."""
    if hasattr(reference, "bpe_ranks") and hasattr(reference, "byte_encoder"):
        return FastBpeTokenizer(reference)
    return FastBertTokenizer(reference)


class FastBertTokenizer(FastTokenizer):
    """The ids of a PaddleNLP WordPiece tokenizer (``BertTokenizer``, ``ErnieTokenizer``,
    ``RobertaChineseTokenizer``: ``reference``), computed with Hugging Face ``tokenizers``."""

    def __init__(self, reference):
        super().__init__(reference)
        self.unsupported = _unsupported(reference) or self.unsupported
        self._word_cache = {}
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
            "vocab_size": len(ref.vocab),
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
        self._paddle_ids(texts, paddle_rows, pieces)
        self._count(texts, rust_rows, paddle_rows)
        return _flatten(pieces)

    # ------------------------------------------------------------------------------------------
    # per-character agreement check (route 2)
    # ------------------------------------------------------------------------------------------
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


class FastBpeTokenizer(FastTokenizer):
    """The ids of PaddleNLP's byte-level BPE tokenizer (``RobertaBPETokenizer``: ``reference``), computed with
    Hugging Face ``tokenizers``: its ``ByteLevel`` pre-tokenizer and a ``BPE`` model holding the reference's
    vocabulary and merge ranks (see the module docstring)."""

    def __init__(self, reference):
        super().__init__(reference)
        self.unsupported = _bpe_unsupported(reference) or self.unsupported
        self._prefix_space = bool(getattr(reference, "add_prefix_space", False))
        if not self.unsupported:
            self._rust = _rust_bpe(reference)

    def settings(self) -> dict:
        ref = self.reference
        vocab = "\n".join(f"{t}\t{i}" for t, i in sorted(ref.encoder.items(), key=lambda item: item[1]))
        merges = "\n".join(f"{a} {b}" for (a, b), _ in sorted(ref.bpe_ranks.items(), key=lambda item: item[1]))
        return {
            "class": type(ref).__name__,
            "vocab_sha256": hashlib.sha256(vocab.encode("utf-8")).hexdigest(),
            "merges_sha256": hashlib.sha256(merges.encode("utf-8")).hexdigest(),
            "vocab_size": self.vocab_size,
            "pattern": getattr(getattr(ref, "pat", None), "pattern", None),
            "add_prefix_space": self._prefix_space,
            "special_tokens": self.specials,
            "added_tokens": sorted(getattr(ref, "added_tokens_encoder", {}) or {}),
            "layout": None if self.layout is None else [self.layout.pair_seps, self.layout.b_type],
            "truncation": TRUNCATION,
            "truncation_side": getattr(ref, "truncation_side", "right"),
        }

    def encode_texts(self, texts):
        pieces = [None] * len(texts)
        rust_rows, paddle_rows = [], []
        if self.unsupported:
            paddle_rows = list(range(len(texts)))
        else:
            for i, text in enumerate(texts):
                if self._has_special_literal(text) or not self._all_verified(text):
                    paddle_rows.append(i)
                else:
                    rust_rows.append(i)
            if rust_rows:
                batch = [self._prefixed(texts[i]) for i in rust_rows]
                for i, encoding in zip(rust_rows, self._rust.encode_batch(batch, add_special_tokens=False)):
                    pieces[i] = encoding.ids
        self._paddle_ids(texts, paddle_rows, pieces)
        self._count(texts, rust_rows, paddle_rows)
        return _flatten(pieces)

    def _prefixed(self, text: str) -> str:
        """PaddleNLP's ``prepare_for_tokenization``: a space before a text that starts with none."""
        return " " + text if self._prefix_space and text and not text[0].isspace() else text

    def agrees_on(self, char: str) -> bool:
        for probe in (char, f"a{char}b", f"1{char}2", f"{char}{char}a", f" {char}", f"{char} "):
            try:
                rust_words = [w for w, _ in self._rust.pre_tokenizer.pre_tokenize_str(probe)]
                if rust_words != self.paddle_words(probe):
                    return False
            except Exception:  # e.g. a lone surrogate has no UTF-8 form
                return False
        return True

    def paddle_words(self, text: str) -> list:
        """PaddleNLP's pieces before BPE, byte-mapped (``GPTTokenizer._tokenize``)."""
        ref = self.reference
        return ["".join(ref.byte_encoder[b] for b in piece.encode("utf-8")) for piece in ref.pat.findall(text)]


def _flatten(pieces):
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = array.array("i")
    for p in pieces:
        flat.extend(p)
    return np.frombuffer(flat, dtype=np.int32) if len(flat) else np.zeros(0, np.int32), offsets


def encode_features(examples, reference, max_seq_len):
    from dynabert.data.features import encode

    return encode(examples, reference, max_seq_len)


def _rows_of(features, route_counts) -> EncodedRows:
    """EncodedRows of PaddleNLP's own Features (a tokenizer whose layout is not mirrored)."""
    route_counts["paddle"] += len(features)
    lengths = np.asarray([len(f.input_ids) for f in features], dtype=np.int64)
    offsets = np.zeros(len(features) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    segment_a = []
    for f in features:
        types = list(f.token_type_ids)
        zeros = types.index(1) if 1 in types else len(types)
        if any(t != 1 for t in types[zeros:]):
            raise ValueError(f"token types {types} are not zeros then ones")
        segment_a.append(zeros)
    ids = np.asarray([i for f in features for i in f.input_ids], dtype=np.int32)
    return EncodedRows(ids, offsets, np.asarray(segment_a, dtype=np.int32), lengths.astype(np.int32))


def truncated_lengths(len_a, len_b, has_b, max_seq_len: int, specials=(2, 3)):
    """Lengths of a and b kept by PaddleNLP's ``longest_first`` truncation (``truncate_sequences``, right
    side): while too long, drop the last token of a if a is longer than b, else of b. ``specials``: the special
    tokens a single text and a pair get (2, 3 for BERT; 2, 4 for RoBERTa)."""
    has_b = np.asarray(has_b, dtype=bool)
    len_a = np.asarray(len_a, dtype=np.int64)
    len_b = np.where(has_b, np.asarray(len_b, dtype=np.int64), 0)
    budget = max_seq_len - np.where(has_b, specials[1], specials[0])  # tokens left for the texts
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
    # (A pair budget below 0, RoBERTa at max_seq_len 3, empties both texts, as PaddleNLP's loop does.)
    keep_a = np.where(both, np.maximum((budget + 1) // 2, 0), keep_a)
    keep_b = np.where(both, np.maximum(budget // 2, 0), keep_b)
    return keep_a, keep_b


def _assemble(a_ids, a_start, keep_a, b_ids, b_start, keep_b, has_b, layout: Layout) -> EncodedRows:
    """cls a[:keep_a] sep (sep.. b[:keep_b] sep) for every row, as flat arrays, without a Python loop."""
    n = len(keep_a)
    seps = layout.pair_seps
    lengths = (keep_a + keep_b + 2 + seps * has_b).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.empty(int(offsets[-1]), dtype=np.int32)
    starts = offsets[:-1]
    ids[starts] = layout.cls_id
    _scatter(ids, starts + 1, a_ids, a_start, keep_a)
    ids[starts + 1 + keep_a] = layout.sep_id
    for extra in range(1, seps):  # RoBERTa's second separator between the texts
        ids[(starts + 1 + keep_a + extra)[has_b]] = layout.sep_id
    _scatter(ids, starts + 1 + seps + keep_a, b_ids, b_start, np.where(has_b, keep_b, 0))
    ids[(starts + lengths - 1)[has_b]] = layout.sep_id
    segment_a = lengths if layout.b_type == 0 else keep_a + 2
    return EncodedRows(ids, offsets, segment_a.astype(np.int32), lengths.astype(np.int32))


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


_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _bpe_unsupported(ref) -> str:
    """Why a byte-level BPE ``ref`` cannot be mirrored ("" when it can)."""
    from tokenizers import pre_tokenizers

    if not all(hasattr(ref, a) for a in ("encoder", "bpe_ranks", "byte_encoder", "pat")):
        return f"{type(ref).__name__} is not a byte-level BPE tokenizer"
    if getattr(ref.pat, "pattern", None) != _GPT2_PATTERN:
        return "a pre-tokenization pattern other than GPT-2's"
    if set(ref.byte_encoder.values()) != set(pre_tokenizers.ByteLevel.alphabet()):
        return "a byte-to-character table other than GPT-2's"
    vocab = ref.encoder
    if any(c not in vocab for c in ref.byte_encoder.values()):
        return "a vocabulary without every byte"  # PaddleNLP maps such a byte to unk
    if any(a not in vocab or b not in vocab or a + b not in vocab for a, b in ref.bpe_ranks):
        return "merges whose tokens are not in the vocabulary"
    if getattr(ref, "added_tokens_encoder", None):
        return "added tokens"
    if getattr(ref, "truncation_side", "right") != "right":
        return "truncation_side is not 'right'"
    return ""


def _rust_bpe(ref):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import BPE

    merges = [pair for pair, _ in sorted(ref.bpe_ranks.items(), key=lambda item: item[1])]
    model = BPE(vocab={str(t): int(i) for t, i in ref.encoder.items()}, merges=merges, unk_token=None,
                fuse_unk=False)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return tokenizer


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
