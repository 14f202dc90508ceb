"""Tests for dynabert.model.export: extracted sub-models, their saved form and the Paddle inference model."""
import json
import os

import numpy as np
import paddle
import pytest
from paddlenlp.transformers import BertTokenizer

from dynabert.model import export
from dynabert.model.export import (
    extract_submodel,
    inference_predictor,
    load_exported,
    parameter_count,
    run_predictor,
    save_exported,
)
from dynabert.model.pretrained import tiny_bert
from dynabert.model.reorder import reorder_heads_and_neurons
from dynabert.model.supernet import Supernet
from tests.reference_bert import model_weights, numpy_bert_logits, random_batch

WIDTHS = (1.0, 0.75, 0.5, 0.25)


def make_batch(seed=1, b=3, t=7):
    """No labels; the last row padded over its last two positions and, with more than two rows, row 1
    from position 3 (any b and t, for the dynamic-shape test)."""
    return random_batch(seed, b, t, {-1: -2, 1: 3} if b > 2 else {-1: -2}, labels=False)


def logits_of(model, batch):
    with paddle.no_grad():
        return model(paddle.to_tensor(batch["input_ids"]), token_type_ids=paddle.to_tensor(batch["token_type_ids"]),
                     attention_mask=paddle.to_tensor(batch["attention_mask"])).numpy()


def expected_encoder_parameters(config, width):
    """Transformer blocks by formula: kept heads and kept neurons per block."""
    h, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    inner = round(width * heads) * (h // heads)
    ffn = int(width * config.intermediate_size)
    block = (3 * (h * inner + inner)      # q, k, v
             + inner * h + h              # out_proj
             + h * ffn + ffn              # linear1
             + ffn * h + h                # linear2
             + 4 * h)                     # norm1, norm2
    return layers * block


def expected_parameters(config, width, num_classes=2):
    """BERT parameter count by formula: embeddings, blocks, pooler, classifier."""
    h = config.hidden_size
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
    return embeddings + expected_encoder_parameters(config, width) + (h * h + h) + (h * num_classes + num_classes)


@pytest.fixture(scope="module")
def teacher():
    model = tiny_bert(seed=0)
    # a non-trivial head/neuron order, so "the first heads" are not the original first heads
    rng = np.random.RandomState(11)
    reorder_heads_and_neurons(model, rng.random_sample((2, 4)), rng.random_sample((2, 64)))
    model.eval()
    return model


@pytest.fixture(scope="module")
def supernet(teacher):
    sn = Supernet(teacher, WIDTHS)
    sn.eval()
    return sn


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]
    (d / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return BertTokenizer(vocab_file=str(d / "vocab.txt"), do_lower_case=True)


@pytest.mark.parametrize("width", WIDTHS)
def test_extracted_submodel_matches_supernet_and_reference(supernet, teacher, width):
    batch = make_batch()
    sub = extract_submodel(supernet, width)
    supernet.set_width(width)
    from_supernet = logits_of(supernet, batch)
    got = logits_of(sub, batch)
    np.testing.assert_allclose(got, from_supernet, rtol=0, atol=1e-5)
    ref = numpy_bert_logits(model_weights(teacher), teacher.config, batch["input_ids"], batch["token_type_ids"],
                            batch["attention_mask"], heads_kept=round(width * 4), ffn_kept=int(width * 64))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    # physically smaller: the attention projections and the FFN have the kept sizes
    layer = sub.bert.encoder.layers[0]
    assert tuple(layer.self_attn.q_proj.weight.shape) == (16, round(width * 4) * 4)
    assert tuple(layer.self_attn.out_proj.weight.shape) == (round(width * 4) * 4, 16)
    assert tuple(layer.linear1.weight.shape) == (16, int(width * 64))
    assert layer.self_attn.num_heads == round(width * 4)
    assert not sub.training


def test_parameter_counts_follow_the_formula_and_decrease(supernet, teacher):
    counts = []
    for width in WIDTHS:
        sub = extract_submodel(supernet, width)
        by_arrays = sum(int(np.prod(v.shape)) for v in sub.state_dict().values())
        assert parameter_count(sub) == by_arrays == expected_parameters(teacher.config, width), width
        counts.append(by_arrays)
    assert counts[0] == parameter_count(teacher)
    assert all(a > b for a, b in zip(counts, counts[1:])), counts


@pytest.fixture(scope="module")
def exported(supernet, tokenizer, tmp_path_factory):
    """Width 0.5 exported once with its inference model (paddle.jit.save takes a few seconds)."""
    out = str(tmp_path_factory.mktemp("export") / "w050")
    sub = extract_submodel(supernet, 0.5)
    meta = save_exported(sub, 0.5, tokenizer, out)
    return sub, out, meta


def test_save_and_load_exported_round_trip(exported, teacher):
    sub, out, meta = exported
    assert meta == {"width": 0.5, "num_heads": 2, "parameters": expected_parameters(teacher.config, 0.5),
                    "encoder_parameters": expected_encoder_parameters(teacher.config, 0.5), "family": "bert"}
    with open(os.path.join(out, export.EXPORT_META)) as f:
        assert json.load(f) == meta
    assert {"model_state.pdparams", "vocab.txt", export.EXPORT_META} <= set(os.listdir(out))
    loaded = load_exported(out)
    a, b = sub.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)
    batch = make_batch(seed=4)
    np.testing.assert_array_equal(logits_of(loaded, batch), logits_of(sub, batch))
    assert BertTokenizer.from_pretrained(out)("w1 w7")["input_ids"] == [2, 6, 12, 3]


