"""ERNIE and RoBERTa through the model code, in-process, against the independent NumPy reference
(tests/reference_bert.py): the forward (ERNIE 3.0's task-type embedding, RoBERTa's positions counted from the
padding index), importance, reordering, the width supernet, depth, the distillation hooks, export and its two
loaders; Hugging Face RoBERTa conversion; what is refused. BERT's own tests cover BERT; the whole pipeline per
family runs in tests/test_family_pipeline.py."""
import json
import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from safetensors.numpy import save_file

from dynabert.errors import UserError
from dynabert.model import families, pretrained
from dynabert.model.depth import DepthSupernet, kept_layers
from dynabert.model.export import (
    extract_submodel,
    extract_submodel_at_depth,
    inference_predictor,
    load_exported,
    run_predictor,
    save_exported,
)
from dynabert.model.importance import compute_importance
from dynabert.model.outputs import HiddenStates
from dynabert.model.reorder import reorder_heads_and_neurons
from dynabert.model.supernet import Supernet
from dynabert.train.step import supernet_step
from tests.families import tokenizer_for, write_bpe_files
from tests.reference_bert import (
    cross_entropy,
    hf_encoder_weights,
    hf_to_paddle_weights,
    model_weights,
    numpy_bert_forward,
    numpy_bert_logits,
    random_batch,
)

FAMILIES = ("ernie", "roberta")  # BERT: tests/test_models.py, test_supernet.py, test_export.py, ...
# PaddleNLP's Chinese RoBERTa (hfl/*): WordPiece, padding id 0, [CLS] 101, two token types, BERT's positions
ROBERTA_ZH = dict(pad_token_id=0, cls_token_id=101, type_vocab_size=2, max_position_embeddings=64)
VARIANTS = FAMILIES + ("roberta_zh",)
WIDTHS = (1.0, 0.75, 0.5, 0.25)


def tiny(variant, **kwargs):
    """A tiny model of a family, or of ``roberta_zh``: RoBERTa configured as PaddleNLP's Chinese RoBERTa."""
    if variant == "roberta_zh":
        return pretrained.tiny_model("roberta", **{**ROBERTA_ZH, **kwargs})
    return pretrained.tiny_model(variant, **kwargs)


def family_batch(family, seed=1, b=3, t=7, labels=False):
    """random_batch with RoBERTa's conventions: padding positions hold its padding id (1: its positions depend on
    it) and every token type is 0. (``roberta_zh`` pads with 0 and has two token types, as BERT.)"""
    batch = random_batch(seed, b, t, {-1: -2, 1: 3} if b > 2 else {-1: -2}, labels=labels)
    if family == "roberta":
        batch["input_ids"][batch["attention_mask"] == 0] = 1
        batch["token_type_ids"][:] = 0
    return batch


def tensors(batch):
    return {k: paddle.to_tensor(v) for k, v in batch.items()}


def logits_of(model, batch):
    t = tensors(batch)
    with paddle.no_grad():
        return model(t["input_ids"], token_type_ids=t["token_type_ids"], attention_mask=t["attention_mask"]).numpy()


def reference(model, batch, family, **kwargs):
    return numpy_bert_forward(model_weights(model), model.config, batch["input_ids"], batch["token_type_ids"],
                              batch["attention_mask"], family=family.split("_")[0], **kwargs)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def teacher(variant):
    model = tiny(variant, seed=0)
    rng = np.random.RandomState(11)  # a non-trivial order, so "the first heads" are not the original first heads
    reorder_heads_and_neurons(model, rng.random_sample((2, 4)), rng.random_sample((2, 64)))
    return model


@pytest.fixture(scope="module")
def supernet(teacher):
    sn = Supernet(teacher, WIDTHS)
    sn.eval()
    return sn


# --------------------------------------------------------------------------------------------------
# the forward against the reference
# --------------------------------------------------------------------------------------------------


