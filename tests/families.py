"""Tiny ERNIE and RoBERTa models and vocabularies, built offline (no weights can be downloaded here), for the
family tests: PaddleNLP's config classes with random weights (``pretrained.tiny_model``), a WordPiece vocabulary
for ERNIE and a byte-level BPE vocabulary (vocab.json + merges.txt, trained here with Hugging Face
``tokenizers``) for RoBERTa, each covering the built-in synthetic SST-2 sentences."""
import os

ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0-3 as in Hugging Face's RoBERTa
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# A few Chinese characters, so ERNIE's tiny vocabulary also splits Chinese text character by character.
CHINESE = "我爱北京天安门电影很好看不"


def builtin_texts():
    from dynabert.data.sources import builtin_dataset

    return [e.text_a for split in ("train", "dev") for e in builtin_dataset("sst-2", split)]


def write_wordpiece_vocab(path, texts, extra=CHINESE) -> str:
    words = sorted({w for t in texts for w in t.lower().split()})
    chars = [c for c in dict.fromkeys(extra) if c not in words]
    tokens = WORDPIECE_SPECIALS + words + chars + ["##" + c for c in chars]
    os.makedirs(path, exist_ok=True)
    vocab = os.path.join(path, "vocab.txt")
    with open(vocab, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return vocab


def write_bpe_files(path, texts, vocab_size=400) -> tuple:
    """vocab.json and merges.txt of a byte-level BPE trained on ``texts`` (RoBERTa's special tokens first)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=ROBERTA_SPECIALS, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    os.makedirs(path, exist_ok=True)
    vocab, merges = tokenizer.model.save(str(path))
    return vocab, merges


def tokenizer_for(family: str, path, texts=None):
    """A PaddleNLP tokenizer of ``family`` whose vocabulary (written into ``path``) covers ``texts``
    (``roberta_zh``: PaddleNLP's Chinese RoBERTa's WordPiece tokenizer)."""
    from paddlenlp.transformers import BertTokenizer, ErnieTokenizer, RobertaBPETokenizer, RobertaChineseTokenizer

    texts = builtin_texts() if texts is None else texts
    if family == "roberta":
        vocab, merges = write_bpe_files(path, texts)
        return RobertaBPETokenizer(vocab_file=vocab, merges_file=merges)
    vocab = write_wordpiece_vocab(path, texts)
    cls = {"ernie": ErnieTokenizer, "roberta_zh": RobertaChineseTokenizer}.get(family, BertTokenizer)
    return cls(vocab_file=vocab, do_lower_case=True)


def save_tiny_family(family: str, root, seed: int = 0) -> str:
    """``root/model``: a tiny random ``family`` classifier (2 classes) and its tokenizer, as save_pretrained
    writes them."""
    from dynabert.model.pretrained import save_model, tiny_model

    tokenizer = tokenizer_for(family, os.path.join(root, "vocab"))
    model = tiny_model(family, num_classes=2, seed=seed, vocab_size=len(tokenizer))
    out = os.path.join(root, "model")
    save_model(model, tokenizer, out)
    return out