def test_inference_model_dynamic_shapes(exported):
    sub, out, _ = exported
    predictor = inference_predictor(out)
    assert sorted(predictor.get_input_names()) == ["attention_mask", "input_ids", "token_type_ids"]
    for b, t in ((2, 5), (4, 11), (1, 3)):
        batch = make_batch(seed=b * 100 + t, b=b, t=t)
        got = run_predictor(predictor, batch)
        assert got.shape == (b, 2)
        np.testing.assert_allclose(got, logits_of(sub, batch), rtol=0, atol=1e-5, err_msg=f"{b}x{t}")


def _listing(root):
    return sorted(os.listdir(root))


def _broken_jit_save(*args, **kwargs):
    raise RuntimeError("simulated failure inside paddle.jit.save")


def _save_previous_export(supernet, tokenizer, out):
    """Export width 1.0 to ``out`` (no inference model); returns a batch and its logits, to check later
    that ``out`` still loads as this export."""
    first = extract_submodel(supernet, 1.0)
    save_exported(first, 1.0, tokenizer, out, inference_model=False)
    batch = make_batch(seed=9)
    return batch, logits_of(first, batch)


def test_failed_save_keeps_previous_export(supernet, tokenizer, tmp_path, monkeypatch):
    out = str(tmp_path / "export")
    batch, first_logits = _save_previous_export(supernet, tokenizer, out)
    files_before = _listing(out)

    monkeypatch.setattr(paddle.jit, "save", _broken_jit_save)
    with pytest.raises(RuntimeError, match="simulated"):
        save_exported(extract_submodel(supernet, 0.25), 0.25, tokenizer, out)

    # the previous export is intact and still loads as before
    assert _listing(out) == files_before
    np.testing.assert_array_equal(logits_of(load_exported(out), batch), first_logits)
    with open(os.path.join(out, export.EXPORT_META)) as f:
        assert json.load(f)["width"] == 1.0


@pytest.mark.parametrize("previous", [True, False], ids=["over_previous_export", "first_export"])
def test_failed_save_leaves_no_half_written_directory(supernet, tokenizer, tmp_path, monkeypatch, previous):
    out = str(tmp_path / "export")
    if previous:
        _save_previous_export(supernet, tokenizer, out)
    monkeypatch.setattr(paddle.jit, "save", _broken_jit_save)
    with pytest.raises(RuntimeError, match="simulated"):
        save_exported(extract_submodel(supernet, 0.5), 0.5, tokenizer, out)
    # nothing but the previous export (if any): no partial export directory beside it
    assert _listing(tmp_path) == (["export"] if previous else [])


def test_failure_while_swapping_in_keeps_previous_export(supernet, tokenizer, tmp_path, monkeypatch):
    """The last step (replacing the old export by the new one) must not lose the old one if it fails."""
    out = str(tmp_path / "export")
    batch, first_logits = _save_previous_export(supernet, tokenizer, out)

    real_replace, real_rename = os.replace, os.rename
    swaps = []

    def failing_for_out(real):
        def move(src, dst, *args, **kwargs):
            # Only the first move into out_dir (the swap) fails, once: restoring the old one may use it.
            if os.path.abspath(dst) == os.path.abspath(out) and not swaps:
                swaps.append(src)
                raise OSError("simulated failure while renaming")
            return real(src, dst, *args, **kwargs)
        return move

    monkeypatch.setattr(os, "replace", failing_for_out(real_replace))
    monkeypatch.setattr(os, "rename", failing_for_out(real_rename))
    with pytest.raises(OSError, match="simulated"):
        save_exported(extract_submodel(supernet, 0.5), 0.5, tokenizer, out, inference_model=False)
    monkeypatch.undo()
    assert swaps, "the failure was not injected at the final swap"
    assert os.path.isdir(out), "the previous export was deleted before the new one was in place"
    np.testing.assert_array_equal(logits_of(load_exported(out), batch), first_logits)


def test_paddlenlp_from_pretrained_cannot_load_an_export(exported):
    """What the README says: PaddleNLP's own loader builds every attention layer with the config's head
    count, so the kept heads' weights do not fit: it fails, or gives a model that is not the export. (If
    this starts to fail, the README's list of loaders can grow.)"""
    from paddlenlp.transformers import BertForSequenceClassification

    sub, out, _ = exported
    try:
        model = BertForSequenceClassification.from_pretrained(out)
    except Exception:
        return
    model.eval()
    batch = make_batch(seed=4)
    assert not np.allclose(logits_of(model, batch), logits_of(sub, batch), atol=1e-3)


def test_export_keeps_only_this_runs_sub_models(tmp_path):
    """An earlier run in the same out_dir exported width 0.25 and a depth variant; this run exports
    widths 1 and 0.5: select must not time, score or choose the earlier ones."""
    from dynabert.stages.export import remove_earlier_exports

    root = tmp_path / "export"
    for name in ("width_1", "width_0.5", "width_0.25", "width_0.5_depth_0.5"):
        (root / name).mkdir(parents=True)
        (root / name / "dynabert_export.json").write_text("{}")
    lines = []
    removed = remove_earlier_exports(str(root), ["width_1", "width_0.5"], lines.append)
    assert removed == ["width_0.25", "width_0.5_depth_0.5"]
    assert sorted(os.listdir(root)) == ["width_0.5", "width_1"]
    assert lines == [f"export: removed width_0.25, width_0.5_depth_0.5 from {root}: not this run's sub-models "
                     "(an earlier run's)"]
    assert remove_earlier_exports(str(tmp_path / "none"), ["width_1"], lines.append) == [] and len(lines) == 1