def test_forward_matches_numpy_reference_and_the_family_specifics_matter(teacher, variant):
    batch = family_batch(variant)
    expected = reference(teacher, batch, variant)
    np.testing.assert_allclose(logits_of(teacher, batch), expected["logits"], rtol=0, atol=1e-5)
    states = HiddenStates(teacher)
    logits_of(teacher, batch)
    got = states.take()
    states.remove()
    real = batch["attention_mask"][..., None] > 0
    assert len(got) == 1 + teacher.config.num_hidden_layers
    for mine, ref in zip(got, expected["hidden_states"]):
        np.testing.assert_allclose(np.where(real, mine.numpy(), 0), np.where(real, ref, 0), rtol=0, atol=1e-5)
    # What makes the family differ is what the test sees: the reference without it is far off.
    if variant == "roberta":  # positions 0..T-1 instead of counted from the padding index
        wrong = numpy_bert_forward({k.replace("roberta.", "bert."): v for k, v in model_weights(teacher).items()},
                                   teacher.config, batch["input_ids"], batch["token_type_ids"],
                                   batch["attention_mask"], family="bert")["hidden_states"][0]
    elif variant == "roberta_zh":  # counted from the padding index, as PaddleNLP 2.8.1 does (defect 13)
        config = dict(teacher.config.to_dict(), cls_token_id=0)
        wrong = numpy_bert_forward(model_weights(teacher), config, batch["input_ids"], batch["token_type_ids"],
                                   batch["attention_mask"], family="roberta")["hidden_states"][0]
    else:  # no task-type embedding
        config = dict(teacher.config.to_dict(), use_task_id=False)
        wrong = numpy_bert_forward(model_weights(teacher), config, batch["input_ids"], batch["token_type_ids"],
                                   batch["attention_mask"], family="ernie")["hidden_states"][0]
    assert np.abs(wrong - expected["hidden_states"][0]).max() > 0.1


def test_ernie_task_type_embedding_is_row_task_id():
    model = pretrained.tiny_model("ernie", seed=2)
    assert model.config.use_task_id and model.config.task_id == 1
    batch = family_batch("ernie")
    np.testing.assert_allclose(logits_of(model, batch), reference(model, batch, "ernie")["logits"], rtol=0, atol=1e-5)
    config = dict(model.config.to_dict(), task_id=0)
    other = numpy_bert_forward(model_weights(model), config, batch["input_ids"], batch["token_type_ids"],
                               batch["attention_mask"], family="ernie")["logits"]
    assert np.abs(other - logits_of(model, batch)).max() > 1e-3


def test_ernie_layer_norms_use_1e_12_whatever_the_config_says():
    """What README says: PaddleNLP 2.8.1's ErniePretrainedModel sets every LayerNorm's epsilon to 1e-12 and
    ignores config.layer_norm_eps (BERT and RoBERTa read it). If this fails, PaddleNLP reads it now."""
    model = pretrained.tiny_model("ernie", layer_norm_eps=1e-5)
    assert {m._epsilon for m in model.sublayers() if isinstance(m, paddle.nn.LayerNorm)} == {1e-12}
    roberta = pretrained.tiny_model("roberta", layer_norm_eps=1e-3)
    assert {m._epsilon for m in roberta.sublayers() if isinstance(m, paddle.nn.LayerNorm)} == {1e-3}


def test_family_adapter_finds_every_part(teacher, variant):
    family = variant.split("_")[0]
    fam = families.family_of(teacher)
    assert fam.name == family and fam.backbone(teacher) is getattr(teacher, family)
    assert len(fam.blocks(teacher)) == 2 and isinstance(fam.attention(fam.blocks(teacher)[0]),
                                                        paddle.nn.MultiHeadAttention)
    assert fam.pooler(teacher) is (teacher.classifier.dense if family == "roberta" else teacher.ernie.pooler.dense)
    assert all(name.startswith(fam.block_prefix) for name in teacher.state_dict() if ".layers." in name)


# --------------------------------------------------------------------------------------------------
# importance and reordering
# --------------------------------------------------------------------------------------------------


def test_head_and_neuron_importance_match_finite_differences_of_the_reference(family):
    model = pretrained.tiny_model(family, seed=3)
    batch = family_batch(family, seed=5, b=4, t=8, labels=True)
    heads, neurons = compute_importance(model, [tensors(batch)], F.cross_entropy)
    weights, eps = model_weights(model), 1e-4

    def loss(w=weights, head_mask=None):
        return cross_entropy(numpy_bert_logits(w, model.config, batch["input_ids"], batch["token_type_ids"],
                                               batch["attention_mask"], head_mask=head_mask, family=family),
                             batch["labels"])

    for layer, head in ((0, 1), (1, 3)):
        mask = np.ones((2, 4))
        mask[layer, head] += eps
        plus = loss(head_mask=mask)
        mask[layer, head] -= 2 * eps
        grad = (plus - loss(head_mask=mask)) / (2 * eps)
        assert heads[layer, head] == pytest.approx(abs(grad), rel=1e-3, abs=1e-6)
    layer, neuron = 1, 7
    prefix = f"{family}.encoder.layers.{layer}."

    def scaled(a, parts):
        w = dict(weights)
        for name, index in parts:
            w[name] = w[name].copy()
            w[name][index] *= 1 + a
        return loss(w)

    first = [(prefix + "linear1.weight", (slice(None), neuron)), (prefix + "linear1.bias", neuron)]
    second = [(prefix + "linear2.weight", (neuron, slice(None)))]
    expected = sum(abs((scaled(eps, p) - scaled(-eps, p)) / (2 * eps)) for p in (first, second))
    assert neurons[layer, neuron] == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_reordering_keeps_the_function(family):
    model = pretrained.tiny_model(family, seed=4)
    batch = family_batch(family)
    before = logits_of(model, batch)
    rng = np.random.RandomState(0)
    reorder_heads_and_neurons(model, rng.random_sample((2, 4)), rng.random_sample((2, 64)))
    np.testing.assert_allclose(logits_of(model, batch), before, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# supernet, depth, distillation hooks
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_supernet_and_extracted_submodel_match_the_reference_sub_model(supernet, teacher, variant, width):
    batch = family_batch(variant)
    supernet.set_width(width)
    from_supernet = logits_of(supernet, batch)
    ref = reference(teacher, batch, variant, heads_kept=round(width * 4), ffn_kept=int(width * 64))["logits"]
    np.testing.assert_allclose(from_supernet, ref, rtol=0, atol=1e-5)
    sub = extract_submodel(supernet, width)
    assert type(sub) is type(teacher)
    np.testing.assert_allclose(logits_of(sub, batch), from_supernet, rtol=0, atol=1e-5)
    assert families.family_of(sub).attention(families.family_of(sub).blocks(sub)[0]).num_heads == round(width * 4)


def test_depth_submodel_matches_the_reference(supernet, teacher, variant):
    batch = family_batch(variant)
    depth_net = DepthSupernet(supernet, (1.0, 0.5))
    depth_net.set_width(0.5)
    with depth_net.at_depth(0.5):
        from_supernet = logits_of(depth_net, batch)
    kept = kept_layers(2, 0.5)
    ref = reference(teacher, batch, variant, heads_kept=2, ffn_kept=32, layers_kept=kept)["logits"]
    np.testing.assert_allclose(from_supernet, ref, rtol=0, atol=1e-5)
    small = extract_submodel_at_depth(supernet, 0.5, 0.5)
    assert len(families.family_of(small).blocks(small)) == len(kept)
    np.testing.assert_allclose(logits_of(small, batch), ref, rtol=0, atol=1e-5)


def test_distillation_hooks_see_every_layer_and_train_the_student_only(family):
    teacher = pretrained.tiny_model(family, seed=6)
    supernet = Supernet(teacher, (1.0, 0.5))
    student_states, teacher_states = HiddenStates(supernet.model), HiddenStates(teacher)
    with paddle.no_grad():  # move the student off the teacher, so every term is non-zero
        for p in supernet.parameters():
            p.set_value(p.numpy() * 1.01)
    batch = tensors(family_batch(family, labels=True))
    losses = supernet_step(supernet, student_states, teacher, teacher_states, batch, (1.0, 0.5), 0.1, 0.1, False)
    for width in (1.0, 0.5):
        assert float(losses[width]["rep"]) > 0 and float(losses[width]["logit"]) > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in supernet.parameters())


# --------------------------------------------------------------------------------------------------
# export and its two loaders
# --------------------------------------------------------------------------------------------------


def test_export_both_loaders_give_the_supernets_logits(supernet, teacher, variant, tmp_path):
    family = variant.split("_")[0]
    supernet.set_width(0.5)
    sub = extract_submodel(supernet, 0.5)
    tokenizer = tokenizer_for(variant, tmp_path / "vocab")
    out = str(tmp_path / "export")
    meta = save_exported(sub, 0.5, tokenizer, out)
    assert meta["family"] == family and meta["num_heads"] == 2
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["model_type"] == family
    loaded = load_exported(out)
    assert type(loaded) is type(teacher)
    predictor = inference_predictor(out)
    assert sorted(predictor.get_input_names()) == ["attention_mask", "input_ids", "token_type_ids"]
    for b, t in ((3, 7), (2, 11)):
        batch = family_batch(variant, seed=b + t, b=b, t=t)
        expected = logits_of(supernet, batch)
        np.testing.assert_allclose(expected, reference(teacher, batch, variant, heads_kept=2, ffn_kept=32)["logits"],
                                   rtol=0, atol=1e-5)
        np.testing.assert_allclose(logits_of(loaded, batch), expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(run_predictor(predictor, batch), expected, rtol=0, atol=1e-5)
    assert type(pretrained.load_tokenizer(out)) is type(tokenizer)


# --------------------------------------------------------------------------------------------------
# saving and loading, names, what is refused
# --------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(family, tmp_path):
    model = pretrained.tiny_model(family, num_classes=3, seed=7, vocab_size=400)
    tokenizer = tokenizer_for(family, tmp_path / "vocab")
    out = str(tmp_path / "saved")
    pretrained.save_model(model, tokenizer, out)
    loaded = pretrained.load_model(out, num_classes=3)
    assert type(loaded) is type(model)
    batch = family_batch(family)
    np.testing.assert_array_equal(logits_of(loaded, batch), logits_of(model, batch))
    again = pretrained.load_tokenizer(out)
    assert type(again) is type(tokenizer)
    text = "the movie was not bad at all ."
    assert again(text, "我爱电影")["input_ids"] == tokenizer(text, "我爱电影")["input_ids"]
    with pytest.raises(UserError, match="3 classes but 2"):
        pretrained.load_model(out, 2)


def test_builtin_names_are_told_apart_offline():
    assert families.family_of_name("ernie-3.0-medium-zh") is families.ERNIE
    assert families.family_of_name("roberta-base") is families.ROBERTA
    assert families.family_of_name("hfl/rbt3") is families.ROBERTA
    assert families.family_of_name("bert-base-uncased") is families.BERT
    assert families.family_of_name("no-such-model") is None
    assert pretrained.max_positions("ernie-3.0-medium-zh")[0] == 2048
    # PaddleNLP's Chinese RoBERTa numbers positions from 0, as BERT (defect 13): all 512 are usable.
    assert pretrained.max_positions("hfl/rbt3") == (512, "PaddleNLP's hfl/rbt3")


@pytest.mark.parametrize("name, family", [("ernie-3.0-medium-zh", "ernie"), ("hfl/rbt3", "roberta")])
def test_a_paddlenlp_name_loads_through_its_family(monkeypatch, name, family):
    """A model name goes to its family's PaddleNLP classes (the download itself needs network: PaddleNLP's
    from_pretrained is replaced here by a tiny model of the name's configuration) and gets the family's
    per-instance fixes: hfl/rbt3 numbers its positions from 0 (defect 13)."""
    fam = families.get(family)
    builtin = dict(fam.classifier_class.pretrained_init_configuration[name], hidden_size=16, num_attention_heads=4,
                   intermediate_size=32, num_hidden_layers=1, vocab_size=100)
    asked = []

    def config_from_pretrained(cls, source, *args, **kwargs):
        asked.append(("config", cls.__name__, source))
        return fam.config_class(**builtin)

    def model_from_pretrained(cls, source, *args, config=None, **kwargs):
        asked.append(("model", cls.__name__, source))
        return cls(config)

    monkeypatch.setattr(fam.config_class, "from_pretrained", classmethod(config_from_pretrained))
    monkeypatch.setattr(fam.classifier_class, "from_pretrained", classmethod(model_from_pretrained))
    model = pretrained.load_model(name, num_classes=3)
    assert asked == [("config", fam.config_class.__name__, name), ("model", fam.classifier_class.__name__, name)]
    assert type(model) is fam.classifier_class and model.config.num_labels == 3 and not model.training
    if family == "roberta":
        assert type(fam.embeddings(model)).__name__ == "_ZeroBasedPositionEmbeddings"


def test_roberta_position_limit_is_refused_beyond_the_offset(family_model_dir):
    from dynabert.train.preflight import check_max_seq_len

    model_dir = family_model_dir("roberta")
    check_max_seq_len(64, model_dir)
    with pytest.raises(UserError) as info:
        check_max_seq_len(65, model_dir)
    assert str(info.value) == (f"data.max_seq_len: 65 exceeds the model's max_position_embeddings (64, {model_dir}/"
                               "config.json: 66 positions less 2: RoBERTa positions start after the padding index 1); "
                               "set it to at most 64")


def test_a_vocabulary_larger_than_the_embedding_is_named_by_its_file(tmp_path):
    from dynabert.train.preflight import check_vocabulary

    tokenizer = tokenizer_for("roberta", tmp_path)
    check_vocabulary(tokenizer, pretrained.tiny_model("roberta", vocab_size=len(tokenizer)), "m")
    with pytest.raises(UserError, match="m: vocab.json has 400 tokens but the model's embedding has 64 rows"):
        check_vocabulary(tokenizer, pretrained.tiny_model("roberta", vocab_size=64), "m")


@pytest.mark.parametrize("config, needle", [
    ({"model_type": "xlnet"}, "model_type 'xlnet' is not supported (supported model families: bert, ernie, roberta)"),
    ({"architectures": ["AlbertForMaskedLM"]},
     "architecture 'AlbertForMaskedLM' is not supported (supported model families: bert, ernie, roberta)"),
    ({"model_type": "ernie"}, "Hugging Face ERNIE checkpoints are not converted (Hugging Face model types "
                              "converted: bert, roberta)"),
])
def test_unsupported_architectures_are_refused_in_one_line(tmp_path, config, needle):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    save_file({"x": np.zeros(1, np.float32)}, str(d / "model.safetensors"))
    with pytest.raises(UserError) as info:
        pretrained.load_model(str(d), 2)
    assert needle in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="model class Linear is not supported"):
        families.family_of(paddle.nn.Linear(2, 2))


# --------------------------------------------------------------------------------------------------
# Hugging Face RoBERTa
# --------------------------------------------------------------------------------------------------

HF_ROBERTA_CONFIG = {
    "architectures": ["RobertaForSequenceClassification"], "model_type": "roberta", "hidden_act": "gelu",
    "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 32, "vocab_size": 400,
    "max_position_embeddings": 20, "type_vocab_size": 1, "layer_norm_eps": 1e-5, "pad_token_id": 1,
    "bos_token_id": 0, "eos_token_id": 2, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02, "use_cache": True,
}


def hf_roberta_weights(seed=0):
    """A Hugging Face RobertaForSequenceClassification checkpoint (``roberta.`` prefix, its own classification
    head) plus a pooler and an MLM head it would not use. The padding rows of the word and position embeddings
    are zero, as in real checkpoints (fairseq/Hugging Face never train them)."""
    c = HF_ROBERTA_CONFIG
    h = c["hidden_size"]
    bare = hf_encoder_weights(c, seed)
    bare["embeddings.word_embeddings.weight"][c["pad_token_id"]] = 0
    bare["embeddings.position_embeddings.weight"][c["pad_token_id"]] = 0
    checkpoint = {"roberta." + k: v for k, v in bare.items()}
    checkpoint["roberta.embeddings.position_ids"] = np.arange(c["max_position_embeddings"], dtype=np.int64)[None]
    checkpoint.update({"classifier.dense.weight": np.ones((h, h), np.float32),
                       "classifier.dense.bias": np.ones(h, np.float32),
                       "classifier.out_proj.weight": np.ones((5, h), np.float32),
                       "classifier.out_proj.bias": np.ones(5, np.float32),
                       "lm_head.bias": np.ones(c["vocab_size"], np.float32)})
    return bare, checkpoint


def write_hf_roberta(path, checkpoint, safetensors=True):
    from tests.families import builtin_texts

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(HF_ROBERTA_CONFIG, f)
    if safetensors:
        save_file(checkpoint, os.path.join(path, "model.safetensors"))
    write_bpe_files(path, builtin_texts(), vocab_size=HF_ROBERTA_CONFIG["vocab_size"])
    return str(path)


def padded_roberta_batch():
    ids = np.array([[0, 45, 311, 97, 2, 1, 1], [0, 9, 399, 250, 17, 42, 2], [0, 5, 2, 1, 1, 1, 1]], np.int64)
    mask = (ids != 1).astype(np.float32)
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}


@pytest.mark.parametrize("weights_file", ["safetensors", "pytorch_model.bin"])
def test_hf_roberta_conversion_matches_the_numpy_reference(tmp_path, monkeypatch, weights_file):
    from tests.test_models import write_torch_bin

    bare, checkpoint = hf_roberta_weights()
    d = write_hf_roberta(tmp_path / "hf", checkpoint, safetensors=weights_file == "safetensors")
    if weights_file != "safetensors":
        write_torch_bin(os.path.join(d, "pytorch_model.bin"), checkpoint, monkeypatch)
    before = sorted(os.listdir(d))
    model = pretrained.load_model(d, num_classes=2)
    assert sorted(os.listdir(d)) == before  # nothing written there
    assert type(model).__name__ == "RobertaForSequenceClassification"
    assert {layer._epsilon for layer in model.sublayers() if isinstance(layer, paddle.nn.LayerNorm)} == {1e-5}
    batch = padded_roberta_batch()
    weights = hf_to_paddle_weights(bare, HF_ROBERTA_CONFIG, family="roberta")
    ref = numpy_bert_forward(weights, HF_ROBERTA_CONFIG, batch["input_ids"], batch["token_type_ids"],
                             batch["attention_mask"], family="roberta")
    t = tensors(batch)
    with paddle.no_grad():
        sequence, _ = model.roberta(t["input_ids"], token_type_ids=t["token_type_ids"],
                                    attention_mask=t["attention_mask"])
    np.testing.assert_allclose(sequence.numpy(), ref["sequence"], rtol=0, atol=1e-5)
    assert np.abs(ref["sequence"]).max() > 0.5
    head = {k: v for k, v in model_weights(model).items() if k.startswith("classifier.")}
    assert not np.allclose(head["classifier.out_proj.weight"], 1.0)  # a new head, not the checkpoint's
    expected = numpy_bert_forward({**weights, **head}, HF_ROBERTA_CONFIG, batch["input_ids"], batch["token_type_ids"],
                                  batch["attention_mask"], family="roberta")["logits"]
    np.testing.assert_allclose(logits_of(model, batch), expected, rtol=0, atol=1e-5)
    # BERT's positions (0..T-1) would be far off: the offset is what the comparison checks
    bert_positions = numpy_bert_forward({k.replace("roberta.", "bert."): v for k, v in weights.items()},
                                        HF_ROBERTA_CONFIG, batch["input_ids"], batch["token_type_ids"],
                                        batch["attention_mask"], family="bert")
    assert np.abs(bert_positions["sequence"] - ref["sequence"]).max() > 0.1


def test_hf_roberta_tokenizer_limit_and_converter_tool(tmp_path):
    from paddlenlp.transformers import RobertaBPETokenizer

    from tools.convert_checkpoint import main as convert

    _, checkpoint = hf_roberta_weights()
    d = write_hf_roberta(tmp_path / "hf", checkpoint)
    tokenizer = pretrained.load_tokenizer(d)
    assert isinstance(tokenizer, RobertaBPETokenizer) and tokenizer.pad_token_id == 1
    assert tokenizer("the movie", "was good")["input_ids"][:1] == [0]
    assert pretrained.max_positions(d)[0] == 18  # 20 positions less padding index 1 + 1
    out = str(tmp_path / "converted")
    assert convert([d, out, "--num_classes", "2"]) == 0
    assert {"vocab.json", "merges.txt", "model_state.pdparams"} <= set(os.listdir(out))
    batch = padded_roberta_batch()
    np.testing.assert_array_equal(logits_of(pretrained.load_model(out, 2), batch),
                                  logits_of(pretrained.load_model(d, 2), batch))
    assert pretrained.load_tokenizer(out)("the movie")["input_ids"] == tokenizer("the movie")["input_ids"]


def test_hf_roberta_missing_weights_are_named(tmp_path):
    _, checkpoint = hf_roberta_weights()
    del checkpoint["roberta.encoder.layer.1.output.dense.weight"]
    with pytest.raises(UserError, match="lacks RoBERTa weights: encoder.layer.1.output.dense.weight"):
        pretrained.load_model(write_hf_roberta(tmp_path / "hf", checkpoint), 2)


# --------------------------------------------------------------------------------------------------
# bench: the measured step on each family
# --------------------------------------------------------------------------------------------------


def test_bench_step_runs_on_each_family(family, family_model_dir):
    from dynabert.collectives import SingleProcess
    from dynabert.train import bench_step as B
    from launcher.config import load_config

    cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "tiny.yaml"),
                      [f"model.name_or_path={family_model_dir(family)}", "compress.widths=[1.0,0.5]"])
    comms = SingleProcess()
    w = B.load_workload(cfg, 32, 2 * 32, synthetic=True)
    step = B.CompressStep(B.load_teacher(cfg, w), cfg, comms, regression=w.regression, steps=2)
    records = B.measure(step, B.global_batches(w, cfg, comms), warmup=1, steps=1)
    assert len(records) == 1 and records[0].seconds > 0
